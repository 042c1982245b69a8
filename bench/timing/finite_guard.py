"""What the finiteness guard costs one run's train step: compile and step time.

    python -m bench.timing.finite_guard [--batch=128] [--rounds=3] [--steps=5]

ResNet-32 (NBN, the recipe of configs/cifar10_lt.py, built by the run plan)
trains one run on a synthetic uint8 batch with the trainer's host-fed step
body, with and without the guard every run has (`runs.guarded_step`: the
update is dropped unless the run is live and the loss and every new
parameter are finite, one `jax.lax.cond`):

* none: `steps.apply_batch` alone;
* guarded: `runs.guarded_step`, what the trainer runs.

Printed: `lower().compile()` seconds of each program (XLA's full
optimisation unless JAX_DISABLE_MOST_OPTIMIZATIONS is set), the median over
rounds of ms per step once compiled, and the fastest round (on a shared
machine the least disturbed); rounds visit the programs in turn, in
alternating order, so drift on the machine hits all. Ratios are guarded /
none.
"""

import argparse
import functools
import statistics
import time

import jax
import numpy as np

from bench.timing.cifar import config_for, machine, step_plan
from nbn_jax.training import runs, steps


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=5, help='steps per round')
  args = parser.parse_args()
  core = step_plan(config_for(batch=args.batch))
  print(
      f'{machine()}, ResNet-32 NBN, one run, batch {args.batch}',
      flush=True,
  )
  rng = np.random.default_rng(0)
  sharding = core.topology.batch_sharding
  images = jax.device_put(
      rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8), sharding
  )
  labels = jax.device_put(
      rng.integers(0, 10, args.batch).astype(np.int32), sharding
  )
  bodies = {
      'none': steps.apply_batch,
      'guarded': runs.guarded_step,
  }
  compiled, states, compile_s = {}, {}, {}
  for name, body in bodies.items():
    step = jax.jit(functools.partial(body, core.step_config), donate_argnums=0)
    state = core.runs.init_state()
    start = time.perf_counter()
    compiled[name] = step.lower(state, images, labels).compile()
    compile_s[name] = time.perf_counter() - start
    states[name], _ = jax.block_until_ready(
        compiled[name](state, images, labels)
    )
    print(f'  {name}: compiled in {compile_s[name]:.1f} s', flush=True)
  times = {name: [] for name in compiled}
  for r in range(args.rounds):
    names = list(compiled) if r % 2 == 0 else list(compiled)[::-1]
    for name in names:
      start = time.perf_counter()
      for _ in range(args.steps):
        states[name], metrics = compiled[name](states[name], images, labels)
      jax.block_until_ready((states[name], metrics))
      times[name].append((time.perf_counter() - start) / args.steps)
    print(f'  round {r + 1} of {args.rounds} done', flush=True)
  print(
      f'{"guard":8} {"compile s":>9} {"ms/step":>8} {"min ms":>7} '
      f'{"rounds ms":>24}'
  )
  for name in compiled:
    rounds = ' '.join(f'{1e3 * t:.0f}' for t in times[name])
    print(
        f'{name:8} {compile_s[name]:9.1f} '
        f'{1e3 * statistics.median(times[name]):8.0f} '
        f'{1e3 * min(times[name]):7.0f} {rounds:>24}'
    )
  none, guarded = times['none'], times['guarded']
  print(
      f'guarded / none: compile {compile_s["guarded"] / compile_s["none"]:.2f}'
      f', step {statistics.median(guarded) / statistics.median(none):.3f}, '
      f'fastest round {min(guarded) / min(none):.3f}'
  )


if __name__ == '__main__':
  main()
