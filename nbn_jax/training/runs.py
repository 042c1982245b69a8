"""The run strategy: how the trainer trains the runs of one config.

A config trains `num_runs` independent runs, K, and everything that depends
on K lives here. The plan builds one `Runs` (`make_runs`) and the loop, the
evaluator and the results ask it for the programs, the state, the data
streams and each run's slice; none of them branches on K.

* `SingleRun` (K = 1): the train state has no run axis; the steps are the
  trainer's single-run steps (`nbn_jax.training.steps`).
* `StackedRuns` (K > 1): run k is the run a single program with seed
  `seed + k` would train: its own initialisation, data order and
  augmentation (`run_axis.run_keys`; the tf.data path:
  `inputs.train_batches`). Every leaf
  of the train state has a leading run axis of size K, and the steps map
  the single-run step (`steps.apply_batch`) over it.

Layout (`topology.run_layout`, `topology.make_topology(..., run_shards)`):
with K > 1 the mesh is ('runs', 'data'), or ('runs', 'replica', 'bn_group')
for bn_scope 'group'. The run axis of the state and of the training batches
is split over 'runs'; each run's batch is split over the data axes, so a run
may span several devices and a device may hold several runs.

The run axis (each run's seed and keys, mapping a one-run function over
it, run k's slice) is `nbn_jax.training.run_axis`'s; K tf.data streams are
stacked by `inputs.train_batches`.

BN statistics scopes: all three work with any layout. The topology shows
`steps` one run's topology: its `data_axes` leave 'runs' out, so the
`shard_map` of 'device' and 'group' splits each run's batch over the data
axes only, and vmap's `spmd_axis_name` splits its run axis over 'runs'.

A run whose loss or new parameters are not finite stops, one run or K
alike: the step drops its update, so its state (parameters, statistics,
optimiser state and step counter) stays at its last finite step and its
step counter falls behind the steps the loop ran. The lag is what marks it
stopped from then on: the programs take the loop's step, and a run updates
only while its own step equals it, so it never restarts, and a checkpoint
records it. `Runs.stopped` lists the stopped runs; the loop reports them and
stops when every run has.
"""

import abc
import dataclasses
import functools
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

import input_pipeline as ip
from input_pipeline import on_device
from nbn_jax.training import inputs, steps
from nbn_jax.training.run_axis import (
    default_run_axis,
    map_runs,
    run_keys,
    run_seeds,
    select_run,
)
from nbn_jax.training.topology import Topology


def _all_finite(tree) -> jax.Array:
  return jnp.all(
      jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])
  )


def guarded_step(
    cfg: steps.StepConfig, state, images, labels, live=True
) -> tuple[Any, dict]:
  """`steps.apply_batch`, dropping the update unless live and finite.

  An update is kept only when `live` and both the loss and the new
  parameters are finite; otherwise the state, its step counter included,
  stays as it was (the run has stopped).
  """
  new_state, metrics = steps.apply_batch(cfg, state, images, labels)
  keep = live & jnp.isfinite(metrics['loss']) & _all_finite(new_state.params)
  # A cond, not a select per leaf: XLA:CPU compiles the selects next to the
  # finiteness reductions slowly (ResNet-32 step: 23 s against 11 s). Under
  # vmap it becomes a select anyway.
  return jax.lax.cond(keep, lambda: new_state, lambda: state), metrics


def _live(state: steps.TrainState, step: jax.Array) -> jax.Array:
  """Runs not stopped: their step is the loop's `step` (scalar, or (K,))."""
  return state.step == step


def _sample_and_apply(
    cfg: steps.StepConfig,
    preprocessing: ip.Preprocessing,
    state,
    key: jax.Array,
    live: jax.Array,
    data: on_device.DeviceData,
):
  """One run's on-device step: its batch and augmentation keyed by (its
  data key, its step), so a resumed run continues the same stream."""
  images, labels = on_device.training_batch(
      data, key, state.step, cfg.global_batch_size, preprocessing
  )
  return guarded_step(cfg, state, images, labels, live)


def scan_steps(one_step, num_steps: int, state, data, step):
  """`num_steps` of `one_step(state, data, step)` from the loop's `step`,
  metrics stacked on a leading step axis."""
  if num_steps == 1:  # no loop: see `inputs.steps_per_dispatch`
    state, metrics = one_step(state, data, step)
    return state, jax.tree.map(lambda m: m[None], metrics)

  def body(carry, _):
    state, step = carry
    state, metrics = one_step(state, data, step)
    return (state, step + 1), metrics

  (state, _), metrics = jax.lax.scan(
      body, (state, jnp.asarray(step, jnp.int32)), length=num_steps
  )
  return state, metrics


@dataclasses.dataclass(frozen=True)
class Runs(abc.ABC):
  """The runs of one config: their state, programs, streams and outputs.

  Attributes:
    step_config: what the steps need (model, loss, topology, batch).
    tx: the optimiser.
    image_shape: (H, W, C) of one model input.
    seed: run k's seed is `seed + k` (initialisation and data order).
  """

  step_config: steps.StepConfig
  tx: optax.GradientTransformation
  image_shape: tuple[int, ...]
  seed: int

  @property
  @abc.abstractmethod
  def num_runs(self) -> int:
    """K."""

  @property
  def seeds(self) -> list[int]:
    """Run k's seed: `seed + k`."""
    return run_seeds(self.seed, self.num_runs)

  @property
  def topology(self) -> Topology:
    return self.step_config.topology

  def keys(self) -> tuple[jax.Array, jax.Array]:
    """(parameter initialisation key, data key), (K,) each for K > 1."""
    return run_keys(self.seed, self.num_runs)

  @abc.abstractmethod
  def init_state(self) -> steps.TrainState:
    """The runs' initial train state, on the mesh."""

  @property
  @abc.abstractmethod
  def batch_sharding(self) -> NamedSharding:
    """The layout of a host-fed training batch: (B, ...) or (K, B, ...)."""

  @abc.abstractmethod
  def train_step(self) -> Callable:
    """jit (state, images, labels, step) -> (state, metrics).

    `step` is the loop's step: runs whose own step lags it have stopped and
    are not updated. Donates the state. Metrics: {'loss', 'correct'},
    scalars or (K,).
    """

  @abc.abstractmethod
  def device_steps(
      self, preprocessing: ip.Preprocessing, num_steps: int
  ) -> Callable:
    """jit (state, DeviceData, step) -> (state, metrics (num_steps[, K])).

    `step`: the loop's step before the first of the `num_steps`.
    """

  @abc.abstractmethod
  def eval_step(self) -> Callable:
    """jit (state, images, labels, mask) -> per-class counts
    (`metrics.ClassHits`).

    (C,) each, or (K, C): every run counts the same shared eval batch.
    """

  @abc.abstractmethod
  def train_stream(
      self,
      split: ip.Split,
      preprocessing: ip.Preprocessing,
      sampler: ip.SamplerSpec,
      first_step: int,
  ) -> Iterator[dict[str, np.ndarray]]:
    """This host's tf.data training batches from `first_step` on."""

  @abc.abstractmethod
  def select(self, tree, k: int):
    """Run k's part of a tree laid out as the state (or its metrics)."""

  @abc.abstractmethod
  def run_dir(self, workdir: str, k: int) -> str:
    """Where run k writes its results, plots and scalars."""

  @abc.abstractmethod
  def name(self, k: int) -> str:
    """Run k in log lines: '' for a single run, 'run k' of several."""

  def log_prefix(self, k: int) -> str:
    """What a log line about run k starts with: 'run k: ', or '' for a
    single run."""
    name = self.name(k)
    return f'{name}: ' if name else ''

  @property
  @abc.abstractmethod
  def summarizes(self) -> bool:
    """Whether the results include a summary over runs (K > 1)."""

  def per_run(self, metric) -> np.ndarray:
    """Per-step metrics (steps,) or (steps, K) -> (steps, K) on the host."""
    return np.asarray(metric).reshape(-1, self.num_runs)

  def steps_of(self, state: steps.TrainState) -> np.ndarray:
    """(K,) each run's step counter."""
    return np.asarray(jax.device_get(state.step)).reshape(self.num_runs)

  def stopped(self, state: steps.TrainState, step: int) -> dict[int, int]:
    """{run: its last finite step} of the runs behind `step`, the loop's."""
    return {
        int(k): int(run_step)
        for k, run_step in enumerate(self.steps_of(state))
        if run_step < step
    }


@dataclasses.dataclass(frozen=True)
class SingleRun(Runs):
  """One run: a train state without a run axis, outputs in the workdir."""

  num_runs = 1
  summarizes = False

  def init_state(self):
    return steps.create_train_state(
        self.step_config.model,
        self.tx,
        self.keys()[0],
        self.image_shape,
        self.topology,
    )

  @property
  def batch_sharding(self):
    return self.topology.batch_sharding

  def train_step(self):
    def train_step(state, images, labels, step):
      return guarded_step(
          self.step_config, state, images, labels, _live(state, step)
      )

    return jax.jit(train_step, donate_argnums=0)

  def device_steps(self, preprocessing, num_steps):
    data_key = self.keys()[1]

    def one_step(state, data, step):
      return _sample_and_apply(
          self.step_config,
          preprocessing,
          state,
          data_key,
          _live(state, step),
          data,
      )

    return jax.jit(
        functools.partial(scan_steps, one_step, num_steps), donate_argnums=0
    )

  def eval_step(self):
    return steps.make_eval_step(self.step_config)

  def train_stream(self, split, preprocessing, sampler, first_step):
    return inputs.tf_data_stream(
        split,
        preprocessing,
        sampler,
        self.step_config.global_batch_size,
        self.seed,
        first_step,
    )

  def select(self, tree, k):
    if k != 0:
      raise IndexError(f'run {k} of a single run')
    return tree

  def run_dir(self, workdir, k):
    return workdir

  def name(self, k):
    return ''


@dataclasses.dataclass(frozen=True)
class StackedRuns(Runs):
  """K > 1 runs stacked on a leading run axis, split over 'runs'.

  Attributes:
    count: K.
    run_axis: how the steps map over runs ('vmap' or 'unroll').
  """

  count: int = 2
  run_axis: str = 'vmap'
  summarizes = True

  @property
  def num_runs(self):
    return self.count

  def init_state(self):
    """K train states, each a single run's, stacked on a leading run axis.

    One compiled single-run init, called per key, then stacked: the same
    values as a vmapped init, which XLA:CPU compiles very slowly (62 s for
    ResNet-32 at K = 2 on 2 cores, against 18 s for one run's, 3 s at the
    level of `steps.init_compiler_options`).
    """
    init = jax.jit(
        functools.partial(
            steps.initial_train_state,
            self.step_config.model,
            self.tx,
            image_shape=self.image_shape,
        ),
        compiler_options=steps.init_compiler_options(),
    )
    states = [init(key) for key in self.keys()[0]]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    return jax.device_put(stacked, self.topology.run_sharding)

  @property
  def batch_sharding(self):
    return self.topology.run_batch_sharding

  def train_step(self):
    """Run k trains on images[k], labels[k] (K, B, ...): host-fed batches."""
    mapped = map_runs(
        functools.partial(guarded_step, self.step_config),
        (0, 0, 0, 0),
        self.run_axis,
    )

    def train_step(states, images, labels, step):
      return mapped(states, images, labels, _live(states, step))

    return jax.jit(train_step, donate_argnums=0)

  def device_steps(self, preprocessing, num_steps):
    """Run k draws and augments its batches with its own data key, exactly
    as a single run with that key; the data on the devices is shared."""
    mapped = map_runs(
        functools.partial(_sample_and_apply, self.step_config, preprocessing),
        (0, 0, 0, None),
        self.run_axis,
    )
    data_keys = self.keys()[1]

    def one_step(states, data, step):
      return mapped(states, data_keys, _live(states, step), data)

    return jax.jit(
        functools.partial(scan_steps, one_step, num_steps), donate_argnums=0
    )

  def eval_step(self):
    step = map_runs(
        steps.make_eval_step(self.step_config),
        (0, None, None, None),
        self.run_axis,
    )
    return jax.jit(step, out_shardings=self.topology.replicated)

  def train_stream(self, split, preprocessing, sampler, first_step):
    return inputs.train_batches(
        split,
        preprocessing,
        sampler,
        self.step_config.global_batch_size,
        self.seeds,
        first_step,
    )

  def select(self, tree, k):
    return select_run(tree, k)

  def run_dir(self, workdir, k):
    return os.path.join(workdir, f'run_{k}')

  def name(self, k):
    return f'run {k}'


def make_runs(
    step_config: steps.StepConfig,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    seed: int,
    num_runs: int = 1,
    run_axis: str = 'auto',
) -> Runs:
  """The strategy for `num_runs` runs from `seed` ('auto': see
  `default_run_axis`). `step_config.topology` must have a 'runs' axis when
  num_runs > 1 (`RunLayout.mesh_run_shards`)."""
  if num_runs == 1:
    return SingleRun(step_config, tx, tuple(image_shape), seed)
  return StackedRuns(
      step_config,
      tx,
      tuple(image_shape),
      seed,
      count=num_runs,
      run_axis=default_run_axis() if run_axis == 'auto' else run_axis,
  )
