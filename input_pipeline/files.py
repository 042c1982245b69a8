"""File access for the pipeline: local paths and URLs alike.

Local paths use Python's own I/O, so nothing here needs TensorFlow; URLs
such as ``gs://bucket/lists/train.txt`` go through `tf.io.gfile`, imported
only when one is used. Files the pipeline writes (caches) are written
atomically.
"""

import contextlib
import os
import posixpath
import tempfile
from typing import IO, Iterator


def is_url(path: str) -> bool:
  """True for paths such as gs://..., which only tf.io.gfile can open."""
  return '://' in path


def open_file(path: str, mode: str = 'r'):
  """Opens a local path with `open`, a URL with `tf.io.gfile.GFile`."""
  if is_url(path):
    import tensorflow as tf  # only URLs need it

    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)


def file_exists(path: str) -> bool:
  if is_url(path):
    import tensorflow as tf  # only URLs need it

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
