"""Preemption-safe checkpoints with orbax, checked when written and read.

Under the workdir (a local folder or a gs:// URL), `checkpoints/` keeps the
latest N periodic saves of all runs together (the run resumes from the
newest); in each run's folder (the workdir itself for a single run),
`checkpoints_best/` keeps that run's state at its best validation accuracy,
for people to use. Orbax writes a
local checkpoint to a temporary folder and renames it when complete, and
one on a bucket in place with a commit marker written last, so a run
killed at any moment leaves only whole checkpoints; a restarted run removes
the rest. Every process writes its own shards of the arrays; process 0 the
rest. Each checkpoint holds the train state and a JSON record of the
run so far (best validation result, evaluation history).

Writes go on in the background while training continues. `confirm` (the
loop calls it at every progress line, and each save first confirms the
write before it) waits for the pending writes and, if one failed (a full
disk, say), raises `CheckpointError` on every host at once: one line naming
the folder and the cause. The failed write never replaces a checkpoint, so
the last good one stays as it was.

Once a write is confirmed, the checkpoint gets a list of its files with
their sizes and CRC32C checksums (`CHECKSUMS_FILE`, in its folder; on a
bucket the store's own per-object CRC32C, so nothing is downloaded). A
restore first checks every listed file: one that is missing, cut short or
changed makes the checkpoint unreadable, whatever the file (orbax itself
never reads some of them, and reads a flipped bit of array data back as a
wrong value). A checkpoint without the list (written by an older version,
or by a run killed before its next progress line) is restored as orbax
reads it.

A checkpoint that cannot be restored is skipped: the run logs one sentence
naming it and why, restores the next newest, and sets the unreadable one
aside as ``<step>.unreadable`` (never deleted; `storage.set_aside`), so
that the run can save that step again and orbax's keep-the-latest-N
clean-up counts only readable checkpoints. If none can be restored,
nothing is moved and `CheckpointError` says which folder to delete.
Checkpoints of another network or run layout than the one asked for (the
config's model changed) are refused at once, naming the first differing
entry.
"""

import contextlib
import errno as errno_lib
import json
import os
import re
import time
from typing import Any, Callable, Sequence

import jax
import orbax.checkpoint as ocp
from absl import logging

from nbn_jax.training import storage
from nbn_jax.training.errors import CheckpointError
from nbn_jax.training.preemption import any_host
from nbn_jax.training.steps import furthest_step

UNREADABLE_SUFFIX = '.unreadable'
CHECKSUMS_FILE = 'nbn_jax_checksums.json'
# 2: sizes and CRC32C. Lists of format 1 (zlib's CRC-32, before checkpoints
# could be on a bucket) are not checked: such a checkpoint is restored as
# orbax reads it, as one without a list.
CHECKSUMS_FORMAT = 2


# --- Checksums ------------------------------------------------------------------


def write_checksums(folder: str):
  """Lists each file of the checkpoint in `folder` with its size and CRC32C."""
  files = {
      relative: {'bytes': written.size, 'crc32c': written.crc32c}
      for relative, written in storage.checksums(
          folder, skip=CHECKSUMS_FILE
      ).items()
  }
  storage.write_text(
      storage.join(folder, CHECKSUMS_FILE),
      json.dumps(
          {'format': CHECKSUMS_FORMAT, 'files': files}, indent=1, sort_keys=True
      ),
  )


def _written_checksums(folder: str) -> dict[str, storage.FileSum] | None:
  """The checkpoint's list of what was written, or None if it has none.

  Raises:
    ValueError: the list cannot be read.
  """
  try:
    listing = json.loads(
        storage.read_text(storage.join(folder, CHECKSUMS_FILE))
    )
  except FileNotFoundError:
    return None
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(e) from None
  if not isinstance(listing, dict) or listing.get('format') != CHECKSUMS_FORMAT:
    if isinstance(listing, dict) and listing.get('format') == 1:
      return None
    raise ValueError(f'unknown format {listing!r:.40}')
  try:
    return {
        relative: storage.FileSum(int(sums['bytes']), int(sums['crc32c']))
        for relative, sums in listing['files'].items()
    }
  except (KeyError, TypeError, AttributeError) as e:
    raise ValueError(e) from None


def checksum_problem(folder: str) -> str | None:
  """Why the checkpoint in `folder` differs from what was written, or None.

  None also when it has no checksum list (nothing to check against).
  """
  try:
    written = _written_checksums(folder)
  except ValueError:
    return f'its file list {CHECKSUMS_FILE} cannot be read'
  if written is None:
    return None
  present = storage.checksums(folder, skip=CHECKSUMS_FILE)
  for relative, sums in written.items():
    now = present.get(relative)
    if now is None:
      return f'{relative} is missing'
    if now.size != sums.size:
      return f'{relative} has {now.size} bytes, {sums.size} when it was written'
    if now.crc32c != sums.crc32c:
      return f'{relative} has changed since it was written (its CRC32C differs)'
  return None


# --- Readable reasons -----------------------------------------------------------


def _causes(error: BaseException) -> list[BaseException]:
  """`error` and the exceptions it was raised from, outermost first."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


_STATUS = re.compile(r'^([A-Z][A-Z_]+): ')
_TENSORSTORE = re.compile(r'^([A-Z][A-Z_]+: )?Error (opening|reading|writing) ')
_SPEC = re.compile(
    r' \[(tensorstore_spec|source_location|os_error_code)\S*=.*$', re.S
)
_LOCAL_FILE = re.compile(r'local file "([^"]+)"')


def _relative(path: str, folder: str) -> str:
  """`path` relative to `folder` if it lies inside it, else as it is."""
  path, folder = path.rstrip('/'), folder.rstrip('/')
  if folder and path.startswith(f'{folder}/'):
    return path[len(folder) + 1 :]
  return path


def _tensorstore_reason(message: str, folder: str) -> str:
  """'[CODE: ]Error ...: Error ...: cause[; detail] [spec]' -> 'cause (code,
  in file)'."""
  status = _STATUS.match(message)
  files = _LOCAL_FILE.findall(message)
  cause = _SPEC.sub('', message).rsplit(': ', 1)[-1].split(';')[0].strip()
  cause = cause.rstrip('.')
  details = [status.group(1).lower().replace('_', ' ')] if status else []
  if files:
    details.append(f'in {_relative(files[-1], folder)}')
  where = f' ({", ".join(details)})' if details else ''
  return f'{cause[:1].lower()}{cause[1:]}{where}'


def _error_text(error: BaseException) -> str:
  lines = str(error).strip().splitlines() or ['']
  first = lines[0] if len(lines[0]) <= 200 else lines[0][:200] + '...'
  return f'{type(error).__name__}: {first}'


def _restore_reason(error: BaseException, folder: str) -> str:
  """Why orbax could not restore the checkpoint in `folder`, in words."""
  for cause in reversed(_causes(error)):  # the innermost says most
    message = str(cause)
    if isinstance(cause, ValueError) and _TENSORSTORE.match(message):
      return (
          'its array data cannot be read:'
          f' {_tensorstore_reason(message, folder)}'
      )
    if isinstance(cause, FileNotFoundError):
      missing = cause.filename or next(
          iter(re.findall(r'File (\S+) not found', message)), None
      )
      if missing:
        return f'{_relative(missing, folder)} is missing'
    if isinstance(cause, UnicodeDecodeError):
      return 'one of its JSON files is not text (UTF-8)'
    if isinstance(cause, json.JSONDecodeError):
      return (
          f'one of its JSON files is damaged ({cause.msg} at line '
          f'{cause.lineno}, column {cause.colno})'
      )
    if 'pytree structure error' in message:
      return (
          'its tree metadata (state/_METADATA) is missing or does not match '
          'its arrays'
      )
  return _error_text(error)


def _write_cause(error: BaseException) -> str:
  """The cause of a failed write, as the operating system says it."""
  for cause in _causes(error):
    number = getattr(cause, 'errno', None)
    if not isinstance(number, int):
      found = re.search(r"os_error_code='?(\d+)", str(cause))
      number = int(found.group(1)) if found else None
    if number in errno_lib.errorcode:
      text = os.strerror(number)
      return text[:1].lower() + text[1:]
  for cause in reversed(_causes(error)):
    if isinstance(cause, ValueError) and _TENSORSTORE.match(str(cause)):
      return _tensorstore_reason(str(cause), '')
  return _error_text(error)


# --- What a checkpoint holds ----------------------------------------------------


def _key_name(key) -> str:
  for field in ('key', 'name', 'idx'):
    if hasattr(key, field):
      return str(getattr(key, field))
  return str(key)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """{'/'-joined path: shape} of a state's (or its metadata's) arrays."""
  return {
      '/'.join(_key_name(k) for k in path): tuple(getattr(leaf, 'shape', ()))
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def structure_difference(saved, like_state) -> str | None:
  """The first entry where a checkpoint's arrays differ from `like_state`'s.

  Args:
    saved: the checkpoint's tree metadata (orbax `item_metadata`), or its
      restored arrays.
    like_state: the state the run would restore into.

  Returns:
    None if the paths and shapes agree, else which entry differs and how.
  """
  ours, theirs = _shapes(like_state), _shapes(saved)
  differing = sorted(  # parameters first: they name the network's parts
      (k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)),
      key=lambda k: (not k.startswith('params/'), k),
  )
  if not differing:
    return None
  first = differing[0]
  if first not in ours:
    what = f'{first} is in the checkpoints but not in the run'
  elif first not in theirs:
    what = f'{first} is in the run but not in the checkpoints'
  else:
    what = f'{first} has shape {theirs[first]} there and {ours[first]} here'
  others = len(differing) - 1
  if others:
    what += (
        f' ({others} more'
        f' {"entry differs" if others == 1 else "entries differ"})'
    )
  return what


def _move_aside(manager, step: int) -> str:
  """Sets checkpoint `step` aside as ``<step>.unreadable`` (process 0)."""
  source = storage.join(os.fspath(manager.directory), str(step))
  target = f'{source}{UNREADABLE_SUFFIX}'
  if jax.process_index() == 0:
    suffix = 1
    while storage.exists(target):  # an earlier run set one aside too
      target = f'{source}{UNREADABLE_SUFFIX}{suffix}'
      suffix += 1
    storage.set_aside(source, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f'checkpoint {step} moved aside')
  return target


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  """What each checkpoint holds: the train state and the record (JSON)."""
  return {
      'state': ocp.StandardCheckpointHandler(),
      'record': ocp.JsonCheckpointHandler(),
  }


def _manager(folder: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      folder,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep,
          create=False,
          # A write cut short (killed, or the disk full) leaves a temporary
          # folder; the next run removes it.
          cleanup_tmp_directories=True,
      ),
      item_handlers=_item_handlers(),
  )


class Checkpoints:
  """The latest-N checkpoints of a workdir and each run's best by validation."""

  def __init__(
      self,
      workdir: str,
      keep: int,
      run_dirs: Sequence[str] | None = None,
      agree: Callable[[bool], bool] = any_host,
  ):
    """Opens (without creating) the checkpoint folders.

    Nothing is written until the first `save`, so a run refused before
    training leaves no folder behind.

    Args:
      workdir: the run's workdir (`checkpoints/` is there).
      keep: periodic checkpoints kept.
      run_dirs: each run's folder (`runs.Runs.run_dir`), for its
        `checkpoints_best/`; default: one run, in the workdir.
      agree: `agree(local_flag) -> global_flag`, True on every host if True
        on any (`preemption.any_host`): all hosts stop on a failed write.
    """
    self.latest = _manager(
        storage.join(storage.resolve(workdir), 'checkpoints'), keep
    )
    self.best = [
        _manager(storage.join(storage.resolve(folder), 'checkpoints_best'), 1)
        for folder in run_dirs or [workdir]
    ]
    self._agree = agree
    self._pending = {}  # manager -> (step, what) of its unconfirmed write
    self._failed = set()  # managers whose write failed (orbax keeps raising)

  @property
  def _managers(self):
    return (self.latest, *self.best)

  def _save(self, manager, step: int, state, record: dict[str, Any], what):
    self._confirm([manager], agree=True)  # its write before (orbax waits)
    problem = None
    try:
      manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              record=ocp.args.JsonSave(record),
          ),
      )
      self._pending[manager] = (step, what)
    except Exception as e:  # orbax/tensorstore raise many types
      problem = self._failure(manager, step, what, e)
    self._raise_if_any_failed(problem)

  def _failure(self, manager, step: int, what: str, error: Exception) -> str:
    self._failed.add(manager)
    last = manager.latest_step()
    kept = (
        f'the last good one (step {last}) is kept'
        if last is not None and last != step
        else 'no earlier one was written'
    )
    return (
        f'writing {what} at step {step} to {manager.directory} failed: '
        f'{_write_cause(error)}. {kept[:1].upper()}{kept[1:]}; fix the cause '
        '(free space, say) and rerun the same command to resume.'
    )

  def _raise_if_any_failed(self, problem: str | None, agree: bool = True):
    """CheckpointError if a write failed here (or, if `agree`, on any host:
    then every host raises it)."""
    failed = self._agree(problem is not None) if agree else problem is not None
    if failed:
      raise CheckpointError(
          problem or 'a checkpoint write failed on another host (see its log).'
      )

  def confirm(self, agree: bool = True):
    """Waits for the pending writes; checksums them once they are complete.

    Args:
      agree: whether all hosts call this at the same step, and so can all
        stop on a failure on any of them (a collective); else only this
        host's failures are raised.

    Raises:
      CheckpointError: a write failed; one line naming the folder and the
        cause. The checkpoints before it are untouched.
    """
    self._confirm(self._managers, agree)

  def _confirm(self, managers, agree: bool):
    problem = None
    for manager in managers:
      if manager not in self._pending:
        continue
      step, what = self._pending.pop(manager)
      try:
        manager.wait_until_finished()
        if jax.process_index() == 0:
          write_checksums(storage.join(os.fspath(manager.directory), str(step)))
      except Exception as e:  # orbax/tensorstore raise many types
        problem = problem or self._failure(manager, step, what, e)
    self._raise_if_any_failed(problem, agree)

  def save(self, state, record: dict[str, Any], wait: bool = False) -> float:
    """Saves `state` (every run's) at its furthest step.

    Args:
      state: the train state; its `step` names the checkpoint.
      record: JSON-serialisable record of the runs, saved with it.
      wait: block until the checkpoint is on disk and confirmed (before
        exiting on a preemption).

    Returns:
      Seconds this call blocked: the whole write if `wait`, else the
      device-to-host copy before the write goes on in the background.

    Raises:
      CheckpointError: this write or the one before failed.
    """
    start = time.perf_counter()
    self._save(
        self.latest, furthest_step(state), state, record, 'the checkpoint'
    )
    if wait:
      self.confirm()
    return time.perf_counter() - start

  def save_best(self, k: int, run_state, run_record: dict[str, Any]):
    """Saves run k's state (no run axis) as its best by validation."""
    what = (
        f"run {k}'s best checkpoint"
        if len(self.best) > 1
        else 'the best checkpoint'
    )
    self._save(
        self.best[k], furthest_step(run_state), run_state, run_record, what
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

  @staticmethod
  def _refuse_another_network(manager, step: int, like_state):
    """CheckpointError if checkpoint `step` holds other arrays than the run.

    Checkpoints whose tree metadata cannot be read are left to the restore.
    """
    try:
      saved = manager.item_metadata(step)['state']
    except Exception:  # unreadable: the restore says why
      return
    if saved is None:
      return
    difference = structure_difference(saved, like_state)
    if difference is not None:
      raise CheckpointError(
          f'the checkpoints in {manager.directory} hold another network or '
          f'run layout than this config: {difference}. A change of the '
          'network (model, norm, NBN placement, classes, num_runs) cannot '
          'continue them, even with --allow_config_change; use a new '
          '--workdir, or the config this workdir was started with.'
      )

  def _restore_newest_intact(self, manager, like_state):
    """(state, record) of the newest checkpoint that restores, or None.

    Unreadable newer ones are logged and moved aside once an older one has
    restored; if none restores, nothing is moved and CheckpointError is
    raised.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    unreadable = []
    for step in steps:
      folder = storage.join(os.fspath(manager.directory), str(step))
      problem = checksum_problem(folder)
      if problem is None:
        self._refuse_another_network(manager, step, like_state)
        try:
          restored = self._restore(manager, step, like_state)
        except Exception as e:  # orbax/tensorstore raise many types
          problem = _restore_reason(e, folder)
      if problem is not None:
        logging.warning(
            'Checkpoint %s cannot be restored: %s; trying the next newest.',
            folder,
            problem,
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
      CheckpointError: there are checkpoints but none can be restored, or
        they hold another network.
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
    """Blocks until pending saves are on disk and confirmed; returns seconds.

    Not a collective: safe on a host that stops alone (an error).

    Raises:
      CheckpointError: a write of this host failed.
    """
    start = time.perf_counter()
    self.confirm(agree=False)
    return time.perf_counter() - start

  def __enter__(self) -> 'Checkpoints':
    return self

  def __exit__(self, *exc_info):
    """Closes the folders (`close`) however the block ends."""
    self.close()

  def close(self):
    """Confirms pending writes on this host (`wait`) and closes the folders.

    A folder whose write failed is only let go.

    Raises:
      CheckpointError: a pending write of this host failed.
    """
    try:
      self.wait()
    finally:
      for manager in self._managers:
        if manager in self._failed:
          # orbax raises the failed write's error again on every wait.
          with contextlib.suppress(Exception):
            manager.close()
        else:
          manager.close()


def latest_step(workdir: str) -> int | None:
  """The step of a workdir's newest checkpoint, or None if it has none."""
  manager = _manager(storage.join(storage.resolve(workdir), 'checkpoints'), 1)
  try:
    return manager.latest_step()
  finally:
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
    CheckpointError: the workdir holds no checkpoint, or its newest one
      differs from what was written (`checksum_problem`).
  """
  directory = storage.join(storage.resolve(workdir), 'checkpoints')
  manager = ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(create=False),
      item_handlers=_item_handlers(),
  )
  try:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(
          f'{directory} holds no checkpoint; train (or convert) into '
          f'{workdir} first.'
      )
    problem = checksum_problem(storage.join(directory, str(step)))
    if problem is not None:
      raise CheckpointError(
          f'the newest checkpoint {directory}/{step} cannot be read: '
          f'{problem}. Resuming the run in {workdir} sets it aside and uses '
          'the one before.'
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
