"""CIFAR-10/100 from TensorFlow Datasets, in the official order.

TFDS stores examples in its own shuffled order but keeps the official index
in the ``id`` feature (``train_00042``); sorting by it recovers the order the
LDAM long-tail protocol indexes into.

A dataset not yet prepared in the data_dir is downloaded and prepared there
on first use (as flax's examples and big_vision do) when the machine can
reach the files' host; offline, where TFDS would retry for minutes, it
fails at once with instructions (`can_download` decides, in a few
seconds). On several hosts, prepare it beforehand: each host would
download its own copy.
"""

import re
import socket

import numpy as np
from absl import logging

from input_pipeline.files import is_url, tensorflow_error_reason
from input_pipeline.sources import DataError, Split

_ID = re.compile(r'^(?:train|test)_(\d+)$')
# Where TFDS downloads CIFAR-10 and CIFAR-100 from (its cifar.py), and how
# long a connection to it may take to open before the machine counts as
# offline.
CIFAR_HOST = ('www.cs.toronto.edu', 443)
CONNECT_SECONDS = 5.0


def official_order(ids: np.ndarray, name: str) -> np.ndarray:
  """Permutation that sorts examples by the official index in their ids.

  Raises:
    DataError: an id is not ``<split>_<index>`` or the indices are not
      0..N-1 exactly once each.
  """
  indices = []
  for raw in ids:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    match = _ID.match(text)
    if not match:
      raise DataError(
          f'{name}: id {text!r} is not of the form "train_00042"; the '
          'official order cannot be recovered from this TFDS dataset.'
      )
    indices.append(int(match.group(1)))
  indices = np.array(indices)
  if not np.array_equal(np.sort(indices), np.arange(len(indices))):
    raise DataError(
        f'{name}: the official indices in the ids are not 0..{len(ids) - 1} '
        'exactly once each.'
    )
  return np.argsort(indices)


def can_download(
    host: tuple[str, int] = CIFAR_HOST, timeout: float = CONNECT_SECONDS
) -> bool:
  """Whether a connection to `host` (name, port) opens within `timeout`."""
  try:
    with socket.create_connection(host, timeout=timeout):
      return True
  except OSError:  # no route, refused, timed out, or no name resolution
    return False


def prepare(name: str, data_dir: str | None):
  """Downloads and prepares TFDS dataset `name` in `data_dir` (None: TFDS's
  default folder).

  Raises:
    DataError: the download or the preparation failed (one line).
  """
  import tensorflow_datasets as tfds  # slow to import; only here

  where = data_dir or '~/tensorflow_datasets'
  logging.info(
      'TFDS dataset %s is not prepared in %s: downloading it from %s and '
      'preparing it there, once (about 160 MB).',
      name,
      where,
      CIFAR_HOST[0],
  )
  try:
    tfds.builder(name, data_dir=data_dir).download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except  # network, disk, ...
    message = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise DataError(
        f'preparing TFDS dataset {name} in data_dir={where} failed '
        f'({type(e).__name__}: {message}); check the network and the free '
        f'space, or prepare it on another machine (`tfds build {name} '
        '--data_dir=DIR`) and pass data_dir=DIR.'
    ) from None


def load_tfds_cifar(name: str, split: str, data_dir: str | None) -> Split:
  """Loads a TFDS CIFAR split into memory, in official order.

  A dataset not prepared in `data_dir` is prepared there first if the
  machine can download it (`can_download`, `prepare`).

  Args:
    name: 'cifar10' or 'cifar100'.
    split: 'train' or 'test'.
    data_dir: TFDS data directory (local or gs://); None for the default.

  Raises:
    DataError: the dataset is not prepared in `data_dir` and cannot be
      downloaded here, or its preparation failed.
  """
  import tensorflow_datasets as tfds  # slow to import; only here

  load = lambda: tfds.load(name, split=split, data_dir=data_dir, download=False)
  try:
    dataset = load()
  except RuntimeError as e:  # TFDS's wrapping of a file-system error
    if not (data_dir and is_url(data_dir)):
      raise
    raise DataError(
        f'TFDS data_dir={data_dir} cannot be read '
        f'({tensorflow_error_reason(e)}); check the path, the network and '
        'the credentials (gcloud auth application-default login).'
    ) from None
  except AssertionError as e:  # TFDS's "could not find data" error
    if not can_download():
      raise DataError(
          f'TFDS dataset {name} is not prepared in data_dir={data_dir!r} and '
          f'cannot be downloaded here (no connection to {CIFAR_HOST[0]}). '
          'Prepare it once on a machine with internet access: `tfds build '
          f'{name} --data_dir=DIR`, copy DIR here (or to a bucket) and pass '
          f'data_dir=DIR. TFDS said: {e}'
      ) from None
    prepare(name, data_dir)
    dataset = load()
  columns = {'image': [], 'label': [], 'id': []}
  for batch in tfds.as_numpy(dataset.batch(10_000)):
    for key, values in columns.items():
      values.append(batch[key])
  images, labels, ids = (np.concatenate(columns[k]) for k in columns)
  order = official_order(ids, f'{name}:{split}')
  num_classes = 100 if name == 'cifar100' else 10
  return Split(
      name=f'{name}:{split}',
      labels=labels[order].astype(np.int32),
      num_classes=num_classes,
      images=images[order],
  )
