"""What the CIFAR timing benchmarks share: the recipe, its step plan and a
line naming the machine."""

import jax
import numpy as np

import input_pipeline as ip
from configs import cifar10_lt
from nbn_jax.training import plan

NUM_CLASSES = 10
COUNTS = (5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50)  # IF 100
IMAGE_SHAPE = (32, 32, 3)


def config_for(
    num_runs: int = 1,
    run_axis: str = 'auto',
    batch: int = 128,
    bf16: bool = False,
):
  """The CIFAR-10-LT recipe (configs/cifar10_lt.py) with K runs at `batch`."""
  config = cifar10_lt.get_config()
  config.update(
      batch_size=batch,
      num_runs=num_runs,
      run_axis=run_axis,
      half_precision=bf16,
  )
  return config


def step_plan(config) -> plan.StepPlan:
  """ResNet-32 (the config's model) built by the run plan as the trainer
  builds it, for CIFAR-10-LT's class counts."""
  return plan.build_step_plan(
      config, ip.DATASETS['cifar10'], np.array(COUNTS), IMAGE_SHAPE
  )


def machine() -> str:
  """'jax 0.x on <device kind> (<backend>), N device(s)'."""
  return (
      f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
      f'({jax.default_backend()}), {jax.device_count()} device(s)'
  )
