"""From a config to checked settings, a model and data.

Every check raises `ConfigError` with a one-line message that names the
config field and says what it accepts.
"""

import dataclasses

import ml_collections
import numpy as np

import input_pipeline as ip
from input_pipeline.samplers import epoch_size
from nbn_jax import models
from nbn_jax.models.common import NORMS, NBNPlacement
from nbn_jax.training import losses, optim, steps

MODELS = ('ResNet8', 'ResNet14', 'ResNet32', 'ResNet50', 'ResNeXt50')
INPUT_PATHS = ('on_device', 'tf_data')

CHOICES = {
    'dataset': tuple(ip.DATASETS),
    'data_source': ('tfds', 'jpeg', 'lists', 'digits'),
    'input_path': INPUT_PATHS,
    'sampler': ip.SAMPLERS,
    'model': MODELS,
    'norm': NORMS,
    'shortcut': ('A', 'B'),
    'bn_scope': steps.BN_SCOPES,
    'schedule': optim.SCHEDULES,
    'loss': losses.LOSSES,
}
POSITIVE = (
    'batch_size',
    'lr_batch_size',
    'num_epochs',
    'eval_batch_size',
    'log_every_steps',
    'steps_per_dispatch',
    'eval_every_epochs',
    'checkpoint_every_epochs',
    'keep_checkpoints',
    'samples_per_class',
    'bn_group_size',
)


class ConfigError(ValueError):
  """A config field has a value the trainer cannot use."""


def check_config(config: ml_collections.ConfigDict, device_count: int):
  """Raises ConfigError naming the first bad field."""
  for field, allowed in CHOICES.items():
    if config[field] not in allowed:
      raise ConfigError(
          f'config.{field}={config[field]!r} is not one of {allowed}.'
      )
  for field in POSITIVE:
    if not config[field] > 0:
      raise ConfigError(f'config.{field}={config[field]!r} must be > 0.')
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % device_count:
      raise ConfigError(
          f'config.{field}={config[field]} is not divisible by the '
          f'{device_count} devices; use a multiple of {device_count}.'
      )
  if config.bn_scope == 'group' and device_count % config.bn_group_size:
    raise ConfigError(
        f'config.bn_group_size={config.bn_group_size} must divide the '
        f'{device_count} devices (config.bn_scope=group).'
    )
  if config.input_path == 'on_device' and config.data_source == 'lists':
    raise ConfigError(
        'config.input_path=on_device needs data held in memory (CIFAR, '
        "digits); list-file datasets use config.input_path='tf_data'."
    )
  if config.sampler == 'class_aware' and (
      config.batch_size % config.samples_per_class
  ):
    raise ConfigError(
        f'config.batch_size={config.batch_size} must be a multiple of '
        f'config.samples_per_class={config.samples_per_class} for the '
        'class-aware sampler.'
    )
  if not config.few_threshold <= config.many_threshold:
    raise ConfigError(
        'config.few_threshold must not exceed config.many_threshold.'
    )


def nbn_placement(config: ml_collections.ConfigDict) -> NBNPlacement:
  return NBNPlacement(
      stages=tuple(int(s) for s in config.nbn_stages),
      block_norms=tuple(config.nbn_block_norms),
      shortcut=bool(config.nbn_shortcut),
      shared_alpha=bool(config.nbn_shared_alpha),
  )


def build_model(config: ml_collections.ConfigDict, num_classes: int, dtype):
  """The network of `config.model` with the config's norm settings."""
  kwargs = dict(
      num_classes=num_classes,
      norm=config.norm,
      nbn_placement=nbn_placement(config),
      logit_norm=config.logit_norm,
      bn_axis_name=steps.bn_axis_name(config.bn_scope),
      dtype=dtype,
  )
  if config.model in ('ResNet8', 'ResNet32'):
    kwargs['shortcut'] = config.shortcut
  return getattr(models, config.model)(**kwargs)


def load_benchmark(config: ml_collections.ConfigDict) -> ip.Benchmark:
  return ip.load_benchmark(
      config.dataset,
      source=config.data_source,
      data_dir=config.data_dir or None,
      imbalance_factor=config.imbalance_factor,
      image_root=config.image_root,
      train_list=config.train_list,
      val_list=config.val_list,
      test_list=config.test_list,
      cache_dir=config.cache_dir or None,
  )


def preprocessing(
    config: ml_collections.ConfigDict, spec: ip.DatasetSpec
) -> ip.Preprocessing:
  """The dataset's augmentation recipe with the config's size overrides."""
  recipe = dataclasses.replace(spec.preprocessing, antialias=config.antialias)
  if config.image_size:
    recipe = dataclasses.replace(recipe, image_size=config.image_size)
  if config.resize_size:
    recipe = dataclasses.replace(recipe, resize_size=config.resize_size)
  return recipe


def sampler_spec(config: ml_collections.ConfigDict) -> ip.SamplerSpec:
  return ip.SamplerSpec(
      config.sampler,
      num_epochs=config.num_epochs,
      samples_per_class=config.samples_per_class,
  )


def run_length(config, train_counts: np.ndarray) -> tuple[float, int]:
  """(steps per epoch, total steps) of the continuous training stream."""
  epoch = epoch_size(train_counts, sampler_spec(config))
  steps_per_epoch = epoch / config.batch_size
  # Tolerate rounding: 2 epochs of 7.5 steps are 15 steps, not 16.
  total = int(np.ceil(config.num_epochs * steps_per_epoch - 1e-6))
  return steps_per_epoch, total
