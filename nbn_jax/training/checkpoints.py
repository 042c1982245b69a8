"""Preemption-safe checkpoints with orbax.

Two managers under the workdir: `checkpoints/` keeps the latest N periodic
saves (the run resumes from the newest), `checkpoints_best/` keeps the one
with the best validation accuracy. Orbax writes each checkpoint to a
temporary folder and renames it when complete, so a run killed at any
moment leaves only whole checkpoints; a restarted run ignores the rest.
Each checkpoint holds the train state and a JSON record of the run so far
(best validation result, evaluation history).

A checkpoint that cannot be restored (a truncated or missing file, say) is
skipped: the run logs one line naming it and why, restores the next newest,
and moves the unreadable one aside to ``<step>.unreadable`` (never deleted),
so that the run can save that step again and orbax's keep-the-latest-N
clean-up counts only readable checkpoints. If none can be restored, nothing
is moved and `CheckpointError` says which folder to delete.
"""

import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from nbn_jax.training.steps import furthest_step

UNREADABLE_SUFFIX = '.unreadable'


class CheckpointError(RuntimeError):
  """No checkpoint in a workdir's checkpoint folder can be restored."""


def _reason(error: Exception) -> str:
  """The first line of an error, short enough for a log line."""
  lines = str(error).strip().splitlines() or ['']
  first = lines[0] if len(lines[0]) <= 200 else lines[0][:200] + '...'
  return f'{type(error).__name__}: {first}'


def _move_aside(manager, step: int) -> str:
  """Renames checkpoint `step` to ``<step>.unreadable`` (process 0)."""
  directory = os.fspath(manager.directory)
  source = os.path.join(directory, str(step))
  target = f'{source}{UNREADABLE_SUFFIX}'
  if jax.process_index() == 0:
    suffix = 1
    while os.path.exists(target):  # an earlier run set one aside too
      target = f'{source}{UNREADABLE_SUFFIX}{suffix}'
      suffix += 1
    os.rename(source, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f'checkpoint {step} moved aside')
  return target


class Checkpoints:
  """The latest-N and best-by-validation checkpoints of one workdir."""

  def __init__(self, workdir: str, keep: int):
    """Opens (without creating) the workdir's checkpoint folders.

    Nothing is written until the first `save`, so a run refused before
    training leaves no folder behind.
    """
    self.latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=False),
    )
    self.best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints_best'),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=False),
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

  def save(
      self,
      state,
      record: dict[str, Any],
      best: bool = False,
      wait: bool = False,
  ) -> float:
    """Saves `state` at its step (and as the best one if `best`).

    Args:
      state: the train state; its `step` names the checkpoint.
      record: JSON-serialisable run record saved with it.
      best: also save it as the best-by-validation checkpoint.
      wait: block until the checkpoint is on disk (before exiting on a
        preemption).

    Returns:
      Seconds this call blocked: the whole write if `wait`, else the
      device-to-host copy before the write goes on in the background.
    """
    start = time.perf_counter()
    step = furthest_step(state)
    self._save(self.latest, step, state, record)
    if best:
      self._save(self.best, step, state, record)
    if wait:
      self.wait()
    return time.perf_counter() - start

  def _restore_newest_intact(self, manager, like_state):
    """(state, record) of the newest checkpoint that restores, or None.

    Unreadable newer ones are logged and moved aside once an older one has
    restored; if none restores, nothing is moved and CheckpointError is
    raised.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    unreadable = []
    for step in steps:
      try:
        restored = self._restore(manager, step, like_state)
      except Exception as e:  # orbax/tensorstore raise many types
        logging.warning(
            'Checkpoint %s/%d cannot be restored (%s); trying the next newest.',
            manager.directory,
            step,
            _reason(e),
        )
        unreadable.append(step)
        continue
      for bad in unreadable:
        logging.warning(
            'Moved the unreadable checkpoint %s/%d aside to %s; it is not '
            'deleted.',
            manager.directory,
            bad,
            _move_aside(manager, bad),
        )
      if unreadable:
        manager.reload()
      return restored
    if steps:
      raise CheckpointError(
          f'none of the {len(steps)} checkpoints in {manager.directory} '
          f'(steps {", ".join(map(str, steps))}) can be restored (see the '
          'lines above for why). To start this run afresh, delete that '
          'folder; to keep the workdir, restore a backup of it.'
      )
    return None

  def restore_latest(self, like_state):
    """(state, record) of the newest intact checkpoint, or None if none.

    `like_state` gives the structure, shapes and shardings to restore into.

    Raises:
      CheckpointError: there are checkpoints but none can be restored.
    """
    return self._restore_newest_intact(self.latest, like_state)

  def restore_best(self, like_state):
    """(state, record) of the best-by-validation checkpoint, or None.

    Raises:
      CheckpointError: it exists but cannot be restored.
    """
    return self._restore_newest_intact(self.best, like_state)

  def wait(self) -> float:
    """Blocks until pending asynchronous saves are on disk; returns seconds."""
    start = time.perf_counter()
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    return time.perf_counter() - start

  def close(self):
    self.latest.close()
    self.best.close()


def latest_params(workdir: str) -> dict:
  """The parameters of a workdir's newest checkpoint, as NumPy arrays.

  Works whatever topology saved them (one host or many): shapes come from
  the checkpoint's metadata, and the arrays are restored onto this
  process's first device.
  """
  return latest_variables(workdir)['params']


def latest_variables(workdir: str) -> dict:
  """{'params', 'batch_stats'} of a workdir's newest checkpoint, as NumPy.

  What `model.apply` needs to evaluate it; see `latest_params`.
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  step = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False)
  ).latest_step()
  if step is None:
    raise FileNotFoundError(f'{directory} holds no checkpoint.')
  path = os.path.join(directory, str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(path).item_metadata,
  )
  state = checkpointer.restore(path, target)
  return jax.device_get(
      {'params': state['params'], 'batch_stats': state['batch_stats']}
  )
