"""The run plan: everything a run needs, built once from the config.

This module is the only reader of the `ConfigDict`. `build_plan` checks the
config (every refusal is a `ConfigError` with a one-line message naming the
field), loads the benchmark and builds the topology, the model, the
optimiser and its schedule, the step settings and the run's length; the
trainer, bench scripts and tests take what they need from the `Plan` or
from the builders below, never from the config.
"""

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import input_pipeline as ip
from input_pipeline import on_device
from input_pipeline.samplers import epoch_size
from nbn_jax import models
from nbn_jax.inspection import nbn_layer_paths
from nbn_jax.models.common import NORMS
from nbn_jax.training import inputs, losses, metrics, optim, runs, steps
from nbn_jax.training.topology import BN_SCOPES, Topology, make_topology

MODELS = ('ResNet8', 'ResNet14', 'ResNet32', 'ResNet50', 'ResNeXt50')
CIFAR_MODELS = ('ResNet8', 'ResNet32')  # take the `shortcut` field
INPUT_PATHS = ('on_device', 'tf_data')

CHOICES = {
    'dataset': tuple(ip.DATASETS),
    'data_source': ('tfds', 'jpeg', 'lists', 'digits'),
    'input_path': INPUT_PATHS,
    'sampler': ip.SAMPLERS,
    'model': MODELS,
    'norm': NORMS,
    'shortcut': ('A', 'B'),
    'bn_scope': BN_SCOPES,
    'schedule': optim.SCHEDULES,
    'warmup_granularity': optim.WARMUP_GRANULARITIES,
    'run_axis': ('auto', *runs.RUN_AXIS_MAPS),
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
    'learning_rate',
    'lr_decay_factor',
    'num_runs',
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
)


class ConfigError(ValueError):
  """A config field has a value the trainer cannot use."""


def check_config(config: ml_collections.ConfigDict, device_count: int):
  """Raises ConfigError naming the first bad field.

  Every combination that passes trains: bn_scope x input_path on any
  device count the batch sizes and groups divide.
  """
  for field, allowed in CHOICES.items():
    if config[field] not in allowed:
      raise ConfigError(
          f'config.{field}={config[field]!r} is not one of {allowed}.'
      )
  for field in POSITIVE:
    if not config[field] > 0:
      raise ConfigError(f'config.{field}={config[field]!r} must be > 0.')
  for field in NON_NEGATIVE:
    if not config[field] >= 0:
      raise ConfigError(f'config.{field}={config[field]!r} must be >= 0.')
  if not config.momentum < 1:
    raise ConfigError(f'config.momentum={config.momentum!r} must be < 1.')
  decay_epochs = tuple(config.lr_decay_epochs)
  if not all(isinstance(e, (int, float)) and e >= 0 for e in decay_epochs) or (
      list(decay_epochs) != sorted(decay_epochs)
  ):
    raise ConfigError(
        f'config.lr_decay_epochs={decay_epochs!r} must be epochs >= 0 in '
        'ascending order, e.g. (160.0, 180.0).'
    )
  if not config.imbalance_factor >= 1:
    raise ConfigError(
        f'config.imbalance_factor={config.imbalance_factor!r} must be >= 1 '
        '(n_max / n_min; 1 is balanced).'
    )
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
  if config.num_runs > 1:
    run_layout(config, device_count)
  if config.warmup_granularity == 'epoch' and (
      config.warmup_epochs != int(config.warmup_epochs)
  ):
    raise ConfigError(
        f'config.warmup_epochs={config.warmup_epochs} must be a whole number '
        "with config.warmup_granularity='epoch'."
    )


# --- Builders -----------------------------------------------------------------

DETERMINISTIC_XLA_FLAGS = '--xla_gpu_deterministic_ops=true'


def xla_flags(config: ml_collections.ConfigDict) -> str:
  """XLA_FLAGS the run needs, to be set before JAX starts its backends.

  `deterministic`: GPU reductions and scatters in a fixed order, so a
  repeat of a seed gives the same numbers (no effect on CPU, already so).
  """
  return DETERMINISTIC_XLA_FLAGS if config.deterministic else ''


def run_layout(
    config: ml_collections.ConfigDict, device_count: int
) -> runs.RunLayout:
  """How `config.num_runs` runs sit on the devices (ConfigError if not)."""
  try:
    return runs.run_layout(
        config.num_runs,
        device_count,
        config.batch_size,
        config.eval_batch_size,
        config.bn_scope,
        config.bn_group_size,
        config.run_shards,
        jax.process_count() if config.input_path == 'tf_data' else 1,
    )
  except runs.RunLayoutError as e:
    raise ConfigError(str(e)) from None


def build_topology(
    config: ml_collections.ConfigDict,
    devices: Sequence[jax.Device] | None = None,
) -> Topology:
  """The mesh; with a leading 'runs' axis when config.num_runs > 1."""
  devices = list(jax.devices() if devices is None else devices)
  run_shards = None
  if config.num_runs > 1:
    run_shards = run_layout(config, len(devices)).run_shards
  return make_topology(
      config.bn_scope, config.bn_group_size, devices, run_shards
  )


def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.half_precision else jnp.float32


def build_model(
    config: ml_collections.ConfigDict, num_classes: int, topology: Topology
) -> nn.Module:
  """The network of `config.model` with the config's norm settings.

  NBN goes where the model's own reference placement says (ResNet-50 and
  ResNeXt-50: the four layer4 BNs; CIFAR ResNets: the last stage's bn2),
  unless the config's `nbn_*` fields say otherwise, field by field.
  """
  kwargs = dict(
      norm=config.norm,
      logit_norm=config.logit_norm,
      bn_axis_name=topology.bn_axis_name,
      dtype=compute_dtype(config),
  )
  if config.model in CIFAR_MODELS:
    kwargs['shortcut'] = config.shortcut
  model = getattr(models, config.model)(num_classes=num_classes, **kwargs)
  overrides = {
      field: value
      for field, value in (
          ('stages', config.nbn_stages),
          ('block_norms', config.nbn_block_norms),
          ('shortcut', config.nbn_shortcut),
          ('shared_alpha', config.nbn_shared_alpha),
      )
      if value is not None
  }
  if 'stages' in overrides:
    overrides['stages'] = tuple(int(s) for s in overrides['stages'])
  if 'block_norms' in overrides:
    overrides['block_norms'] = tuple(overrides['block_norms'])
  placement = dataclasses.replace(model.nbn_placement, **overrides)
  return model.clone(nbn_placement=placement)


def nbn_sites(
    model: nn.Module, image_shape: tuple[int, ...]
) -> tuple[str, ...]:
  """The layers NBN occupies in `model` with norm='nbn', whatever its norm.

  For a BN model these are the plain BNs at the same places: comparing the
  two is the paper's motivation.
  """
  try:
    return nbn_layer_paths(model.clone(norm='nbn'), (1, *image_shape))
  except ValueError as e:  # the placement names a stage or BN the net lacks
    raise ConfigError(f'config.nbn_*: {e}') from None


def run_length(
    config: ml_collections.ConfigDict, train_counts: np.ndarray
) -> 'RunLength':
  """The continuous training stream's length and event periods, in steps."""
  epoch = epoch_size(train_counts, sampler_spec(config))
  steps_per_epoch = epoch / config.batch_size
  # Tolerate rounding: 2 epochs of 7.5 steps are 15 steps, not 16.
  total = int(np.ceil(config.num_epochs * steps_per_epoch - 1e-6))

  def every(epochs: float) -> int:
    return max(1, int(round(epochs * steps_per_epoch)))

  return RunLength(
      steps_per_epoch=steps_per_epoch,
      total_steps=total,
      log_every=config.log_every_steps,
      eval_every=every(config.eval_every_epochs),
      checkpoint_every=every(config.checkpoint_every_epochs),
  )


def build_optimizer(
    config: ml_collections.ConfigDict, length: 'RunLength'
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(PyTorch-style SGD, its learning-rate schedule) per the config."""
  schedule = optim.learning_rate_schedule(
      config.schedule,
      optim.base_learning_rate(
          config.learning_rate, config.batch_size, config.lr_batch_size
      ),
      length.steps_per_epoch,
      length.total_steps,
      config.warmup_epochs,
      tuple(config.lr_decay_epochs),
      config.lr_decay_factor,
      config.warmup_granularity,
  )
  tx = optim.sgd(
      schedule,
      config.weight_decay,
      config.momentum,
      config.nesterov,
      config.decay_alpha,
  )
  return tx, schedule


def build_step_config(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    topology: Topology,
    spec: ip.DatasetSpec,
    train_counts: np.ndarray,
) -> steps.StepConfig:
  return steps.StepConfig(
      model=model,
      loss_fn=losses.make_loss(
          config.loss, train_counts, config.logit_adjust_tau
      ),
      topology=topology,
      global_batch_size=config.batch_size,
      prepare=functools.partial(
          on_device.normalize_images,
          mean=spec.mean,
          std=spec.std,
          dtype=compute_dtype(config),
      ),
      num_classes=spec.num_classes,
  )


def sampler_spec(config: ml_collections.ConfigDict) -> ip.SamplerSpec:
  return ip.SamplerSpec(
      config.sampler,
      num_epochs=config.num_epochs,
      samples_per_class=config.samples_per_class,
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


# --- The plan -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunLength:
  """The run's length and event periods, in steps.

  Attributes:
    steps_per_epoch: fractional: epochs do not end on batch boundaries in a
      continuous stream.
    total_steps: steps of the whole run.
    log_every, eval_every, checkpoint_every: event periods.
  """

  steps_per_epoch: float
  total_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  def next_event(self, step: int) -> int:
    """The first step after `step` that logs, evaluates or checkpoints."""
    periods = (self.log_every, self.eval_every, self.checkpoint_every)
    return min([self.total_steps] + [(step // p + 1) * p for p in periods])


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """The model, optimiser and steps of a run (or of K runs), without data.

  What bench scripts and step-level tests need; `Plan.core` of a full run.
  With `num_runs` K > 1 every state leaf has a leading run axis of size K
  and the steps are `nbn_jax.training.runs`' (the single-run step mapped
  over runs).

  Attributes:
    topology: the mesh and the BN statistics scope.
    model: the network.
    nbn_sites: the layers NBN occupies (plain BNs in a norm='bn' model).
    image_shape: (H, W, C) of one model input.
    tx, learning_rate: the optimiser and its schedule.
    step_config: what the train and eval steps need.
    length: the run's length and event periods.
    num_runs: K runs trained side by side.
    run_axis: how the steps map over runs ('vmap' or 'unroll').
  """

  topology: Topology
  model: nn.Module
  nbn_sites: tuple[str, ...]
  image_shape: tuple[int, ...]
  tx: optax.GradientTransformation
  learning_rate: optax.Schedule
  step_config: steps.StepConfig
  length: RunLength
  num_runs: int = 1
  run_axis: str = 'vmap'

  def init_state(self, key: jax.Array) -> steps.TrainState:
    """The initial train state(s) from parameter key(s) `key`, on the mesh.

    `key`: one key, or (K,) keys for K runs (`runs.run_keys`).
    """
    if self.num_runs == 1:
      return steps.create_train_state(
          self.model, self.tx, key, self.image_shape, self.topology
      )
    return runs.create_train_states(
        self.model, self.tx, key, self.image_shape, self.topology
    )

  @property
  def train_batch_sharding(self):
    """The layout of a training batch: (B, ...) or (K, B, ...)."""
    if self.num_runs == 1:
      return self.topology.batch_sharding
    return self.topology.run_batch_sharding

  def train_step(self):
    """jit (state, images, labels) -> (state, metrics)."""
    if self.num_runs == 1:
      return steps.make_train_step(self.step_config)
    return runs.make_train_step(self.step_config, self.run_axis)

  def device_steps(
      self, data_key: jax.Array, preprocessing: ip.Preprocessing
  ) -> Callable[[int], Callable]:
    """n -> jit (state, DeviceData) -> (state, metrics of n steps)."""
    if self.num_runs == 1:
      return functools.partial(
          inputs.device_steps, self.step_config, data_key, preprocessing
      )
    return functools.partial(
        runs.make_device_train_steps,
        self.step_config,
        data_key,
        preprocessing,
        run_axis=self.run_axis,
    )

  def eval_step(self):
    """jit (state, images, labels, mask) -> per-class (correct, total)."""
    if self.num_runs == 1:
      return steps.make_eval_step(self.step_config)
    return runs.make_eval_step(self.step_config, self.run_axis)


def build_step_plan(
    config: ml_collections.ConfigDict,
    spec: ip.DatasetSpec,
    train_counts: np.ndarray,
    image_shape: tuple[int, ...],
    devices: Sequence[jax.Device] | None = None,
) -> StepPlan:
  """Checks `config` and builds its model, optimiser and steps on `devices`.

  Args:
    config: the run's config.
    spec: the dataset's facts (classes, normalisation).
    train_counts: (C,) training examples per class (the run's length, the
      loss's class prior).
    image_shape: (H, W, C) of one model input.
    devices: default: every device.
  """
  devices = list(jax.devices() if devices is None else devices)
  check_config(config, len(devices))
  topology = build_topology(config, devices)
  model = build_model(config, spec.num_classes, topology)
  length = run_length(config, train_counts)
  tx, schedule = build_optimizer(config, length)
  return StepPlan(
      topology=topology,
      model=model,
      nbn_sites=nbn_sites(model, image_shape),
      image_shape=tuple(image_shape),
      tx=tx,
      learning_rate=schedule,
      step_config=build_step_config(
          config, model, topology, spec, train_counts
      ),
      length=length,
      num_runs=config.num_runs,
      run_axis=(
          runs.default_run_axis()
          if config.run_axis == 'auto'
          else config.run_axis
      ),
  )


@dataclasses.dataclass(frozen=True)
class Plan:
  """A run, fully decided. Built by `build_plan`; read, never changed.

  Attributes:
    config: the config as plain data (recorded with the results).
    label: 'ResNet32 NBN on cifar10-lt-if100', for tables and plots.
    seed: the run's seed (initialisation and data order); run k of
      `num_runs` uses `seed + k`.
    eval_only: evaluate the workdir's latest checkpoint, do not train.
    keep_checkpoints: periodic checkpoints kept.
    benchmark: the splits; `val` None where the benchmark has none.
    shot_thresholds: (many, few) training counts of the shot groups.
    groups: Many/Medium/Few class ids.
    core: the topology, model, optimiser, steps and run length.
    input_path: 'on_device' or 'tf_data'.
    sampler, preprocessing: the training stream.
    steps_per_dispatch: on-device steps per jitted call on accelerators.
    eval_batch_size: global eval batch.
  """

  config: dict[str, Any]
  label: str
  seed: int
  eval_only: bool
  keep_checkpoints: int
  benchmark: ip.Benchmark
  shot_thresholds: tuple[int, int]
  groups: dict[str, np.ndarray]
  core: StepPlan
  input_path: str
  sampler: ip.SamplerSpec
  preprocessing: ip.Preprocessing
  steps_per_dispatch: int
  eval_batch_size: int

  @property
  def selection_split(self) -> str:
    """The split evaluated during training: val, or test where there is none."""
    return 'val' if self.benchmark.val is not None else 'test'

  @property
  def num_runs(self) -> int:
    return self.core.num_runs

  @property
  def seeds(self) -> list[int]:
    """Run k's seed: `seed + k`."""
    return runs.run_seeds(self.seed, self.num_runs)

  def keys(self) -> tuple[jax.Array, jax.Array]:
    """(parameter initialisation key, data key), (K,) each for K runs."""
    return runs.run_keys(self.seed, self.num_runs)

  def init_state(self) -> steps.TrainState:
    return self.core.init_state(self.keys()[0])

  def training_input(self) -> inputs.TrainingInput:
    core, train = self.core, self.benchmark.train
    if self.input_path == 'on_device':
      return inputs.OnDeviceInput(
          on_device.put_on_devices(
              train, self.sampler, core.topology.batch_sharding
          ),
          core.device_steps(self.keys()[1], self.preprocessing),
          self.steps_per_dispatch,
      )
    stream_args = (
        train,
        self.preprocessing,
        self.sampler,
        core.step_config.global_batch_size,
        self.seed,
    )
    if self.num_runs == 1:
      stream = functools.partial(inputs.tf_data_stream, *stream_args)
    else:
      stream = functools.partial(
          runs.train_batches, *stream_args, self.num_runs
      )
    return inputs.TfDataInput(
        stream, core.train_step(), core.train_batch_sharding
    )

  def evaluator(self) -> inputs.Evaluator:
    return inputs.Evaluator(
        self.core.eval_step(),
        self.core.topology.batch_sharding,
        self.preprocessing,
        self.eval_batch_size,
        self.groups,
    )


def build_plan(
    config: ml_collections.ConfigDict,
    devices: Sequence[jax.Device] | None = None,
) -> Plan:
  """Checks `config` and decides the whole run on `devices` (default: all).

  Raises:
    ConfigError: a bad field (one line naming it).
    input_pipeline.DataError: missing or malformed data (one line).
  """
  check_config(config, len(jax.devices() if devices is None else devices))
  benchmark = load_benchmark(config)
  spec = benchmark.spec
  train_counts = benchmark.train_counts()
  recipe = preprocessing(config, spec)
  if benchmark.train.in_memory:
    image_shape = tuple(benchmark.train.images.shape[1:])
  else:
    image_shape = (recipe.image_size, recipe.image_size, 3)
  return Plan(
      config=config.to_dict(),
      label=f'{config.model} {config.norm.upper()} on {benchmark.train.name}',
      seed=config.seed,
      eval_only=config.eval_only,
      keep_checkpoints=config.keep_checkpoints,
      benchmark=benchmark,
      shot_thresholds=(config.many_threshold, config.few_threshold),
      groups=metrics.shot_groups(
          train_counts, config.many_threshold, config.few_threshold
      ),
      core=build_step_plan(config, spec, train_counts, image_shape, devices),
      input_path=config.input_path,
      sampler=sampler_spec(config),
      preprocessing=recipe,
      steps_per_dispatch=config.steps_per_dispatch,
      eval_batch_size=config.eval_batch_size,
  )
