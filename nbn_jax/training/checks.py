"""The config checks: every refusal a `ConfigError` naming the field.

`check_config` runs once per start, before anything is loaded or built,
and returns the run layout it checked (how the runs sit on the devices), so
nothing downstream checks or lays out again. Each rule is written once: the
choices come from the registries of the parts that implement them (models,
datasets and their sources, losses, schedules, BN scopes), and the rules
about devices and batch sizes are `topology.run_layout`'s.

Like the plan, this module reads the `ConfigDict`; nothing else does.
"""

import ml_collections

import input_pipeline as ip
from nbn_jax import models
from nbn_jax.training import inputs, losses, optim, run_axis, topology
from nbn_jax.training.errors import ConfigError

# The registries are read as they are at the check (a network or loss
# registered later, by a test say, is a choice too).
CHOICES = {
    'dataset': ip.DATASETS,
    'data_source': ip.SOURCES,
    'input_path': inputs.INPUT_PATHS,
    'sampler': ip.SAMPLERS,
    'model': models.MODELS,
    'norm': models.NORMS,
    'shortcut': ('A', 'B'),
    'bn_scope': topology.BN_SCOPES,
    'schedule': optim.SCHEDULES,
    'warmup_granularity': optim.WARMUP_GRANULARITIES,
    'run_axis': ('auto', *run_axis.RUN_AXIS_MAPS),
    'loss': losses.LOSSES,
    'trainable': ('all', 'classifier'),
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
    'learning_rate',
    'backbone_lr_factor',
    'lr_decay_factor',
    'num_runs',
    'ldam_scale',
    'ride_diversity_temperature',
)
# Model fields that are None (the network's own value) unless set; a field
# set must be one of the chosen network's.
MODEL_OPTIONS = (
    'num_experts',
    'reduce_dimension',
    'classifier',
    'cosine_scale',
)
# The `NBNPlacement` fields as config fields, None unless set; a network
# without an `nbn_placement` places NBN itself and takes none of them.
NBN_PLACEMENT_FIELDS = (
    'nbn_stages',
    'nbn_block_norms',
    'nbn_shortcut',
    'nbn_shared_alpha',
)
NON_NEGATIVE = (
    'weight_decay',
    'momentum',
    'warmup_epochs',
    'image_size',
    'resize_size',
    'logit_adjust_tau',
    'few_threshold',
    'run_shards',
    'ldam_max_m',
    'drw_epoch',
    'ride_reweight_factor',
    'cosine_period_epochs',
)


def check_config(
    config: ml_collections.ConfigDict, device_count: int, process_count: int
) -> topology.RunLayout:
  """Raises ConfigError naming the first bad field; returns the run layout.

  Every combination that passes trains: bn_scope x input_path x num_runs on
  any device count the batch sizes and groups divide.

  Args:
    config: the run's config.
    device_count: all devices of all hosts.
    process_count: the hosts (JAX processes).
  """
  for field, allowed in CHOICES.items():
    if config[field] not in allowed:
      raise ConfigError(
          f'config.{field}={config[field]!r} is not one of {tuple(allowed)}.'
      )
  _check_model_fields(config)
  for field in POSITIVE:
    if not config[field] > 0:
      raise ConfigError(f'config.{field}={config[field]!r} must be > 0.')
  for field in NON_NEGATIVE:
    if not config[field] >= 0:
      raise ConfigError(f'config.{field}={config[field]!r} must be >= 0.')
  if not config.momentum < 1:
    raise ConfigError(f'config.momentum={config.momentum!r} must be < 1.')
  if config.num_train_steps != -1 and not config.num_train_steps > 0:
    raise ConfigError(
        f'config.num_train_steps={config.num_train_steps!r} must be > 0, or '
        '-1 for the whole run (config.num_epochs).'
    )
  decay_epochs = tuple(config.lr_decay_epochs)
  if not all(isinstance(e, (int, float)) and e >= 0 for e in decay_epochs) or (
      list(decay_epochs) != sorted(decay_epochs)
  ):
    raise ConfigError(
        f'config.lr_decay_epochs={decay_epochs!r} must be epochs >= 0 in '
        'ascending order, e.g. (160.0, 180.0).'
    )
  if config.warmup_granularity == 'epoch' and (
      config.warmup_epochs != int(config.warmup_epochs)
  ):
    raise ConfigError(
        f'config.warmup_epochs={config.warmup_epochs} must be a whole number '
        "with config.warmup_granularity='epoch'."
    )
  if not config.imbalance_factor >= 1:
    raise ConfigError(
        f'config.imbalance_factor={config.imbalance_factor!r} must be >= 1 '
        '(n_max / n_min; 1 is balanced).'
    )
  if (
      config.input_path == 'on_device'
      and not ip.SOURCES[config.data_source].in_memory
  ):
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
  if config.trainable == 'classifier' and not config.finetune_from:
    raise ConfigError(
        "config.trainable='classifier' trains a first stage's classifier: "
        "set config.finetune_from to that run's workdir."
    )
  _check_loss(config)
  if not config.few_threshold <= config.many_threshold:
    raise ConfigError(
        'config.few_threshold must not exceed config.many_threshold.'
    )
  try:
    return topology.run_layout(
        config.num_runs,
        device_count,
        config.batch_size,
        config.eval_batch_size,
        config.bn_scope,
        config.bn_group_size,
        config.run_shards,
        process_count if config.input_path == 'tf_data' else 1,
    )
  except topology.RunLayoutError as e:
    raise ConfigError(str(e)) from None


def _check_loss(config: ml_collections.ConfigDict):
  """The loss's registry entry, the settings it names, the outputs it reads
  (the model must produce them) and the epoch it switches at."""
  if not 0 <= config.drw_beta < 1:
    raise ConfigError(
        f'config.drw_beta={config.drw_beta!r} must be in [0, 1) (0: no '
        're-weighting; DRW uses 0.9999).'
    )
  spec = losses.LOSSES[config.loss]
  if not isinstance(spec, losses.LossSpec):
    raise ConfigError(
        f'config.loss={config.loss!r} is registered as a '
        f'{type(spec).__name__}, not a losses.LossSpec; register '
        'LossSpec(its function, reads=..., settings=...).'
    )
  for field in spec.setting_names:
    if field not in config:
      raise ConfigError(
          f'config.loss={config.loss!r} takes the setting {field!r}, which '
          f'the config lacks; add config.{field} to configs/default.py.'
      )
  produced = models.outputs_of(models.MODELS[config.model])
  for output in spec.reads:
    if output not in produced:
      producers = [
          name
          for name, network in models.MODELS.items()
          if set(spec.reads) <= set(models.outputs_of(network))
      ]
      what = models.describe_output(output)
      choose = (
          f'Choose one of {producers}, or a loss for one network (e.g. '
          'ldam_drw).'
          if producers
          else 'No network registered returns it; choose another loss.'
      )
      raise ConfigError(
          f'config.loss={config.loss!r} needs {what.producer} (it reads its '
          f'{what.what}); config.model={config.model!r} is not one. {choose}'
      )
  field = spec.switch_epoch
  if field is not None and config[field] >= config.num_epochs:
    raise ConfigError(
        f'config.{field}={config[field]!r} is not before the end of the '
        f'run (config.num_epochs={config.num_epochs!r}): loss '
        f'{config.loss!r} would never switch. Set an earlier {field}.'
    )


def _check_model_fields(config: ml_collections.ConfigDict):
  """The network has a field for every setting that asks for one; the
  `MODEL_OPTIONS` set have sensible values."""
  network = models.MODELS[config.model]
  unset = 'leave it unset'
  demands = (  # (config field, model field, whether asked, how not to ask)
      ('logit_norm', 'logit_norm', config.logit_norm, 'set it to False'),
      ('half_precision', 'dtype', config.half_precision, 'set it to False'),
      (
          'bn_scope',
          'bn_axis_name',
          config.bn_scope == 'group',
          "use 'global' or 'device'",
      ),
      *(
          (field, 'nbn_placement', config[field] is not None, unset)
          for field in NBN_PLACEMENT_FIELDS
      ),
      *((f, f, config[f] is not None, unset) for f in MODEL_OPTIONS),
  )
  for field, model_field, asked, fix in demands:
    if asked and not models.takes_field(network, model_field):
      having = [
          n
          for n, m in models.MODELS.items()
          if models.takes_field(m, model_field)
      ]
      raise ConfigError(
          f'config.{field}={config[field]!r}: {config.model} has no '
          f'{model_field}; {fix}, or choose one of {having}.'
      )
  if config.classifier is not None and (
      config.classifier not in models.CLASSIFIERS
  ):
    raise ConfigError(
        f'config.classifier={config.classifier!r} is not one of '
        f'{models.CLASSIFIERS}.'
    )
  for field in ('num_experts', 'cosine_scale'):
    if config[field] is not None and not config[field] > 0:
      raise ConfigError(f'config.{field}={config[field]!r} must be > 0.')
