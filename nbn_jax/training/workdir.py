"""A workdir belongs to one run: the config it was started with, and a lock.

A workdir is a local folder or a Cloud Storage URL (``gs://bucket/run``);
every file in it is read and written through `storage`. `claim(workdir,
config)` is entered before anything is written to the workdir. It refuses,
with a `WorkdirError` of one line:

- a workdir of a scheme other than gs://, a local one that is a file or
  cannot be written, a bucket that cannot be reached or read;
- a second run while another one holds the lock (``lock.<process>``, one
  per process of the run, with host, pid and start time; a lock left by a
  dead process on this host, or not refreshed for `STALE_SECONDS`, is
  replaced);
- a config that differs from the one recorded in ``config.json`` in a field
  that can change the results (everything but `NEUTRAL_FIELDS`), unless the
  change is allowed on purpose.

The lock of a local workdir is a file created with ``O_EXCL`` and refreshed
by touching it; on a bucket it is an object created with the generation
precondition 0 (only if absent), refreshed and deleted only at the
generation this run wrote, so two runs can never both hold it.

The run records its config with `record_config` just before it writes
anything else, so a refused run leaves nothing behind: on exit, `claim`
removes its lock and the local folders it created if they are still empty.
"""

import contextlib
import json
import os
import socket
import threading
import time
from typing import Any, Iterator, Mapping

from absl import logging

from nbn_jax.training import storage
from nbn_jax.training.errors import WorkdirError

CONFIG_FILE = 'config.json'
HEARTBEAT_SECONDS = 60.0  # how often a live run refreshes its lock
STALE_SECONDS = 300.0  # a lock not refreshed this long is a dead run's

# Fields that cannot change what the run computes or reports: where the
# data and caches are read from, how often progress is logged, how steps
# are grouped into dispatches, the eval batch (evaluation is exact and
# padded), how often checkpoints are written and how many are kept,
# whether the run only evaluates, and where this invocation stops training
# (a later run continues it alike). All others (eval_every_epochs included:
# it decides which steps compete for the best-on-val checkpoint) must match.
NEUTRAL_FIELDS = frozenset({
    'data_dir',
    'image_root',
    'train_list',
    'val_list',
    'test_list',
    'cache_dir',
    'log_every_steps',
    'steps_per_dispatch',
    'eval_batch_size',
    'checkpoint_every_epochs',
    'keep_checkpoints',
    'eval_only',
    'num_train_steps',
})
# What an evaluation (eval_only) may set besides: which copy of the dataset
# it reads (CIFAR-10 from TFDS or its JPEG copy, whose pixels differ a
# little: the results record the copy, config.data_source). An evaluation
# never replaces config.json: the workdir keeps the config it trained with.
EVALUATION_FIELDS = NEUTRAL_FIELDS | {'data_source'}


def _as_json(value: Any) -> Any:
  """A config value as JSON reads it back (tuples become lists)."""
  return json.loads(json.dumps(value))


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat |= _flatten(value, f'{prefix}{key}.')
    else:
      flat[f'{prefix}{key}'] = _as_json(value)
  return flat


def changed_fields(
    recorded: Mapping[str, Any],
    config: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, tuple[Any, Any]]:
  """{field: (recorded value, new value)} of result-changing differences.

  A field present on one side only counts as changed (value None on the
  other side), unless it is new since the run was recorded and has its
  value in `defaults`: a config recorded before a field existed ran as its
  default says (new fields default to the behaviour before them). For an
  evaluation (`config`'s eval_only) the `EVALUATION_FIELDS` may differ.
  """
  old, new = _flatten(recorded), _flatten(config)
  default = _flatten(defaults or {})
  free = EVALUATION_FIELDS if config.get('eval_only') else NEUTRAL_FIELDS
  return {
      field: (old.get(field), new.get(field))
      for field in sorted(old.keys() | new.keys())
      if field.split('.')[0] not in free
      and old.get(field) != new.get(field)
      and not (
          field not in old
          and field in default
          and new.get(field) == default[field]
      )
  }


def recorded_config(workdir: str) -> dict[str, Any] | None:
  """The config recorded in `workdir`, or None if there is none."""
  path = storage.join(workdir, CONFIG_FILE)
  try:
    return json.loads(storage.read_text(path))
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise WorkdirError(
        f'{path} cannot be read ({e}); it records the config this workdir '
        'was started with. Restore it, or use a new --workdir.'
    ) from None


def check_unchanged_config(
    workdir: str,
    config: Mapping[str, Any],
    allow_changes: bool = False,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, tuple[Any, Any]]:
  """Refuses a config that differs from the recorded one in a result field.

  `defaults`: every field's default (`changed_fields`).

  Returns:
    The allowed changes (empty unless `allow_changes`).

  Raises:
    WorkdirError: naming every differing field, old and new value.
  """
  recorded = recorded_config(workdir)
  if recorded is None:
    return {}
  changes = changed_fields(recorded, config, defaults)
  if changes and not allow_changes:
    listed = ', '.join(
        f'{field} ({old!r} -> {new!r})' for field, (old, new) in changes.items()
    )
    if config.get('eval_only'):
      raise WorkdirError(
          f'{workdir} was trained with another config; these fields differ: '
          f'{listed}. To evaluate it as it was trained, leave out --config: '
          f'python train.py --workdir={workdir} --config.eval_only=True (with '
          '--config.data_dir=... and the like where its data moved).'
      )
    raise WorkdirError(
        f'{workdir} was started with another config; these fields differ: '
        f'{listed}. Use a new --workdir, or pass --allow_config_change to '
        'continue this run with the new values.'
    )
  if changes:
    logging.warning(
        'Continuing %s with changed fields (allowed): %s',
        workdir,
        ', '.join(changes),
    )
  return changes


def record_config(workdir: str, config: Mapping[str, Any]):
  """Writes `config` to ``config.json`` whole (process 0 only)."""
  storage.write_text(
      storage.join(workdir, CONFIG_FILE),
      json.dumps(_as_json(dict(config)), indent=2, sort_keys=True),
  )


def refuse_a_run(workdir: str, why: str):
  """WorkdirError if `workdir` holds a run: a recorded config or checkpoints.

  `why`: what the caller needs instead, for the message.
  """
  held = [
      name
      for name, present in (
          (CONFIG_FILE, storage.exists(storage.join(workdir, CONFIG_FILE))),
          (
              'checkpoints',
              bool(storage.listdir(storage.join(workdir, 'checkpoints'))),
          ),
      )
      if present
  ]
  if held:
    raise WorkdirError(
        f'{workdir} holds a run already ({" and ".join(held)}); {why}.'
    )


# --- The lock -----------------------------------------------------------------


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), or None."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start_time: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    pass
  return start_time is None or _start_time(pid) in (None, start_time)


def _stale(holder: dict[str, Any], age: float) -> bool:
  if holder.get('host') == socket.gethostname():
    return not _alive(int(holder.get('pid', -1)), holder.get('start_time'))
  return age > STALE_SECONDS


def _holder() -> dict[str, Any]:
  """Who holds a lock: this host and process."""
  pid = os.getpid()
  return {
      'host': socket.gethostname(),
      'pid': pid,
      'start_time': _start_time(pid),
  }


def _parsed_holder(data: bytes) -> dict[str, Any]:
  try:
    holder = json.loads(data)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


class _Lock:
  """``lock.<process>`` in a workdir, refreshed by a daemon thread.

  `acquire` creates it only if absent; one that exists is replaced only if
  stale (`_stale`). Subclasses say how, for a local file or an object.
  """

  def __init__(self, workdir: str, process_index: int):
    self.path = storage.join(workdir, f'lock.{process_index}')
    self._data = json.dumps(_holder()).encode()
    self._stop = threading.Event()
    self._heartbeat = threading.Thread(target=self._beat, daemon=True)

  def acquire(self):
    for _ in range(3):  # a stale lock is removed, then taken
      if self._create():
        try:
          self._heartbeat.start()
        except BaseException:  # a signal while it starts: no lock is left
          self._remove()
          raise
        return
      found = self._read()
      if found is None:
        continue  # released meanwhile
      holder, age, version = found
      if not _stale(holder, age):
        raise WorkdirError(
            f'{os.path.dirname(self.path)} is in use by pid '
            f'{holder.get("pid")} on host {holder.get("host")} (lock '
            f'{self.path}, refreshed {age:.0f} s ago). Wait for that run to '
            'end, or use another --workdir; if that run is gone, delete the '
            'lock file.'
        )
      if self._remove_stale(version):
        logging.warning(
            'Replaced the stale lock %s of pid %s on %s.',
            self.path,
            holder.get('pid'),
            holder.get('host'),
        )
    raise WorkdirError(f'could not take the lock {self.path}; try again.')

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_SECONDS):
      self._refresh()

  def release(self):
    self._stop.set()
    if self._heartbeat.is_alive():
      self._heartbeat.join()
    self._remove()

  def _create(self) -> bool:
    """Creates the lock if absent; whether it did."""
    raise NotImplementedError

  def _read(self) -> tuple[dict[str, Any], float, Any] | None:
    """(holder, seconds since refreshed, version) of the lock, or None."""
    raise NotImplementedError

  def _remove_stale(self, version) -> bool:
    """Removes the lock if still at `version`; whether it did."""
    raise NotImplementedError

  def _refresh(self):
    raise NotImplementedError

  def _remove(self):
    raise NotImplementedError


class _FileLock(_Lock):
  """A local file created with O_EXCL; refreshed by touching it."""

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      with os.fdopen(fd, 'wb') as f:
        f.write(self._data)
    except BaseException:  # a signal, say: no half-taken lock is left
      with contextlib.suppress(OSError):
        os.remove(self.path)
      raise
    return True

  def _read(self):
    try:
      with open(self.path, 'rb') as f:
        data = f.read()
      age = time.time() - os.path.getmtime(self.path)
    except FileNotFoundError:
      return None
    return _parsed_holder(data), age, None

  def _remove_stale(self, version) -> bool:
    del version  # the rename below lets one run only take it
    aside = f'{self.path}.stale.{os.getpid()}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False  # another run replaced it first; try again
    os.remove(aside)
    return True

  def _refresh(self):
    with contextlib.suppress(OSError):
      os.utime(self.path)

  def _remove(self):
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.path)


class _ObjectLock(_Lock):
  """An object created only if absent (generation precondition 0),
  rewritten and deleted only at the generation this run wrote last."""

  _generation: int | None = None

  def _create(self) -> bool:
    self._generation = storage.create_exclusive(self.path, self._data)
    return self._generation is not None

  def _read(self):
    held = storage.read_held(self.path)
    if held is None:
      return None
    return _parsed_holder(held.data), held.age, held.generation

  def _remove_stale(self, version) -> bool:
    return storage.delete_if(self.path, version)

  def _refresh(self):
    try:
      generation = storage.replace_if(self.path, self._data, self._generation)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Could not refresh the lock %s: %s', self.path, e)
      return  # a network blip: the next beat tries again
    if generation is None:
      logging.warning(
          'The lock %s was replaced by another run (it was not refreshed for '
          '%.0f s); this run goes on without it.',
          self.path,
          STALE_SECONDS,
      )
      self._stop.set()
      return
    self._generation = generation

  def _remove(self):
    if self._generation is not None:
      storage.delete_if(self.path, self._generation)


def in_use_by(workdir: str) -> str | None:
  """'pid P on host H' of a run holding a live lock in `workdir`, or None.

  A lock that `claim` would replace as stale counts as none.
  """
  lock_class = _ObjectLock if storage.is_remote(workdir) else _FileLock
  for name in storage.listdir(workdir):
    index = name.removeprefix('lock.')
    if not (name.startswith('lock.') and index.isdigit()):
      continue
    found = lock_class(workdir, int(index))._read()
    if found is not None and not _stale(found[0], found[1]):
      holder = found[0]
      return f'pid {holder.get("pid")} on host {holder.get("host")}'
  return None


def _create_folders(workdir: str) -> list[str]:
  """Makes a local `workdir` and missing parents; returns those made,
  deepest first."""
  made = []
  path = workdir
  while not os.path.exists(path):
    made.append(path)
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise WorkdirError(f'--workdir={workdir}: {path} is a file, not a folder.')
  created = []  # deepest last
  try:
    for folder in reversed(made):
      try:
        os.mkdir(folder)
        created.append(folder)
      except FileExistsError:
        if not os.path.isdir(folder):
          raise WorkdirError(
              f'--workdir={workdir}: {folder} is a file, not a folder.'
          ) from None
        # Another host of this run made it first.
      except OSError as e:
        raise WorkdirError(
            f'--workdir={workdir} cannot be created ({e.strerror}: {folder}).'
        ) from None
  except BaseException:  # an error or a signal: none of them is left
    for folder in reversed(created):
      with contextlib.suppress(OSError):
        os.rmdir(folder)
    raise
  return created[::-1]


@contextlib.contextmanager
def claim(
    workdir: str,
    config: Mapping[str, Any],
    allow_config_change: bool = False,
    process_index: int = 0,
    defaults: Mapping[str, Any] | None = None,
    new_only: str | None = None,
) -> Iterator[dict[str, tuple[Any, Any]]]:
  """Holds `workdir` for one run (see the module docstring).

  Args:
    workdir: a local folder or a gs:// URL.
    config: the run's config (as a dict).
    allow_config_change: continue a run with a config that differs.
    process_index: this process of the run (its lock's number).
    defaults: every field's default (`changed_fields`).
    new_only: refuse a workdir that holds a run (`refuse_a_run`), saying
      this instead (for the converter, which never joins a run).

  Yields:
    The allowed config changes ({} on a new workdir or an unchanged config).

  Raises:
    WorkdirError: the workdir cannot be used (one line).
  """
  workdir = storage.resolve(workdir)
  if storage.is_remote(workdir):
    storage.check_reachable(workdir)
    made, lock = [], _ObjectLock(workdir, process_index)
  else:
    made, lock = _create_folders(workdir), _FileLock(workdir, process_index)
  try:
    if not storage.is_remote(workdir) and not os.access(
        workdir, os.W_OK | os.X_OK
    ):
      raise WorkdirError(f'--workdir={workdir} is not writable.')
    try:
      lock.acquire()
    except PermissionError as e:
      raise WorkdirError(
          f'--workdir={workdir} is not writable ({e.strerror or e}).'
      ) from None
    try:
      if new_only is not None:
        refuse_a_run(workdir, new_only)
      yield check_unchanged_config(
          workdir, config, allow_config_change, defaults
      )
    finally:
      lock.release()
  finally:
    for folder in made:  # deepest first; kept if the run wrote into it
      with contextlib.suppress(OSError):
        os.rmdir(folder)
