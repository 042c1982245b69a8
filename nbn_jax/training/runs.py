"""K independent training runs in one jitted program.

Run k of K is the run a single program with seed `seed + k` would train: its
own initialisation, data order and augmentation (`run_keys`; the tf.data
path: `train_batches`). Every leaf of the train state gets a leading run axis
of size K, and the steps map the trainer's single-run step
(`steps.apply_batch`) over it.

Layout (`run_layout`; `topology.make_topology(..., run_shards)`): the mesh is ('runs', 'data'), or
('runs', 'replica', 'bn_group') for bn_scope 'group'. The run axis of the
state and of the training batches is split over 'runs'; each run's batch is
split over the data axes, so a run may span several devices and a device may
hold several runs. By default the 'runs' axis has gcd(K, devices) devices.

Mapping over runs (`run_axis`, default `default_run_axis()`):
* 'vmap': `jax.vmap` with `spmd_axis_name='runs'`. Convolutions whose
  kernels differ per run become grouped convolutions (one group per run).
* 'unroll': a Python loop over the runs inside the one jitted program; the
  program grows K-fold, but every convolution is the single run's. XLA:CPU
  runs grouped convolutions slowly (measured, bench/many_runs.py, ResNet-32
  batch 128: per-run step time at K = 2 is 2.4x a single run's with 'vmap',
  1.02x with 'unroll'), so CPUs unroll.

BN statistics scopes: all three work with any layout. The topology shows
`steps` one run's topology: its `data_axes` leave 'runs' out, so the
`shard_map` of 'device' and 'group' splits each run's batch over the data
axes only, and vmap's `spmd_axis_name` splits its run axis over 'runs'.

A run whose loss or new parameters are not finite is stopped alone: the step
drops its update, so its state (parameters, statistics, optimiser state and
step counter) stays at its last finite step and its step counter falls
behind the others'. The lag is what marks it stopped from then on: a run
updates only while its step equals the largest step of all runs, so it never
restarts, and a checkpoint of the stacked state records it.
`stopped_runs(states)` lists them; the loop reports them and stops only when
every run has stopped.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np


from input_pipeline import on_device
from input_pipeline.datasets import Preprocessing
from nbn_jax.training import inputs, steps
from nbn_jax.training.topology import RUNS_AXIS, Topology

RUN_AXIS_MAPS = ('vmap', 'unroll')


class RunLayoutError(ValueError):
  """`num_runs` and the devices (or batch sizes) do not fit together."""


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """How K runs sit on the devices.

  Attributes:
    num_runs: K.
    run_shards: devices along the 'runs' mesh axis; each holds K /
      run_shards runs.
    data_shards: devices each run's batch is split over.
  """

  num_runs: int
  run_shards: int
  data_shards: int


def run_layout(
    num_runs: int,
    device_count: int,
    batch_size: int,
    eval_batch_size: int,
    bn_scope: str = 'global',
    bn_group_size: int = 1,
    run_shards: int = 0,
    feeding_hosts: int = 1,
) -> RunLayout:
  """Checks that K runs fit the devices; the config check calls this.

  Args:
    num_runs: K (config.num_runs).
    device_count: all devices of all hosts.
    batch_size: each run's global training batch.
    eval_batch_size: the evaluation batch (shared by all runs).
    bn_scope, bn_group_size: the BN statistics scope.
    run_shards: devices along the 'runs' axis; 0 picks gcd(K, devices), or
      1 when several hosts feed the batches.
    feeding_hosts: hosts that each feed a slice of every run's batch (the
      tf.data input path on a pod). With more than one, the 'runs' axis
      must have one shard: a host's slice holds examples of every run.

  Raises:
    RunLayoutError: a one-line message naming the config field to change.
  """
  if num_runs < 1:
    raise RunLayoutError(f'config.num_runs={num_runs} must be >= 1.')
  if run_shards == 0:
    run_shards = 1 if feeding_hosts > 1 else math.gcd(num_runs, device_count)
  if feeding_hosts > 1 and run_shards != 1:
    raise RunLayoutError(
        f'config.run_shards={run_shards} must be 1 (or 0) when '
        f'{feeding_hosts} hosts feed the batches (config.input_path='
        "'tf_data'): each host's slice holds examples of every run."
    )
  if run_shards < 1 or num_runs % run_shards or device_count % run_shards:
    raise RunLayoutError(
        f'config.run_shards={run_shards} must divide both config.num_runs='
        f'{num_runs} and the {device_count} devices (0 picks a layout).'
    )
  data_shards = device_count // run_shards
  for field, size in (
      ('batch_size', batch_size),
      ('eval_batch_size', eval_batch_size),
  ):
    if size % data_shards:
      raise RunLayoutError(
          f'config.{field}={size} is not divisible by the {data_shards} '
          f'devices of each run ({device_count} devices, {run_shards} run '
          f'shards for config.num_runs={num_runs}); use a multiple of '
          f'{data_shards}.'
      )
  if bn_scope == 'group' and data_shards % bn_group_size:
    raise RunLayoutError(
        f'config.bn_group_size={bn_group_size} must divide the {data_shards} '
        'devices of each run (config.bn_scope=group).'
    )
  return RunLayout(num_runs, run_shards, data_shards)


def run_seeds(seed: int, num_runs: int) -> list[int]:
  return [seed + k for k in range(num_runs)]


def run_keys(seed: int, num_runs: int) -> tuple[jax.Array, jax.Array]:
  """(init key, data key) of one run: split(key(seed)); of K > 1 runs, (K,)
  keys each, run k's those of a single run with seed `seed + k`."""
  if num_runs == 1:
    init_key, data_key = jax.random.split(jax.random.key(seed))
    return init_key, data_key
  keys = jnp.stack(
      [jax.random.split(jax.random.key(s)) for s in run_seeds(seed, num_runs)]
  )
  return keys[:, 0], keys[:, 1]


def create_train_states(
    model,
    tx,
    init_keys: jax.Array,
    image_shape: tuple[int, ...],
    topology: Topology,
) -> steps.TrainState:
  """K train states stacked on a leading run axis, split over 'runs'.

  Args:
    model, tx: the network and optimiser (shared by all runs).
    init_keys: (K,) PRNG keys, one parameter initialisation per run.
    image_shape: (H, W, C) of one input image.
    topology: a topology with a 'runs' axis (`make_topology(...,
      run_shards=layout.run_shards)`).

  Returns:
    A TrainState whose every leaf has shape (K, ...), split over 'runs'.
  """

  # One compiled single-run init, called per key, then stacked: the same
  # values as a vmapped init, which XLA:CPU compiles very slowly (minutes for
  # ResNet-32).
  init = jax.jit(
      functools.partial(
          steps.initial_train_state, model, tx, image_shape=image_shape
      )
  )
  states = [init(key) for key in init_keys]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  return jax.device_put(stacked, topology.run_sharding)


def select_run(tree, k: int):
  """Run k's slice of a stacked tree (a state, metrics, class hits)."""
  return jax.tree.map(lambda x: x[k], tree)


def stopped_runs(states: steps.TrainState) -> dict[int, int]:
  """{run index: its last finite step} of the runs stopped on non-finite."""
  step = np.asarray(jax.device_get(states.step))
  return {int(k): int(step[k]) for k in np.flatnonzero(step < step.max())}


def default_run_axis() -> str:
  """'unroll' on CPU (slow grouped convolutions), 'vmap' elsewhere."""
  return 'unroll' if jax.default_backend() == 'cpu' else 'vmap'


def map_runs(fn: Callable, in_axes, run_axis: str = 'vmap') -> Callable:
  """`fn` of one run -> `fn` of K stacked runs (outputs stacked on axis 0).

  Args:
    fn: a function of one run's arguments.
    in_axes: per positional argument, 0 (stacked over runs) or None
      (shared by all runs), as in `jax.vmap`.
    run_axis: 'vmap' (one batched program) or 'unroll' (a Python loop over
      the runs, for backends where grouped convolutions are slow).
  """
  if run_axis == 'vmap':
    # The run axis of every intermediate (and of shard_map's blocks) is
    # split over 'runs'.
    return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=RUNS_AXIS)
  if run_axis != 'unroll':
    raise ValueError(f'run_axis={run_axis!r} is not one of {RUN_AXIS_MAPS}.')

  def unrolled(*args):
    stacked = [a for a, axis in zip(args, in_axes) if axis == 0]
    count = jax.tree.leaves(stacked[0])[0].shape[0]
    outputs = [
        fn(*(
            select_run(a, k) if axis == 0 else a
            for a, axis in zip(args, in_axes)
        ))
        for k in range(count)
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

  return unrolled


def _all_finite(tree) -> jax.Array:
  return jnp.all(
      jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])
  )


def _guarded(
    cfg: steps.StepConfig, state, images, labels, live
) -> tuple[Any, dict]:
  """`steps.apply_batch`, dropping the update unless live and finite."""
  new_state, metrics = steps.apply_batch(cfg, state, images, labels)
  keep = live & jnp.isfinite(metrics['loss']) & _all_finite(new_state.params)
  # A cond, not a select per leaf: XLA:CPU compiles the selects next to the
  # finiteness reductions slowly (ResNet-32 step: 23 s against 11 s). Under
  # vmap it becomes a select anyway.
  return jax.lax.cond(keep, lambda: new_state, lambda: state), metrics


def _live(states: steps.TrainState) -> jax.Array:
  """(K,) bool: runs not stopped (their step is the largest)."""
  return states.step == jnp.max(states.step)


def make_train_step(cfg: steps.StepConfig, run_axis: str = 'vmap'):
  """jit: (states, images (K, B, ...), labels (K, B)) -> (states, metrics).

  Run k trains on images[k], labels[k] (host-fed batches: the tf.data path,
  `train_batches`). Metrics are {'loss': (K,), 'correct': (K,)}. Donates
  the states. `cfg.topology` has a 'runs' axis; `cfg.global_batch_size`
  is B.
  """
  step = map_runs(functools.partial(_guarded, cfg), (0, 0, 0, 0), run_axis)

  def train_step(states, images, labels):
    return step(states, images, labels, _live(states))

  return jax.jit(train_step, donate_argnums=0)


def _sample_and_apply(
    cfg: steps.StepConfig,
    preprocessing: Preprocessing,
    state,
    key: jax.Array,
    live: jax.Array,
    data: on_device.DeviceData,
):
  """One run's on-device step: its own batch and augmentation, keyed by
  (its data key, its step) as a single run's (`inputs.device_steps`)."""
  images, labels = on_device.training_batch(
      data, key, state.step, cfg.global_batch_size, preprocessing
  )
  return _guarded(cfg, state, images, labels, live)


def make_device_train_steps(
    cfg: steps.StepConfig,
    data_keys: jax.Array,
    preprocessing: Preprocessing,
    num_steps: int,
    run_axis: str = 'vmap',
):
  """jit: (states, DeviceData) -> (states, metrics (num_steps, K)).

  `steps.make_device_train_steps` for K runs: run k draws and augments its
  batches with `data_keys[k]`, exactly as a single run with that data key.
  `data` is shared by all runs: `on_device.put_on_devices(split, sampler,
  cfg.topology.batch_sharding)` (images split over the data axes).
  """
  step = map_runs(
      functools.partial(_sample_and_apply, cfg, preprocessing),
      (0, 0, 0, None),
      run_axis,
  )

  def one_step(states, data):
    return step(states, data_keys, _live(states), data)

  return jax.jit(
      functools.partial(inputs.scan_steps, one_step, num_steps),
      donate_argnums=0,
  )


def make_eval_step(cfg: steps.StepConfig, run_axis: str = 'vmap'):
  """jit: (states, images, labels, mask) -> per-run (correct, total), (K, C).

  The eval batch (B, ...) is shared by all runs
  (`cfg.topology.batch_sharding`).
  """
  step = map_runs(steps.make_eval_step(cfg), (0, None, None, None), run_axis)
  return jax.jit(step, out_shardings=cfg.topology.replicated)


def train_batches(
    split,
    preprocessing: Preprocessing,
    sampler,
    global_batch_size: int,
    seed: int,
    num_runs: int,
    first_step: int,
) -> Iterator[dict[str, np.ndarray]]:
  """K tf.data training streams, seeds seed .. seed + K - 1, stacked.

  Stream k is `inputs.tf_data_stream` with seed `seed + k`, the one a
  single run with that seed reads. Yields {'image': (K, per_host_batch, H,
  W, C) uint8, 'label': (K, per_host_batch)}.
  """
  return stack_runs([
      inputs.tf_data_stream(
          split, preprocessing, sampler, global_batch_size, s, first_step
      )
      for s in run_seeds(seed, num_runs)
  ])


def stack_runs(
    streams: Iterable[Iterator[dict[str, np.ndarray]]],
) -> Iterator[dict[str, np.ndarray]]:
  """Zips per-run batch streams into batches with a leading run axis."""
  for batches in zip(*streams):
    yield {name: np.stack([b[name] for b in batches]) for name in batches[0]}
