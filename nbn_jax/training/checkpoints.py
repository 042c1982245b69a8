"""Preemption-safe checkpoints with orbax.

Under the workdir, `checkpoints/` keeps the latest N periodic saves of all
runs together (the run resumes from the newest); in each run's folder
(the workdir itself for a single run), `checkpoints_best/` keeps that run's
state at its best validation accuracy, for people to use. Orbax writes each checkpoint to a
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
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp
from absl import logging

from nbn_jax.training.errors import CheckpointError
from nbn_jax.training.steps import furthest_step

UNREADABLE_SUFFIX = '.unreadable'


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
  """The latest-N checkpoints of a workdir and each run's best by validation."""

  def __init__(
      self, workdir: str, keep: int, run_dirs: Sequence[str] | None = None
  ):
    """Opens (without creating) the checkpoint folders.

    Nothing is written until the first `save`, so a run refused before
    training leaves no folder behind.

    Args:
      workdir: the run's workdir (`checkpoints/` is there).
      keep: periodic checkpoints kept.
      run_dirs: each run's folder (`runs.Runs.run_dir`), for its
        `checkpoints_best/`; default: one run, in the workdir.
    """
    self.latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=False),
    )
    self.best = [
        ocp.CheckpointManager(
            os.path.join(os.path.abspath(folder), 'checkpoints_best'),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=False),
        )
        for folder in run_dirs or [workdir]
    ]

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

  def save(self, state, record: dict[str, Any], wait: bool = False) -> float:
    """Saves `state` (every run's) at its furthest step.

    Args:
      state: the train state; its `step` names the checkpoint.
      record: JSON-serialisable record of the runs, saved with it.
      wait: block until the checkpoint is on disk (before exiting on a
        preemption).

    Returns:
      Seconds this call blocked: the whole write if `wait`, else the
      device-to-host copy before the write goes on in the background.
    """
    start = time.perf_counter()
    self._save(self.latest, furthest_step(state), state, record)
    if wait:
      self.wait()
    return time.perf_counter() - start

  def save_best(self, k: int, run_state, run_record: dict[str, Any]):
    """Saves run k's state (no run axis) as its best by validation."""
    self._save(self.best[k], furthest_step(run_state), run_state, run_record)

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

  def restore_best(self, like_state, k: int = 0):
    """(state, record) of run k's best-by-validation checkpoint, or None.

    `like_state`: one run's state (no run axis).

    Raises:
      CheckpointError: it exists but cannot be restored.
    """
    return self._restore_newest_intact(self.best[k], like_state)

  def wait(self) -> float:
    """Blocks until pending asynchronous saves are on disk; returns seconds."""
    start = time.perf_counter()
    for manager in (self.latest, *self.best):
      manager.wait_until_finished()
    return time.perf_counter() - start

  def close(self):
    for manager in (self.latest, *self.best):
      manager.close()


def latest_params(workdir: str) -> dict:
  """The parameters of a workdir's newest checkpoint, as NumPy arrays.

  Works whatever topology saved them (one host or many): shapes come from
  the checkpoint's metadata, and the arrays are restored onto this
  process's first device. Of K runs, the arrays have a leading run axis.
  """
  return latest_variables(workdir)['params']


def latest_variables(workdir: str) -> dict:
  """{'params', 'batch_stats'} of a workdir's newest checkpoint, as NumPy.

  What `model.apply` needs to evaluate it; see `latest_params`.

  Raises:
    CheckpointError: the workdir holds no checkpoint.
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  manager = ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(create=False),
      item_handlers={
          'state': ocp.StandardCheckpointHandler(),
          'record': ocp.JsonCheckpointHandler(),
      },
  )
  try:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(
          f'{directory} holds no checkpoint; train (or convert) into '
          f'{workdir} first.'
      )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step)['state'],
    )
    state = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
    ).state
  finally:
    manager.close()
  return jax.device_get(
      {'params': state['params'], 'batch_stats': state['batch_stats']}
  )
