"""Preemption-safe checkpoints with orbax.

Two managers under the workdir: `checkpoints/` keeps the latest N periodic
saves (the run resumes from the newest), `checkpoints_best/` keeps the one
with the best validation accuracy. Orbax writes each checkpoint to a
temporary folder and renames it when complete, so a run killed at any
moment leaves only whole checkpoints; a restarted run ignores the rest.
Each checkpoint holds the train state and a JSON record of the run so far
(best validation result, evaluation history).
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """The latest-N and best-by-validation checkpoints of one workdir."""

  def __init__(self, workdir: str, keep: int):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options
    )
    self.best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints_best'),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
    )

  @staticmethod
  def _save(manager, step: int, state, record: dict[str, Any]):
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
        ),
    )

  @staticmethod
  def _restore(manager, step: int, like_state):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            record=ocp.args.JsonRestore(),
        ),
    )
    return restored.state, restored.record

  def save(self, state, record: dict[str, Any], best: bool = False):
    """Saves `state` at its step (and as the best one if `best`)."""
    step = int(jax.device_get(state.step))
    self._save(self.latest, step, state, record)
    if best:
      self._save(self.best, step, state, record)

  def restore_latest(self, like_state):
    """(state, record) of the newest checkpoint, or None if there is none.

    `like_state` gives the structure, shapes and shardings to restore into.
    """
    step = self.latest.latest_step()
    if step is None:
      return None
    return self._restore(self.latest, step, like_state)

  def restore_best(self, like_state):
    """(state, record) of the best-by-validation checkpoint, or None."""
    step = self.best.latest_step()
    if step is None:
      return None
    return self._restore(self.best, step, like_state)

  def wait(self):
    """Blocks until pending asynchronous saves are on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def latest_params(workdir: str) -> dict:
  """The parameters of a workdir's newest checkpoint, as NumPy arrays.

  Works whatever topology saved them (one host or many): shapes come from
  the checkpoint's metadata, and the arrays are restored onto this
  process's first device.
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  step = ocp.CheckpointManager(directory).latest_step()
  if step is None:
    raise FileNotFoundError(f'{directory} holds no checkpoint.')
  path = os.path.join(directory, str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(path).item_metadata,
  )
  return jax.device_get(checkpointer.restore(path, target)['params'])
