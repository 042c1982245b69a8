"""K runs' evaluation against K times one run's, and the initial states.

    python -m bench.timing.many_runs_eval                   # K = 2, CPU maps
    python -m bench.timing.many_runs_eval --runs=2,4 --run-axis=unroll,vmap
    python -m bench.timing.many_runs_eval --init-default-level

ResNet-32 (NBN, the recipe of configs/cifar10_lt.py, built by the run plan
as the trainer builds it) evaluates a synthetic CIFAR-sized test split
(10,000 random 32x32 images, eval batch 512: 20 batches, the last one
padded and masked) through the trainer's `Evaluator`, exactly as `train.py`
evaluates. No files are read.

Printed, measured in one process:

* init: seconds to the first initial train state of one run and of K runs
  (`Runs.init_state`), compilation included (running it takes
  milliseconds); with `--init-default-level`, also one run's init program
  compiled at XLA's default optimisation level against
  `steps.init_compiler_options`.
* compile s: `lower().compile()` seconds of each eval program.
* eval s: one whole evaluation (all batches) once compiled, the median
  over `--rounds`; rounds visit the programs in turn, in alternating order,
  so drift on the machine hits all.
* ratio steady: K-run evaluation / (K x one-run evaluation), both once
  compiled; ratio first: the same with each program's compilation added
  (what a run's first evaluation costs). The target on a CPU: <= 1.5.

`--run-axis`: how the K-run eval program maps over the runs, 'unroll' (the
CPU default of `run_axis=auto`) or 'vmap' (the accelerator default).
"""

import argparse
import functools
import statistics
import time

import jax
import numpy as np

import input_pipeline as ip
from input_pipeline.evaluation import eval_batches
from bench.timing.cifar import (
    COUNTS,
    IMAGE_SHAPE,
    NUM_CLASSES,
    config_for,
    machine,
    step_plan,
)
from nbn_jax.training import metrics, steps
from nbn_jax.training.evaluation import Evaluator
from nbn_jax.training.inputs import to_global
from nbn_jax.training.run_axis import default_run_axis


def test_split(num_images: int) -> ip.Split:
  """`num_images` random CIFAR-sized images with random labels."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, NUM_CLASSES, num_images).astype(np.int32)
  images = rng.integers(0, 256, (num_images, *IMAGE_SHAPE), dtype=np.uint8)
  return ip.Split('synthetic test', labels, NUM_CLASSES, images=images)


def seconds(fn):
  """(wall seconds of fn() until its outputs are ready, its outputs)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


class Program:
  """The trainer's evaluation of K runs (or one) over the split."""

  def __init__(self, num_runs, run_axis, eval_batch, split):
    config = config_for(num_runs, run_axis)
    config.eval_batch_size = eval_batch
    core = step_plan(config)
    self.num_runs, self.core, self.split = num_runs, core, split
    self.init_s, self.state = seconds(core.runs.init_state)
    eval_step = core.runs.eval_step()
    batch = next(
        eval_batches(split, ip.Preprocessing('cifar'), eval_batch, 0, 1)
    )
    sharding = core.topology.batch_sharding
    args = [to_global(batch[k], sharding) for k in ('image', 'label', 'mask')]
    self.compile_s = seconds(
        lambda: eval_step.lower(self.state, *args).compile()
    )[0]
    self._evaluator = functools.partial(
        Evaluator,
        eval_step,
        sharding,
        ip.Preprocessing('cifar'),
        eval_batch,
        metrics.shot_groups(np.array(COUNTS)),
    )

  def time(self) -> float:
    """Seconds of one evaluation (a fresh Evaluator: none remembered)."""
    evaluator = self._evaluator()
    return seconds(
        lambda: [a.summary()['top1'] for a in evaluator(self.state, self.split)]
    )[0]


def compare_init_levels(core) -> None:
  """One run's init program compiled at XLA's default level and at ours."""
  init = functools.partial(
      steps.initial_train_state, core.model, core.tx, image_shape=IMAGE_SHAPE
  )
  for name, options in (
      ('XLA default', {'xla_backend_optimization_level': 3}),
      ('init_compiler_options', steps.init_compiler_options()),
  ):
    compile_s = seconds(
        lambda: jax.jit(init, compiler_options=options)
        .lower(jax.random.key(0))
        .compile()
    )[0]
    print(f"  one run's init program at {name}: compiles in {compile_s:.1f} s")


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--runs', default='2')
  parser.add_argument(
      '--run-axis',
      default=default_run_axis(),
      help='unroll, vmap or both (default: unroll on CPU, else vmap)',
  )
  parser.add_argument('--test-images', type=int, default=10_000)
  parser.add_argument('--eval-batch', type=int, default=512)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument(
      '--init-default-level',
      action='store_true',
      help="also compile one run's init at XLA's default optimisation level",
  )
  args = parser.parse_args()
  print(
      f'{machine()}, ResNet-32, {args.test_images} test images, eval batch'
      f' {args.eval_batch}',
      flush=True,
  )
  split = test_split(args.test_images)
  programs = {'one run': Program(1, 'auto', args.eval_batch, split)}
  if args.init_default_level:
    compare_init_levels(programs['one run'].core)
  for k in (int(k) for k in args.runs.split(',')):
    for run_axis in args.run_axis.split(','):
      programs[f'{run_axis} K={k}'] = Program(
          k, run_axis, args.eval_batch, split
      )
  for name, program in programs.items():
    print(
        f'  {name}: init {program.init_s:.1f} s, eval compile '
        f'{program.compile_s:.1f} s',
        flush=True,
    )
  times = {name: [] for name in programs}
  for r in range(args.rounds):
    names = list(programs) if r % 2 == 0 else list(programs)[::-1]
    for name in names:
      times[name].append(programs[name].time())
    print(f'  round {r + 1} of {args.rounds} done', flush=True)
  single = statistics.median(times['one run'])
  single_first = programs['one run'].compile_s + single
  print(
      f'{"program":12} {"init s":>7} {"compile s":>9} {"eval s":>8} '
      f'{"rounds s":>17} {"ratio steady":>12} {"ratio first":>11}'
  )
  for name, program in programs.items():
    steady = statistics.median(times[name])
    k = program.num_runs
    rounds = ' '.join(f'{t:.1f}' for t in times[name])
    print(
        f'{name:12} {program.init_s:7.1f} {program.compile_s:9.1f} '
        f'{steady:8.2f} {rounds:>17} {steady / (k * single):12.3f} '
        f'{(program.compile_s + steady) / (k * single_first):11.3f}'
    )


if __name__ == '__main__':
  main()
