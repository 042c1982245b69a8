"""File access for the pipeline: local paths and URLs alike.

Local paths use Python's own I/O, so nothing here needs TensorFlow; URLs
such as ``gs://bucket/lists/train.txt`` go through `tf.io.gfile`, imported
only when one is used. TensorFlow's errors on a URL become this package's
(`url_errors`): a missing object a `FileNotFoundError`, anything else (an
unreachable bucket, no credentials) a one-line `DataError`. Files the
pipeline writes (caches) are written atomically.
"""

import contextlib
import errno
import os
import posixpath
import re
import tempfile
from typing import IO, Iterator


class DataError(ValueError):
  """A dataset, list file or image is missing or malformed."""


def is_url(path: str) -> bool:
  """True for paths such as gs://..., which only tf.io.gfile can open."""
  return '://' in path


def tensorflow_error_reason(error: Exception) -> str:
  """The cause in a TensorFlow file-system error, e.g. 'Could not resolve
  host: www.googleapis.com'."""
  message = str(getattr(error, 'message', error)).strip()
  details = re.search(r'error details: ([^\n]+)', message)
  line = details.group(1) if details else message.splitlines()[0]
  return line.strip() if len(line) <= 160 else line[:160] + '...'


@contextlib.contextmanager
def url_errors(path: str) -> Iterator[None]:
  """TensorFlow's file-system errors on URL `path` as this package's.

  Raises:
    FileNotFoundError: TensorFlow's NotFoundError.
    DataError: any other of its errors (one line: the cause and what to
      check).
  """
  try:
    yield
  except Exception as e:  # tf.errors.OpError, without importing TensorFlow
    if not type(e).__module__.startswith('tensorflow'):
      raise
    if type(e).__name__ == 'NotFoundError':
      raise FileNotFoundError(
          errno.ENOENT, tensorflow_error_reason(e), path
      ) from None
    raise DataError(
        f'{path} cannot be read ({tensorflow_error_reason(e)}); check the path,'
        ' the network and the credentials (gcloud auth application-default'
        ' login).'
    ) from None


def open_file(path: str, mode: str = 'r'):
  """Opens a local path with `open`, a URL with `tf.io.gfile.GFile`.

  A URL's file is read lazily: read it inside `url_errors(path)`.
  """
  if is_url(path):
    import tensorflow as tf  # only URLs need it

    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)


def file_exists(path: str) -> bool:
  """Whether `path` exists.

  Raises:
    DataError: a URL that cannot be reached (`url_errors`).
  """
  if is_url(path):
    import tensorflow as tf  # only URLs need it

    with url_errors(path):
      return tf.io.gfile.exists(path)
  return os.path.exists(path)


@contextlib.contextmanager
def write_atomically(path: str, mode: str = 'w') -> Iterator[IO]:
  """A new local file beside `path` that replaces `path` once written.

  A killed writer leaves no half-written `path`, and several writers (the
  hosts of one run, on a shared disk) may write the same path at once: each
  writes its own temporary file, and the last to finish wins.
  """
  folder = os.path.dirname(path) or '.'
  os.makedirs(folder, exist_ok=True)
  with tempfile.NamedTemporaryFile(
      mode, dir=folder, suffix='.partial', delete=False
  ) as f:
    try:
      yield f
    except BaseException:
      f.close()
      os.remove(f.name)
      raise
  os.replace(f.name, path)


def join_path(root: str, relative: str) -> str:
  return f'{root.rstrip("/")}/{relative}' if root else relative


def stays_inside_root(relative: str) -> bool:
  """Whether a list path names a file under its root.

  It must be relative and not climb out with ``..``. This is checked on the
  text: symlinks under the root are followed as its owner set them up.
  """
  if relative.startswith('/') or is_url(relative):
    return False
  normal = posixpath.normpath(relative)
  return normal != '..' and not normal.startswith('../')
