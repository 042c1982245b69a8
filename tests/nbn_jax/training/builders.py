"""Small runs built the trainer's way: through `nbn_jax.training.plan`."""

import jax
import numpy as np

import input_pipeline as ip
from configs import default, quickstart
from nbn_jax.training import plan

IMAGE_SHAPE = (8, 8, 3)
NUM_CLASSES = 10  # CIFAR-10's spec
DIGITS_TRAIN_SIZE = 503  # the quickstart's long-tailed digits


def tiny_config(**overrides):
  """ResNet-8 on 8x8 CIFAR-style images, batch 16, no warm-up."""
  config = default.get_config()
  config.model = 'ResNet8'
  config.batch_size = config.lr_batch_size = 16
  config.eval_batch_size = 16
  config.warmup_epochs = 0.0
  for field, value in overrides.items():
    config[field] = value
  return config


def quickstart_steps(steps: int, **overrides):
  """The quickstart (digits), `steps` steps of batch 16, no warm-up."""
  config = quickstart.get_config()
  config.update(
      batch_size=16,
      lr_batch_size=16,
      eval_batch_size=32,
      steps_per_dispatch=1,
      warmup_epochs=0.0,
      num_epochs=steps * 16 / DIGITS_TRAIN_SIZE,
      **overrides,
  )
  return config


def tiny_step_plan(
    config=None, devices=None, train_counts=None, image_shape=IMAGE_SHAPE
):
  """The config's StepPlan for CIFAR-10's spec (10 images a class), 8x8."""
  return plan.build_step_plan(
      config if config is not None else tiny_config(),
      ip.DATASETS['cifar10'],
      np.full(NUM_CLASSES, 10) if train_counts is None else train_counts,
      image_shape,
      devices,
  )


def random_batches(count, batch_size=16, seed=0):
  """`count` (uint8 images, int32 labels) batches at IMAGE_SHAPE."""
  rng = np.random.default_rng(seed)
  return [
      (
          rng.integers(0, 256, (batch_size, *IMAGE_SHAPE), dtype=np.uint8),
          rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
      )
      for _ in range(count)
  ]


def first_devices(count):
  return jax.devices()[:count]
