"""Where a run's files live: a local folder or a Cloud Storage bucket, alike.

Every file that the trainer, the second stage, the converter, an evaluation
and `trained.load` read or write in a workdir goes through this module, so
that ``--workdir=gs://BUCKET/run`` works as a local folder does. Paths are
plain strings (``/tmp/run``, ``gs://bucket/run``); files are reached through
`etils.epath`, the path library orbax writes checkpoints with.

Local folders and buckets differ where it matters, so each operation here is
written for both rather than emulating a file system on an object store:

* `write_bytes` replaces a whole file at once: locally a temporary file
  renamed into place, on a bucket one upload (an object appears whole or
  not at all). Nothing is ever appended: an object cannot be.
* `checksums` of a folder's files (CRC32C): a bucket's come from the store's
  own per-object CRC32C in one listing, nothing downloaded; a local
  folder's are computed from its files.
* `set_aside` a folder under another name: locally a rename; on a bucket a
  server-side copy of its objects, then a delete that removes orbax's
  commit marker first (a half-deleted step is one that orbax ignores and
  cleans up).
* `create_exclusive`, `replace_if` and `delete_if` are conditional writes,
  for the workdir's lock: on a bucket Cloud Storage's generation
  preconditions, locally ``O_EXCL``.

Only ``gs://`` URLs are served (`resolve` refuses another scheme, naming the
setting, before anything is written). Cloud Storage is reached through gcsfs
(fsspec) and google-cloud-storage, chosen here for the whole process: epath
would pick TensorFlow's gfile whenever TensorFlow is importable, and gfile's
Cloud Storage client cannot be pointed at a local server, so the tests
(which run against one) would exercise another client than a pod runs. The
input pipeline still reads list files, images and TFDS data through
TensorFlow's file systems.
"""

import base64
import contextlib
import dataclasses
import datetime
import errno
import functools
import os
import pathlib
import re
import tempfile
from typing import Iterator

# Before any library resolves a gs:// path (see the module docstring):
# etils.epath (ours and orbax's) through gcsfs rather than TensorFlow's
# gfile; gcsfs's core client, without the zonal-bucket extension whose
# bucket-type probe a local server cannot answer (it waits 60 s per bucket).
os.environ['EPATH_USE_TF'] = 'false'
os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false'

# pylint: disable=g-import-not-at-top,wrong-import-position
import fsspec
import google_crc32c
from etils import epath

# gcsfs lists a bucket afresh each time (fsspec applies this to every gcs
# file system it makes, epath's too): tensorstore, google-cloud-storage and
# other processes write to it behind its back.
fsspec.config.conf.setdefault('gcs', {})['use_listings_cache'] = False

from nbn_jax.training.errors import WorkdirError

REMOTE_SCHEMES = ('gs',)
# How long `check_reachable` waits for Cloud Storage before giving up.
REACH_SECONDS = 15.0
# orbax marks a complete step folder on a bucket with this object.
COMMIT_MARKER = 'commit_success.txt'
_CHUNK_BYTES = 1 << 24
_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')


def scheme(path: str) -> str | None:
  """'gs' for 'gs://bucket/x', None for a local path."""
  found = _SCHEME.match(path)
  return found.group(1).lower() if found else None


def is_remote(path: str) -> bool:
  return scheme(path) is not None


def resolve(path: str, setting: str = '--workdir') -> str:
  """`path` as a place for outputs: a local path made absolute, or a gs:// URL.

  Args:
    path: a local folder or ``gs://BUCKET/PATH``.
    setting: the flag or field it came from, for the error message.

  Raises:
    WorkdirError: empty, or a URL of another scheme, or no bucket (one line
      naming `setting`).
  """
  if not path:
    raise WorkdirError(
        f'{setting} is empty; give a local folder or gs://BUCKET/PATH.'
    )
  found = scheme(path)
  if found is None:  # absolute, without '.' and '..'
    return os.path.normpath(pathlib.Path(path).absolute())
  if found not in REMOTE_SCHEMES:
    raise WorkdirError(
        f'{setting}={path}: {found}:// is not supported; give a local folder '
        'or gs://BUCKET/PATH (Cloud Storage).'
    )
  bucket, _ = split(path)
  if not bucket:
    raise WorkdirError(f'{setting}={path} names no bucket (gs://BUCKET/PATH).')
  return path.rstrip('/')


def split(url: str) -> tuple[str, str]:
  """('bucket', 'a/b') of 'gs://bucket/a/b'."""
  bucket, _, key = url.split('://', 1)[1].partition('/')
  return bucket, key.strip('/')


def join(folder: str, *names: str) -> str:
  return '/'.join([folder.rstrip('/'), *names])


def _path(path: str) -> epath.Path:
  return epath.Path(path)


# --- Reading and writing --------------------------------------------------------


def exists(path: str) -> bool:
  return _path(path).exists()


def read_bytes(path: str) -> bytes:
  return _path(path).read_bytes()


def read_text(path: str) -> str:
  return read_bytes(path).decode('utf-8')


def listdir(folder: str) -> list[str]:
  """The names in `folder`, sorted ([] if it does not exist)."""
  path = _path(folder)
  if not path.exists():
    return []
  return sorted(p.name for p in path.iterdir())


def makedirs(folder: str):
  """Creates a local folder and its parents; nothing on a bucket (objects
  need no folders)."""
  if not is_remote(folder):
    os.makedirs(folder, exist_ok=True)


def _new_file_mode() -> int:
  """0o666 less the umask: the mode `open` gives a new file."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def write_bytes(path: str, data: bytes):
  """Replaces the file at `path` with `data`, whole or not at all.

  Locally, a temporary file beside it, renamed into place (readable as a
  file `open` creates: 0666 less the umask); several writers of one path
  (hosts sharing a disk) each write their own and the last one wins. On a
  bucket, one upload.
  """
  if is_remote(path):
    _path(path).write_bytes(data)
    return
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  with tempfile.NamedTemporaryFile(
      'wb', dir=folder, suffix='.partial', delete=False
  ) as f:
    try:
      f.write(data)
      f.flush()  # a full disk fails here, while the file is named
      os.chmod(f.name, _new_file_mode())
    except BaseException as e:
      f.close()
      os.remove(f.name)
      if isinstance(e, OSError) and e.filename is None:
        raise OSError(e.errno, e.strerror, path) from None
      raise
  os.replace(f.name, path)


def write_text(path: str, text: str):
  write_bytes(path, text.encode('utf-8'))


def remove(path: str):
  """Deletes a file or object; nothing if it is not there."""
  with contextlib.suppress(FileNotFoundError):
    _path(path).unlink()


# --- Checksums --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileSum:
  """A file's size in bytes and CRC32C (as a number)."""

  size: int
  crc32c: int


def file_crc32c(path: str) -> int:
  """CRC32C of a local file's bytes, read in chunks."""
  checksum = google_crc32c.Checksum()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK_BYTES):
      checksum.update(chunk)
  return int.from_bytes(checksum.digest(), 'big')


def checksums(folder: str, skip: str = '') -> dict[str, FileSum]:
  """{path relative to `folder`: size and CRC32C} of every file under it.

  A bucket's come from one listing (the store keeps each object's CRC32C);
  a local folder's files are read. `skip`: a file name left out.
  """
  if is_remote(folder):
    fs = _gcs()
    prefix = folder.split('://', 1)[1].rstrip('/') + '/'
    return {
        name[len(prefix) :]: FileSum(
            int(info['size']),
            int.from_bytes(base64.b64decode(info['crc32c']), 'big'),
        )
        for name, info in fs.find(prefix, detail=True).items()
        if os.path.basename(name) != skip and info.get('type') != 'directory'
    }
  sums = {}
  for root, _, names in os.walk(folder):
    for name in names:
      if name == skip:
        continue
      path = os.path.join(root, name)
      sums[os.path.relpath(path, folder)] = FileSum(
          os.path.getsize(path), file_crc32c(path)
      )
  return sums


# --- Setting a folder aside ---------------------------------------------------


def set_aside(folder: str, target: str):
  """Moves `folder` to `target` (which must not exist).

  Locally one rename. On a bucket each object is copied on the server (no
  download), then the originals are deleted, orbax's commit marker first:
  cut short, the copy is partial and the original a step that orbax no
  longer counts as complete.
  """
  if not is_remote(folder):
    os.rename(folder, target)
    return
  fs = _gcs()
  source = folder.split('://', 1)[1].rstrip('/')
  destination = target.split('://', 1)[1].rstrip('/')
  objects = [
      name
      for name, info in fs.find(source, detail=True).items()
      if info.get('type') != 'directory'
  ]
  for name in objects:
    fs.copy(name, destination + name[len(source) :])
  objects.sort(key=lambda name: os.path.basename(name) != COMMIT_MARKER)
  for name in objects:  # the step's own marker first
    fs.rm_file(name)


# --- Conditional writes (the workdir's lock) ----------------------------------


@dataclasses.dataclass(frozen=True)
class Held:
  """What `read_held` found: the object's bytes, generation and age (s)."""

  data: bytes
  generation: int
  age: float


def _blob(url: str):
  bucket, key = split(url)
  return _client().bucket(bucket).blob(key)


@contextlib.contextmanager
def _refusals_as_permission_errors(url: str) -> Iterator[None]:
  """A request the store refuses (HTTP 401, 403) -> PermissionError."""
  from google.api_core import exceptions

  try:
    yield
  except (exceptions.Forbidden, exceptions.Unauthorized) as e:
    raise PermissionError(errno.EACCES, _first_line(e.message), url) from None


def create_exclusive(url: str, data: bytes) -> int | None:
  """Creates object `url` unless it exists; its generation, or None if it did.

  Raises:
    PermissionError: the store refused the write.
  """
  from google.api_core import exceptions

  blob = _blob(url)
  with _refusals_as_permission_errors(url):
    try:
      blob.upload_from_string(data, if_generation_match=0)
    except exceptions.PreconditionFailed:
      return None
  return blob.generation


def replace_if(url: str, data: bytes, generation: int) -> int | None:
  """Overwrites `url` if it is still at `generation`; the new generation, or
  None if another writer replaced or deleted it."""
  from google.api_core import exceptions

  blob = _blob(url)
  with _refusals_as_permission_errors(url):
    try:
      blob.upload_from_string(data, if_generation_match=generation)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      return None
  return blob.generation


def delete_if(url: str, generation: int) -> bool:
  """Deletes `url` if it is still at `generation`; whether it did."""
  from google.api_core import exceptions

  with _refusals_as_permission_errors(url):
    try:
      _blob(url).delete(if_generation_match=generation)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      return False
  return True


def read_held(url: str) -> Held | None:
  """The object at `url` with its generation and age, or None if absent
  (or changed while it was read)."""
  from google.api_core import exceptions

  bucket, key = split(url)
  with _refusals_as_permission_errors(url):
    blob = _client().bucket(bucket).get_blob(key)
    if blob is None:
      return None
    try:  # the generation whose age and holder are read
      data = blob.download_as_bytes(if_generation_match=blob.generation)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      return None  # replaced or deleted meanwhile: look again
  age = datetime.datetime.now(datetime.timezone.utc) - blob.updated
  return Held(data, blob.generation, max(age.total_seconds(), 0.0))


# --- Reaching Cloud Storage ---------------------------------------------------


def check_reachable(url: str, setting: str = '--workdir'):
  """Refuses a bucket that cannot be used, in one line, within REACH_SECONDS.

  Lists one object under `url` (which needs no more than the permission to
  read objects): this fails for missing credentials, an unreachable
  service, a bucket that does not exist or one this account may not read.
  Whether it may write is found by the first write (the workdir's lock).

  Raises:
    WorkdirError: naming `setting`, the cause and what to do.
  """
  import google.auth.exceptions
  import requests
  from google.api_core import exceptions, retry

  bucket, key = split(url)
  try:
    client = _client()
    next(
        iter(
            client.list_blobs(
                bucket,
                prefix=key,
                max_results=1,
                timeout=REACH_SECONDS / 3,
                retry=retry.Retry(timeout=REACH_SECONDS),
            )
        ),
        None,
    )
  except google.auth.exceptions.DefaultCredentialsError:
    raise WorkdirError(
        f'{setting}={url}: no Google Cloud credentials found. On a Cloud TPU '
        "or GCE VM the VM's service account is used; elsewhere run `gcloud "
        'auth application-default login` or set '
        'GOOGLE_APPLICATION_CREDENTIALS.'
    ) from None
  except exceptions.NotFound:
    raise WorkdirError(
        f'{setting}={url}: the bucket {bucket} does not exist; create it '
        f'(gcloud storage buckets create gs://{bucket}) or check the name.'
    ) from None
  except exceptions.Forbidden as e:
    raise WorkdirError(
        f'{setting}={url}: this account may not read gs://{bucket} '
        f'({_first_line(e.message)}); grant it roles/storage.objectUser.'
    ) from None
  except (
      requests.exceptions.RequestException,
      exceptions.GoogleAPIError,
      google.auth.exceptions.GoogleAuthError,
  ) as e:
    raise WorkdirError(
        f'{setting}={url}: Cloud Storage cannot be reached '
        f'({_first_line(str(e))}); check the network and retry.'
    ) from None


def _first_line(text: str) -> str:
  line = text.strip().splitlines()[0] if text.strip() else ''
  return line if len(line) <= 160 else line[:160] + '...'


@functools.cache
def _client():
  from google.cloud import storage

  return storage.Client()


def _gcs():
  """The gcsfs file system that epath's gs:// paths use (fsspec keeps one
  instance per set of arguments)."""
  return fsspec.filesystem('gcs', finalize_on_close=True)
