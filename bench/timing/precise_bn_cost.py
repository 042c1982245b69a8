"""What precise BN costs before an evaluation, in training steps.

    python -m bench.timing.precise_bn_cost [--batches=20] [--batch=128] [--rounds=3]

ResNet-32 (NBN, configs/cifar10_lt.py, built by the run plan) on synthetic
CIFAR-sized uint8 batches, on this machine's devices: the seconds
`nbn_jax.precise_bn.precise_batch_stats` takes for `--batches` training
batches (normalised as the train step normalises them), first call
(compiling) and once compiled, against one train step of the trainer
(`Runs.train_step`, forward and backward) on the same batch size,
and against one evaluation of `--eval-batches` batches of `--eval-batch`
images (`Runs.eval_step`; 20 x 512: the 10,000 CIFAR test images).
Rounds alternate the order, so drift on the machine hits all; medians.
"""

import argparse
import statistics
import time

import jax
import numpy as np

from bench.timing.cifar import config_for, machine, step_plan
from nbn_jax import precise_bn


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--train-steps', type=int, default=3)
  parser.add_argument('--eval-batch', type=int, default=512)
  parser.add_argument('--eval-batches', type=int, default=20)
  args = parser.parse_args()
  core = step_plan(config_for(batch=args.batch))
  cfg = core.step_config
  print(
      f'{machine()}, ResNet-32 NBN, batch {args.batch}, {args.batches} batches'
      ' of precise BN',
      flush=True,
  )
  rng = np.random.default_rng(0)
  sharding = core.topology.batch_sharding

  def put(shape, high, dtype):
    return jax.device_put(rng.integers(0, high, shape).astype(dtype), sharding)

  uint8 = [
      put((args.batch, 32, 32, 3), 256, np.uint8) for _ in range(args.batches)
  ]
  labels = put((args.batch,), 10, np.int32)
  eval_images = put((args.eval_batch, 32, 32, 3), 256, np.uint8)
  eval_labels = put((args.eval_batch,), 10, np.int32)
  eval_mask = jax.device_put(np.ones(args.eval_batch, bool), sharding)
  prepare = jax.jit(cfg.prepare)
  state = core.runs.init_state()
  train_step = core.runs.train_step()
  eval_step = core.runs.eval_step()

  def precise():
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    return precise_bn.precise_batch_stats(
        cfg.model, variables, (prepare(x) for x in uint8), train=True
    )

  def evaluation():
    return [
        eval_step(state, eval_images, eval_labels, eval_mask)
        for _ in range(args.eval_batches)
    ]

  first = {}
  for name, fn in (('precise BN', precise), ('evaluation', evaluation)):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first[name] = time.perf_counter() - start
  start = time.perf_counter()
  state, _ = jax.block_until_ready(train_step(state, uint8[0], labels, 0))
  first['train step'] = time.perf_counter() - start
  print(
      '  first calls (compiling): '
      + ', '.join(f'{k} {v:.1f} s' for k, v in first.items()),
      flush=True,
  )
  times = {'precise': [], 'step': [], 'eval': []}
  for r in range(args.rounds):
    order = list(times) if r % 2 == 0 else list(times)[::-1]
    for which in order:
      start = time.perf_counter()
      if which == 'precise':
        jax.block_until_ready(precise())
      elif which == 'eval':
        jax.block_until_ready(evaluation())
      else:
        for _ in range(args.train_steps):
          step = int(state.step)
          state, metrics = train_step(
              state, uint8[step % len(uint8)], labels, step
          )
        jax.block_until_ready((state, metrics))
      seconds = time.perf_counter() - start
      if which == 'step':
        seconds /= args.train_steps
      times[which].append(seconds)
  p, s, e = (statistics.median(times[k]) for k in ('precise', 'step', 'eval'))
  rounds = {k: ' '.join(f'{t:.2f}' for t in v) for k, v in times.items()}
  print(
      f'precise BN, {args.batches} batches: {p:.2f} s (rounds '
      f'{rounds["precise"]}), {1e3 * p / args.batches:.0f} ms a batch'
  )
  print(f'train step: {s:.2f} s (rounds {rounds["step"]})')
  print(
      f'evaluation, {args.eval_batches} x {args.eval_batch} images: {e:.2f} s'
      f' (rounds {rounds["eval"]})'
  )
  print(
      f'precise BN / train step: {p / s:.2f} ({p / s / args.batches:.3f} '
      f'per batch); precise BN / evaluation: {p / e:.2f}'
  )


if __name__ == '__main__':
  main()
