"""Two ways to learn that a checkpoint write failed, and what each blocks.

    python -m bench.timing.checkpoint_confirm
    python -m bench.timing.checkpoint_confirm --gaps=0,1,4 --rounds=5 --dir=/nfs/path

A write that fails in the background (a full disk) must stop the run soon,
not at the next save. Two designs, each through
`nbn_jax.training.checkpoints.Checkpoints` as the trainer calls it:

* 'save waits': `save(wait=True)`: the step blocks until the checkpoint is
  written, confirmed and checksummed.
* 'next log learns': `save()` returns after the device-to-host copy; the
  write goes on while training continues (`--gaps` seconds of it, the host
  idle as it is while an accelerator computes), and `confirm()` at the next
  progress line waits for what is left of the write and checksums it.

Per train state (ResNet-32 for CIFAR, ResNet-50 for ImageNet; random values,
as after training) and gap, the median seconds the training thread was
blocked per checkpoint over `--rounds` rounds, the designs interleaved.
A gap of 0 is a progress line right after the save (log_every_steps=1).

Measured on the 2-core CPU of docs/benchmarks.md while other jobs ran (load
7 to 10), `--rounds=3 --gaps=0,0.5,2`, seconds:

    state          MB  gap s       save waits  next log learns
    ResNet-32       4    0.0            0.396            0.376
    ResNet-32       4    0.5            0.527            0.055
    ResNet-32       4    2.0            0.406            0.065
    ResNet-50     190    0.0            1.918            1.657
    ResNet-50     190    0.5            1.138            0.625
    ResNet-50     190    2.0            1.286            0.335

So the trainer confirms at the next progress line: a progress line comes
every 50 to 100 steps in the configs (0.3 to 8 s on the GPU of
docs/benchmarks.md), by which time the write is usually done.
"""

import argparse
import os
import statistics
import tempfile
import time

import jax.numpy as jnp

from bench.timing.checkpoint_write import (
    folder_bytes,
    random_train_state,
    resnet50_state,
)
from nbn_jax import models
from nbn_jax.training.checkpoints import Checkpoints


def save_waits(checkpoints, state, gap: float) -> float:
  del gap  # the write is over before training goes on
  return checkpoints.save(state, {}, wait=True)


def next_log_learns(checkpoints, state, gap: float) -> float:
  blocked = checkpoints.save(state, {})
  time.sleep(gap)  # training until the next progress line
  start = time.perf_counter()
  checkpoints.confirm()
  return blocked + time.perf_counter() - start


DESIGNS = {'save waits': save_waits, 'next log learns': next_log_learns}


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--dir', default=None, help='where to write')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument(
      '--gaps',
      default='0,0.5,2',
      help='seconds of training between a save and the next progress line',
  )
  args = parser.parse_args()
  gaps = [float(g) for g in args.gaps.split(',')]
  states = {
      'ResNet-32': random_train_state(models.ResNet32(10), (32, 32, 3)),
      'ResNet-50': resnet50_state(),
  }
  print(
      f'{"state":10} {"MB":>6} {"gap s":>6}'
      + ''.join(f'{name:>17}' for name in DESIGNS)
      + '  (seconds blocked per checkpoint, median)'
  )
  for label, state in states.items():
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
      checkpoints = Checkpoints(workdir, keep=2)
      step, megabytes = 0, 0.0
      for gap in gaps:
        blocked = {name: [] for name in DESIGNS}
        for _ in range(args.rounds):
          for name, design in DESIGNS.items():
            step += 1
            state = state.replace(step=jnp.int32(step))
            blocked[name].append(design(checkpoints, state, gap))
        megabytes = (
            folder_bytes(os.path.join(workdir, 'checkpoints', str(step))) / 1e6
        )
        print(
            f'{label:10} {megabytes:6.0f} {gap:6.1f}'
            + ''.join(
                f'{statistics.median(blocked[name]):17.3f}' for name in DESIGNS
            )
        )
      checkpoints.close()


if __name__ == '__main__':
  main()
