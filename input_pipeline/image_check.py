"""Image files checked before training, and named when tf.data cannot decode.

`check_images(split)` reads every listed file's header and tail, in
parallel, and raises one `DataError` naming the bad files: missing, empty,
not an image, a format TensorFlow cannot decode, or truncated (a JPEG
without its end-of-image marker, a PNG without its IEND chunk: exactly the
files `tf.io.decode_image` rejects). The full decode stays in tf.data. A
passed check is remembered in a small file keyed by the image root and the
listed paths, so a resumed run does not repeat it.

An image that passes the check but still fails to decode in tf.data (data
corrupted in the middle of a file) is named by `naming_bad_images`, which
wraps a batch iterator and, on a failure, decodes that batch's files one by
one to find it.
"""

import concurrent.futures
import hashlib
import io
import json
import os
import time
from typing import Callable, Iterator, Sequence

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from input_pipeline.files import (
    join_path,
    open_file,
    url_errors,
    write_atomically,
)
from input_pipeline.sources import DataError, Split

# What tf.io.decode_image reads; PIL calls some camera JPEGs 'MPO'.
DECODABLE_FORMATS = ('JPEG', 'MPO', 'PNG', 'GIF', 'BMP', 'WEBP')
TAIL_BYTES = 4096  # the end of each file read for its end marker
FILES_PER_TASK = 256
CHECK_VERSION = 1  # bump when the check changes, to invalidate caches


def default_cache_dir() -> str:
  return os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')),
      'nbn_jax',
      'image_checks',
  )


def _is_truncated(f, image: Image.Image, size: int) -> bool:
  """Whether a JPEG/PNG file lacks its end marker (tf.data rejects those)."""
  if image.format in ('JPEG', 'MPO'):
    marker, start = b'\xff\xd9', f.tell()  # PIL stops at the scan's start
  elif image.format == 'PNG':
    marker, start = b'IEND', 0
  else:
    return False
  start = max(start, size - TAIL_BYTES)
  f.seek(start)
  return marker not in f.read()


def file_problem(path: str) -> str | None:
  """Why `path` cannot be decoded by tf.data, or None if its header is fine.

  Reads the header (with PIL) and the last `TAIL_BYTES`, not the pixels.
  """
  try:
    with url_errors(path), open_file(path, 'rb') as f:
      f.seek(0, io.SEEK_END)
      size = f.tell()
      if size == 0:
        return 'empty file'
      f.seek(0)
      try:
        with Image.open(f) as image:
          if image.format not in DECODABLE_FORMATS:
            return (
                f'{image.format} image; tf.data decodes only JPEG, PNG, '
                'GIF, BMP and WebP'
            )
          if _is_truncated(f, image, size):
            return f'truncated {image.format} (no end marker)'
      except UnidentifiedImageError:
        return 'not an image (no known header)'
      except (SyntaxError, ValueError, EOFError, OSError) as e:
        return f'header is cut short or corrupt ({e})'
  except FileNotFoundError:
    return 'missing'
  except OSError as e:
    return f'cannot be read ({e.strerror or e})'
  return None


def _cache_file(split: Split, cache_dir: str) -> str:
  digest = hashlib.sha256()
  digest.update(f'{CHECK_VERSION}\n{split.image_root}\n'.encode())
  digest.update('\n'.join(split.paths.tolist()).encode())
  return os.path.join(cache_dir, f'{digest.hexdigest()[:24]}.json')


def check_images(
    split: Split,
    cache_dir: str | None = None,
    workers: int = 32,
    progress_seconds: float = 10.0,
) -> None:
  """Checks every image file of a path split; raises DataError on bad ones.

  Args:
    split: a split of image paths (in-memory splits are skipped).
    cache_dir: where passed checks are remembered (default
      `default_cache_dir()`); '' to neither read nor write a cache.
    workers: threads reading files (I/O bound; more for network storage).
    progress_seconds: seconds between progress lines.

  Raises:
    DataError: one line with the number of bad files and the first of them,
      each with its problem; the others are logged, up to 20.
  """
  if split.in_memory:
    return
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  cache = cache_dir and _cache_file(split, cache_dir)
  if cache and os.path.exists(cache):
    logging.info('%s: images already checked (%s).', split.name, cache)
    return
  paths = [join_path(split.image_root, p) for p in split.paths]
  start = last_line = time.perf_counter()
  problems, done = [], 0

  def check_chunk(first):
    chunk = paths[first : first + FILES_PER_TASK]
    return [(p, q) for p in chunk if (q := file_problem(p)) is not None]

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for found in pool.map(check_chunk, range(0, len(paths), FILES_PER_TASK)):
      problems += found
      done = min(done + FILES_PER_TASK, len(paths))
      now = time.perf_counter()
      if now - last_line > progress_seconds:
        last_line = now
        logging.info(
            '%s: checked %d of %d images (%.0f images/s)',
            split.name,
            done,
            len(paths),
            done / (now - start),
        )
  seconds = time.perf_counter() - start
  if problems:
    for path, problem in problems[:20]:
      logging.error('%s: %s', path, problem)
    path, problem = problems[0]
    raise DataError(
        f'{split.name}: {len(problems)} of {len(paths)} image files cannot be '
        f'decoded, e.g. {path}: {problem}. Replace them or remove their '
        'lines from the list.'
    )
  logging.info(
      '%s: %d images checked in %.1f s (%.0f images/s).',
      split.name,
      len(paths),
      seconds,
      len(paths) / max(seconds, 1e-9),
  )
  if cache:  # every host of a run may write it
    with write_atomically(cache) as f:
      json.dump({'split': split.name, 'images': len(paths)}, f)


def check_benchmark_images(
    benchmark, cache_dir: str | None = None, train: bool = True
) -> None:
  """`check_images` on the train (unless `train` is False: an evaluation
  reads no training image), val and test splits of a Benchmark."""
  splits = [benchmark.train] if train else []
  for split in splits + [benchmark.val, benchmark.test]:
    if split is not None:
      check_images(split, cache_dir)


# --- Failures during training and evaluation -----------------------------------


def decode_problem(path: str) -> str | None:
  """Why TensorFlow cannot fully decode `path` (as tf.data does), or None."""
  import tensorflow as tf  # only after a tf.data failure

  try:
    tf.io.decode_image(
        tf.io.read_file(path), channels=3, expand_animations=False
    )
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
    return e.message.strip().splitlines()[-1]
  return None


def naming_bad_images(
    batches: Iterator[dict[str, np.ndarray]],
    split: Split,
    batch_indices: Callable[[int], Sequence[int]],
) -> Iterator[dict[str, np.ndarray]]:
  """Passes `batches` through; names the file if one cannot be decoded.

  Args:
    batches: host batches from a tf.data pipeline over `split`, in order
      (deterministic), e.g. `tf_pipeline.as_numpy(dataset)`, which raises
      DataError on a decode failure.
    split: the split of image paths the batches come from.
    batch_indices: k -> the example indices of this host's k-th batch.

  Raises:
    DataError: one line naming the undecodable file.
  """
  k = 0
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except DataError as e:
      indices = sorted(set(np.asarray(batch_indices(k)).tolist()))
      for i in indices:
        path = join_path(split.image_root, split.paths[i])
        if (problem := decode_problem(path)) is not None:
          raise DataError(
              f'{split.name}: {path} cannot be decoded ({problem}). Replace '
              'it or remove its line from the list.'
          ) from None
      raise DataError(
          f'{split.name}: batch {k} failed ({e}); none of its '
          f'{len(indices)} files fails alone.'
      ) from None
    yield batch
    k += 1
