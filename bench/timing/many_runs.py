"""K training runs in one program against one run alone, in one process.

    python -m bench.timing.many_runs                          # K = 2, 4, 8, 16
    python -m bench.timing.many_runs --runs=2 --run-axis=vmap,unroll   # both maps

ResNet-32 (NBN) trains on synthetic CIFAR-10-LT-sized data (12,406 32x32
images, IF 100 class counts) with the on-device input path, batch 128,
the recipe of configs/cifar10_lt.py, built by the run plan as the trainer
builds it (`nbn_jax.training.runs`; JAX only, no TensorFlow). The baseline
'single' is the single-run trainer (K = 1).

Every program is compiled and warmed up first; then rounds time each
program for `--dispatches` calls in turn (so drift on the machine hits all)
and the medians are printed:

* step ms: wall time of one step of all K runs;
* img/s: images per second summed over the runs;
* per-run: step ms / K divided by the single run's step ms (the goal on a
  CPU: <= 1.1 at K = 2; on an accelerator well below 1);
* 200 ep s: the implied wall time of K full 200-epoch runs (97 steps per
  epoch), training steps only;
* 1st call s: the first call: compiling, plus one dispatch.

`--run-axis` maps the runs with `jax.vmap` (convolutions become grouped
convolutions) or unrolls them in the one program ('unroll').
"""

import argparse
import functools
import statistics
import time

import jax
import numpy as np

from bench.timing.cifar import (
    COUNTS,
    NUM_CLASSES,
    config_for,
    machine,
    step_plan,
)
import input_pipeline as ip
from input_pipeline import on_device
from nbn_jax.training import inputs
from nbn_jax.training.run_axis import default_run_axis

STEPS_PER_EPOCH = 97


def synthetic_split() -> ip.Split:
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(NUM_CLASSES), COUNTS).astype(np.int32)
  images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
  return ip.Split('synthetic CIFAR-10-LT', labels, NUM_CLASSES, images=images)


class Program:
  """The trainer's on-device training input for `num_runs` runs side by side
  (one run: the single-run trainer), built by the run plan."""

  def __init__(self, split, num_runs, run_axis, batch, dispatch, bf16):
    core = step_plan(config_for(num_runs, run_axis, batch, bf16))
    self.num_runs = num_runs
    self.steps_per_call = dispatch
    self.state = core.runs.init_state()
    self._input = inputs.OnDeviceInput(
        on_device.put_on_devices(
            split, ip.SamplerSpec('instance'), core.topology.batch_sharding
        ),
        functools.partial(
            core.runs.device_steps, ip.Preprocessing('cifar', crop_padding=4)
        ),
        dispatch,
    )
    self._step = 0  # the loop's step, which the runs' own steps follow

  def time(self, calls: int) -> float:
    """Seconds per step over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
      self.state, metrics = self._input.run(
          self.state, self._step, self.steps_per_call
      )
      self._step += self.steps_per_call
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / (calls * self.steps_per_call)


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--runs', default='2,4,8,16')
  parser.add_argument(
      '--run-axis',
      default=default_run_axis(),
      help='vmap, unroll or both (default: unroll on CPU, else vmap)',
  )
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--dispatches', type=int, default=2)
  parser.add_argument(
      '--steps-per-dispatch',
      type=int,
      default=25,
      help='steps per jitted call on accelerators (always 1 on a CPU)',
  )
  parser.add_argument('--bf16', action='store_true')
  args = parser.parse_args()
  dispatch = inputs.steps_per_dispatch(args.steps_per_dispatch)

  print(
      f'{machine()}, ResNet-32 batch {args.batch} per run,'
      f' {"bfloat16" if args.bf16 else "float32"}, {dispatch} step(s) per'
      ' dispatch'
  )
  split = synthetic_split()
  specs = [('single', 1, 'unroll')] + [
      (f'{run_axis} K={k}', int(k), run_axis)
      for run_axis in args.run_axis.split(',')
      for k in args.runs.split(',')
      if int(k) > 1
  ]
  programs, first_call = {}, {}
  for name, num_runs, run_axis in specs:
    programs[name] = Program(
        split, num_runs, run_axis, args.batch, dispatch, args.bf16
    )
    start = time.perf_counter()
    programs[name].time(1)
    first_call[name] = time.perf_counter() - start
    print(f'  {name}: first call {first_call[name]:.1f} s', flush=True)
  times = {name: [] for name in programs}
  for r in range(args.rounds):
    names = list(programs) if r % 2 == 0 else list(programs)[::-1]
    for name in names:
      times[name].append(programs[name].time(args.dispatches))
    print(f'  round {r + 1} of {args.rounds} done', flush=True)
  single = statistics.median(times['single'])
  print(
      f'{"program":14} {"step ms":>9} {"img/s":>8} {"per-run":>8} '
      f'{"200 ep s":>9} {"1st call s":>10}'
  )
  for name, program in programs.items():
    step = statistics.median(times[name])
    k = program.num_runs
    print(
        f'{name:14} {1e3 * step:9.1f} {k * args.batch / step:8.0f} '
        f'{step / k / single:8.3f} {200 * STEPS_PER_EPOCH * step:9.0f} '
        f'{first_call[name]:10.1f}'
    )


if __name__ == '__main__':
  main()
