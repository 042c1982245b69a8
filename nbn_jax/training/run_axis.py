"""The run axis: K runs stacked on a leading axis of one program's arrays.

Run k is the run a single program with seed `seed + k` would train: its
seed (`run_seeds`) and its initialisation and data keys (`run_keys`) are
that run's. A function of one run becomes a function of K stacked runs with
`map_runs`, in one of two ways (`config.run_axis`, default
`default_run_axis()`):

* 'vmap': `jax.vmap` with `spmd_axis_name='runs'`. Convolutions whose
  kernels differ per run become grouped convolutions (one group per run).
* 'unroll': a Python loop over the runs inside the one jitted program; the
  program grows K-fold, but every convolution is the single run's. XLA:CPU
  runs grouped convolutions slowly (measured, bench/timing/many_runs.py,
  ResNet-32 batch 128: per-run step time at K = 2 is 2.4x a single run's
  with 'vmap', 1.02x with 'unroll'), so CPUs unroll.

`select_run` takes run k's slice of a stacked tree.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from nbn_jax.training.topology import RUNS_AXIS

RUN_AXIS_MAPS = ('vmap', 'unroll')


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


def select_run(tree, k: int):
  """Run k's slice of a stacked tree (a state, metrics, class hits)."""
  return jax.tree.map(lambda x: x[k], tree)


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
