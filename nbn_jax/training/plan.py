"""The run plan: everything a run needs, built once from the config.

This module (with its checks, `nbn_jax.training.checks`) is the only reader
of the `ConfigDict`. `build_plan` checks the config once, loads the
benchmark and builds the topology, the model, the optimiser and its
schedule, the step settings, the run's length and the run strategy (one run
or K, `nbn_jax.training.runs`); the trainer, bench scripts and tests take
what they need from the `Plan` or from the builders below, never from the
config.
"""

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import input_pipeline as ip
from input_pipeline import on_device
from input_pipeline.samplers import epoch_size
from nbn_jax import inspection, models
from nbn_jax.training import checks, finetune, inputs, losses, metrics, optim
from nbn_jax.training import runs, steps
from nbn_jax.training.errors import ConfigError
from nbn_jax.training.evaluation import Evaluator
from nbn_jax.training.topology import RunLayout, Topology, make_topology

# Config fields handed, unless None, to the networks that have a field of
# that name (the others are `checks.MODEL_OPTIONS`, refused there when set).
MODEL_FIELDS = ('shortcut', *checks.MODEL_OPTIONS)
DETERMINISTIC_XLA_FLAGS = '--xla_gpu_deterministic_ops=true'


def xla_flags(config: ml_collections.ConfigDict) -> str:
  """XLA_FLAGS the run needs, to be set before JAX starts its backends.

  `deterministic`: GPU reductions and scatters in a fixed order, so a
  repeat of a seed gives the same numbers (no effect on CPU, already so).
  """
  return DETERMINISTIC_XLA_FLAGS if config.deterministic else ''


def check_workdir(config: ml_collections.ConfigDict, workdir: str):
  """ConfigError if `workdir` cannot hold this config's run, before it is
  claimed: a second stage in its first stage's workdir."""
  finetune.check_own_workdir(config.finetune_from, workdir)


# --- Builders -----------------------------------------------------------------


def build_topology(
    config: ml_collections.ConfigDict,
    layout: RunLayout,
    devices: Sequence[jax.Device],
) -> Topology:
  """The mesh; with a leading 'runs' axis when config.num_runs > 1."""
  return make_topology(
      config.bn_scope, config.bn_group_size, devices, layout.mesh_run_shards
  )


def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.half_precision else jnp.float32


def build_model(
    config: ml_collections.ConfigDict,
    num_classes: int,
    bn_axis_name: str | None = None,
) -> models.Network:
  """The network of `config.model`, given the config's settings it takes.

  Every network gets `config.norm`; of `models.OPTIONAL_FIELDS`, only those
  it has a field for (the config check refuses a setting asking for one it
  lacks). NBN goes where the network's own reference placement says
  (ResNet-50 and ResNeXt-50: the four layer4 BNs; CIFAR ResNets: the last
  stage's bn2; RIDE ensembles: every BN of each expert's last stage),
  unless the config's `nbn_*` fields say otherwise, field by field.

  Args:
    config: the run's config.
    num_classes: the dataset's classes.
    bn_axis_name: the topology's BN axis (`Topology.bn_axis_name`).
  """
  network = models.MODELS[config.model]
  settings = {
      'logit_norm': config.logit_norm,
      'bn_axis_name': bn_axis_name,
      'dtype': compute_dtype(config),
      # None also in configs recorded before the field existed.
      **{field: config.get(field) for field in MODEL_FIELDS},
  }
  model = network(
      num_classes,
      norm=config.norm,
      **{
          field: value
          for field, value in settings.items()
          if value is not None and models.takes_field(network, field)
      },
  )
  overrides = _nbn_placement_overrides(config)
  if not overrides:
    return model
  placement = dataclasses.replace(model.nbn_placement, **overrides)
  return model.clone(nbn_placement=placement)


def _nbn_placement_overrides(config: ml_collections.ConfigDict) -> dict:
  """The `NBNPlacement` fields the config's `nbn_*` fields set."""
  overrides = {
      field.removeprefix('nbn_'): config[field]
      for field in checks.NBN_PLACEMENT_FIELDS
      if config[field] is not None
  }
  if 'stages' in overrides:
    overrides['stages'] = tuple(int(s) for s in overrides['stages'])
  if 'block_norms' in overrides:
    overrides['block_norms'] = tuple(overrides['block_norms'])
  return overrides


@dataclasses.dataclass(frozen=True)
class NBNSites:
  """Where NBN sits in a model, and which alpha each NBN layer reads.

  Found by tracing the model (`nbn_jax.inspection`), so any placement, and
  any number of alphas, is described the same way.

  Attributes:
    alphas: {'/'-joined path of each site: the '/'-joined path in
      ``params`` of the alpha it reads, or None for a plain BN}. The sites
      are the layers NBN occupies in the model with norm='nbn'; in a BN
      model they are the plain BNs at the same places (comparing the two is
      the paper's motivation).
  """

  alphas: dict[str, str | None]

  @property
  def paths(self) -> tuple[str, ...]:
    return tuple(self.alphas)

  @property
  def alpha_paths(self) -> tuple[str, ...]:
    """'/'-joined paths of the alphas read, once each, in call order."""
    return tuple(dict.fromkeys(a for a in self.alphas.values() if a))


def nbn_sites(model: nn.Module, image_shape: tuple[int, ...]) -> NBNSites:
  """The NBN sites of `model` (whatever its norm) and the alphas read there.

  Raises:
    ConfigError: the placement names a stage or BN the network lacks.
  """
  input_shape = (1, *image_shape)
  try:
    sites = inspection.nbn_layer_paths(model.clone(norm='nbn'), input_shape)
    layers = inspection.layer_alphas(model, input_shape)
  except ValueError as e:
    raise ConfigError(f'config.nbn_*: {e}') from None
  return NBNSites({site: layers.get(site) for site in sites})


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
      stop_step=(
          total
          if config.num_train_steps == -1
          else min(total, config.num_train_steps)
      ),
      log_every=config.log_every_steps,
      eval_every=every(config.eval_every_epochs),
      checkpoint_every=every(config.checkpoint_every_epochs),
  )


def build_optimizer(
    config: ml_collections.ConfigDict,
    length: 'RunLength',
    alpha_paths: Sequence[str] = (),
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(PyTorch-style SGD, its learning-rate schedule) per the config.

  `alpha_paths`: '/'-joined paths of the model's NBN alphas
  (`NBNSites.alpha_paths`), exempt from weight decay when
  `config.decay_alpha` is False, and trained with the classifier when
  `config.trainable` is 'classifier' (the rest frozen, `finetune`).
  Everything outside the classifier steps at `config.backbone_lr_factor`
  times the schedule's rate.
  """
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
      config.cosine_period_epochs,
  )
  tx = optim.sgd(
      schedule,
      config.weight_decay,
      config.momentum,
      config.nesterov,
      exempt=(
          () if config.decay_alpha else [p.split('/') for p in alpha_paths]
      ),
  )
  if config.backbone_lr_factor != 1:
    tx = finetune.scale_backbone(tx, config.backbone_lr_factor)
  if config.trainable == 'classifier':
    tx = finetune.train_only(tx, finetune.classifier_and_alphas(alpha_paths))
  return tx, schedule


def loss_settings(config: ml_collections.ConfigDict) -> losses.Settings:
  """The constants of `config.loss`: the config fields its spec names."""
  spec = losses.LOSSES[config.loss]
  return {field: config[field] for field in spec.setting_names}


def build_step_config(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    topology: Topology,
    spec: ip.DatasetSpec,
    train_counts: np.ndarray,
    length: 'RunLength',
) -> steps.StepConfig:
  try:
    loss_fn = losses.make_loss(
        config.loss,
        train_counts,
        loss_settings(config),
        length.steps_per_epoch,
    )
  except ValueError as e:  # a setting these class counts make invalid
    raise ConfigError(f'config.{e}') from None
  return steps.StepConfig(
      model=model,
      loss_fn=loss_fn,
      topology=topology,
      global_batch_size=config.batch_size,
      prepare=functools.partial(
          on_device.normalize_images,
          mean=spec.mean,
          std=spec.std,
          dtype=compute_dtype(config),
      ),
      num_classes=spec.num_classes,
      steps_per_epoch=length.steps_per_epoch,
  )


@dataclasses.dataclass(frozen=True)
class LossSwitch:
  """Where the training loss switches (`losses.EpochSwitch`: DRW's
  deferred re-weighting), for the run's log.

  Attributes:
    first_step: the first training step of the switched loss, counted as
      the progress lines count steps (from 1): the update from the state
      at `EpochSwitch.step`.
    description: what switches, e.g. 'loss ldam_drw switches to its
      re-weighting from this step on (config.drw_epoch=160.0)'.
  """

  first_step: int
  description: str


def loss_switch(
    config: ml_collections.ConfigDict, length: 'RunLength'
) -> LossSwitch | None:
  """Where `config.loss` switches, or None for a loss without a switch."""
  switch = losses.epoch_switch(
      config.loss, loss_settings(config), length.steps_per_epoch
  )
  if switch is None:
    return None
  setting = losses.LOSSES[config.loss].switch_epoch
  return LossSwitch(
      switch.step + 1,
      f'loss {config.loss} switches to its re-weighting from this step on '
      f'(config.{setting}={config[setting]})',
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
      train_counts_only=config.eval_only,
  )


# --- The plan -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunLength:
  """The run's length and event periods, in steps.

  Attributes:
    steps_per_epoch: fractional: epochs do not end on batch boundaries in a
      continuous stream.
    total_steps: steps of the whole run (what the schedule spans).
    stop_step: where this invocation stops training: `total_steps`, or
      earlier with `config.num_train_steps` (a later run with a larger one
      continues the same run).
    log_every, eval_every, checkpoint_every: event periods.
  """

  steps_per_epoch: float
  total_steps: int
  stop_step: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  def next_event(self, step: int) -> int:
    """The first step after `step` that logs, evaluates or checkpoints."""
    periods = (self.log_every, self.eval_every, self.checkpoint_every)
    return min([self.stop_step] + [(step // p + 1) * p for p in periods])


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """The model, optimiser, steps and runs of a config, without data.

  What bench scripts and step-level tests need; `Plan.core` of a full run.

  Attributes:
    topology: the mesh and the BN statistics scope.
    model: the network.
    nbn: where NBN sits and which alphas it reads.
    image_shape: (H, W, C) of one model input.
    tx, learning_rate: the optimiser and its schedule.
    step_config: what the train and eval steps need.
    length: the run's length and event periods.
    runs: the run strategy (one run or K): state, programs and streams.
  """

  topology: Topology
  model: nn.Module
  nbn: NBNSites
  image_shape: tuple[int, ...]
  tx: optax.GradientTransformation
  learning_rate: optax.Schedule
  step_config: steps.StepConfig
  length: RunLength
  runs: runs.Runs


def _build_step_plan(
    config: ml_collections.ConfigDict,
    layout: RunLayout,
    spec: ip.DatasetSpec,
    train_counts: np.ndarray,
    image_shape: tuple[int, ...],
    devices: Sequence[jax.Device],
) -> StepPlan:
  """`build_step_plan` for a config already checked (giving `layout`)."""
  topology = build_topology(config, layout, devices)
  model = build_model(config, spec.num_classes, topology.bn_axis_name)
  nbn = nbn_sites(model, image_shape)
  length = run_length(config, train_counts)
  tx, schedule = build_optimizer(config, length, nbn.alpha_paths)
  step_config = build_step_config(
      config, model, topology, spec, train_counts, length
  )
  return StepPlan(
      topology=topology,
      model=model,
      nbn=nbn,
      image_shape=tuple(image_shape),
      tx=tx,
      learning_rate=schedule,
      step_config=step_config,
      length=length,
      runs=runs.make_runs(
          step_config,
          tx,
          image_shape,
          config.seed,
          config.num_runs,
          config.run_axis,
      ),
  )


def _check(
    config: ml_collections.ConfigDict,
    devices: Sequence[jax.Device] | None,
) -> tuple[RunLayout, list[jax.Device]]:
  devices = list(jax.devices() if devices is None else devices)
  return (
      checks.check_config(config, len(devices), jax.process_count()),
      devices,
  )


def build_step_plan(
    config: ml_collections.ConfigDict,
    spec: ip.DatasetSpec,
    train_counts: np.ndarray,
    image_shape: tuple[int, ...],
    devices: Sequence[jax.Device] | None = None,
) -> StepPlan:
  """Checks `config` and builds its model, optimiser, steps and runs.

  Args:
    config: the run's config.
    spec: the dataset's facts (classes, normalisation).
    train_counts: (C,) training examples per class (the run's length, the
      loss's class prior).
    image_shape: (H, W, C) of one model input.
    devices: default: every device.
  """
  layout, devices = _check(config, devices)
  return _build_step_plan(
      config, layout, spec, train_counts, image_shape, devices
  )


@dataclasses.dataclass(frozen=True)
class Plan:
  """A run, fully decided. Built by `build_plan`; read, never changed.

  Attributes:
    config: the config as plain data (recorded with the results).
    label: 'ResNet32 NBN, loss ldam_drw, on cifar10-lt-if100:train', for
      tables and plots.
    eval_only: evaluate the workdir's latest checkpoint, do not train.
    keep_checkpoints: periodic checkpoints kept.
    benchmark: the splits; `val` None where the benchmark has none.
    shot_thresholds: (many, few) training counts of the shot groups.
    groups: Many/Medium/Few class ids (for eval_only, of the classes the
      train list has; the others are in none).
    core: the topology, model, optimiser, steps, run length and runs.
    input_path: 'on_device' or 'tf_data'.
    sampler, preprocessing: the training stream.
    steps_per_dispatch: on-device steps per jitted call on accelerators.
    eval_batch_size: global eval batch.
    finetune_from: a first stage's workdir to start from, or ''.
    reinit_classifier: with `finetune_from`: a fresh classifier.
    loss_switch: where the loss switches (DRW), or None.
  """

  config: dict[str, Any]
  label: str
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
  finetune_from: str = ''
  reinit_classifier: bool = True
  loss_switch: LossSwitch | None = None

  @property
  def runs(self) -> runs.Runs:
    return self.core.runs

  def start(self, fresh: steps.TrainState) -> steps.TrainState:
    """The state a new run starts from: `fresh` (`runs.init_state()`), or
    the first stage's variables in it (`finetune.start_from`)."""
    if not self.finetune_from:
      return fresh
    return finetune.start_from(
        fresh, self.finetune_from, self.reinit_classifier
    )

  @property
  def selection_split(self) -> str:
    """The split evaluated during training: val, or test where there is none."""
    return 'val' if self.benchmark.val is not None else 'test'

  def training_input(self) -> inputs.TrainingInput:
    train = self.benchmark.train
    if self.input_path == 'on_device':
      return inputs.OnDeviceInput(
          on_device.put_on_devices(
              train, self.sampler, self.core.topology.batch_sharding
          ),
          functools.partial(self.runs.device_steps, self.preprocessing),
          self.steps_per_dispatch,
      )
    return inputs.TfDataInput(
        functools.partial(
            self.runs.train_stream, train, self.preprocessing, self.sampler
        ),
        self.runs.train_step(),
        self.runs.batch_sharding,
    )

  def evaluator(self) -> Evaluator:
    return Evaluator(
        self.runs.eval_step(),
        self.core.topology.batch_sharding,
        self.preprocessing,
        self.eval_batch_size,
        self.groups,
        self.benchmark.spec.reports_top5,
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
  layout, devices = _check(config, devices)
  benchmark = load_benchmark(config)
  spec = benchmark.spec
  train_counts = benchmark.train_counts()
  # An evaluation reads the training counts for the shot groups alone, and
  # its train list may be partial or absent: a class without a count is in
  # no group. The step plan's uses of the counts (the run's length, a
  # loss's class prior) are training's; it gets one image where none is
  # listed, as the converter gives it one for every class.
  counted = train_counts > 0 if config.eval_only else None
  step_counts = (
      np.maximum(train_counts, 1) if config.eval_only else train_counts
  )
  recipe = preprocessing(config, spec)
  if benchmark.train.in_memory:
    image_shape = tuple(benchmark.train.images.shape[1:])
  else:
    image_shape = (recipe.image_size, recipe.image_size, 3)
  core = _build_step_plan(
      config, layout, spec, step_counts, image_shape, devices
  )
  return Plan(
      config=config.to_dict(),
      label=(
          f'{config.model} {config.norm.upper()}, loss {config.loss}, on '
          f'{benchmark.train.name}'
      ),
      eval_only=config.eval_only,
      keep_checkpoints=config.keep_checkpoints,
      benchmark=benchmark,
      shot_thresholds=(config.many_threshold, config.few_threshold),
      groups=metrics.shot_groups(
          train_counts, config.many_threshold, config.few_threshold, counted
      ),
      core=core,
      input_path=config.input_path,
      sampler=sampler_spec(config),
      preprocessing=recipe,
      steps_per_dispatch=config.steps_per_dispatch,
      eval_batch_size=config.eval_batch_size,
      finetune_from=config.finetune_from,
      reinit_classifier=config.reinit_classifier,
      loss_switch=loss_switch(config, core.length),
  )
