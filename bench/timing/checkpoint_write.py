"""Seconds to write a ResNet-50 train-state checkpoint, as a preemption does.

    python -m bench.timing.checkpoint_write                 # in a temporary folder
    python -m bench.timing.checkpoint_write --dir=/gcs/or/nfs/path --rounds=5

The state is what the trainer saves: ResNet-50 (1000 classes) parameters,
BN running statistics and the SGD momentum buffer, float32 (filled with
random values, which compress as little as trained ones), with the run
record, through `nbn_jax.training.checkpoints.Checkpoints.save(wait=True)`
(orbax; the same call the loop makes when it stops on SIGTERM). Prints the
bytes written and, per round, the seconds from the call to the checkpoint
being complete on disk; the preemption grace period must exceed that.
"""

import argparse
import os
import statistics
import tempfile

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from nbn_jax import models
from nbn_jax.training.checkpoints import Checkpoints


class TrainState(train_state.TrainState):
  batch_stats: dict


def random_train_state(model, image_shape) -> TrainState:
  """`model`'s train state (SGD with momentum) with every value random.

  As after training: a fresh state's zero momentum and unit statistics
  would compress to less than half and flatter the write time.
  """
  variables = jax.jit(model.init, static_argnames='train')(
      jax.random.key(0), jnp.zeros((1, *image_shape)), train=False
  )
  state = TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      tx=optax.sgd(0.1, momentum=0.9),
  )
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(
      tree,
      [
          jax.random.normal(k, a.shape, a.dtype)
          if isinstance(a, jax.Array) and a.dtype == jnp.float32
          else a
          for k, a in zip(keys, leaves)
      ],
  )


def resnet50_state() -> TrainState:
  """A ResNet-50 (1000 classes, NBN) state whose every value is random."""
  return random_train_state(
      models.ResNet50(num_classes=1000, norm='nbn'), (64, 64, 3)
  )


def folder_bytes(path: str) -> int:
  return sum(
      os.path.getsize(os.path.join(root, name))
      for root, _, names in os.walk(path)
      for name in names
  )


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--dir', default=None, help='where to write')
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  state = resnet50_state()
  arrays = jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
  print(
      f'ResNet-50 state: {sum(a.size for a in arrays) / 1e6:.1f}M float32 '
      f'values; {jax.device_count()} {jax.default_backend()} device(s)'
  )
  with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
    checkpoints = Checkpoints(workdir, keep=args.rounds)
    seconds = []
    for step in range(1, args.rounds + 1):
      state = state.replace(step=jnp.int32(step))
      seconds.append(checkpoints.save(state, {'step': step}, wait=True))
      written = folder_bytes(os.path.join(workdir, 'checkpoints', str(step)))
      print(
          f'round {step}: {written / 1e6:.0f} MB on disk in {seconds[-1]:.2f} s'
      )
    checkpoints.close()
  print(f'median write: {statistics.median(seconds):.2f} s')


if __name__ == '__main__':
  main()
