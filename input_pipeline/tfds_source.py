"""CIFAR-10/100 from TensorFlow Datasets, in the official order.

TFDS stores examples in its own shuffled order but keeps the official index
in the ``id`` feature (``train_00042``); sorting by it recovers the order the
LDAM long-tail protocol indexes into. Never downloads: offline, a download
would retry for minutes, so missing data fails at once with instructions.
"""

import re

import numpy as np

from input_pipeline.files import is_url, tensorflow_error_reason
from input_pipeline.sources import DataError, Split

_ID = re.compile(r'^(?:train|test)_(\d+)$')


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


def load_tfds_cifar(name: str, split: str, data_dir: str | None) -> Split:
  """Loads a prepared TFDS CIFAR split into memory, in official order.

  Args:
    name: 'cifar10' or 'cifar100'.
    split: 'train' or 'test'.
    data_dir: TFDS data directory (local or gs://); None for the default.

  Raises:
    DataError: the dataset is not prepared in `data_dir`.
  """
  import tensorflow_datasets as tfds  # slow to import; only here

  try:
    dataset = tfds.load(name, split=split, data_dir=data_dir, download=False)
  except RuntimeError as e:  # TFDS's wrapping of a file-system error
    if not (data_dir and is_url(data_dir)):
      raise
    raise DataError(
        f'TFDS data_dir={data_dir} cannot be read '
        f'({tensorflow_error_reason(e)}); check the path, the network and '
        'the credentials (gcloud auth application-default login).'
    ) from None
  except AssertionError as e:  # TFDS's "could not find data" error
    raise DataError(
        f'TFDS dataset {name} is not prepared in data_dir={data_dir!r} '
        '(nothing is downloaded at training time). Prepare it once on a '
        f'machine with internet access: `tfds build {name} '
        '--data_dir=DIR`, copy DIR here (or to a bucket) and pass '
        f'data_dir=DIR. TFDS said: {e}'
    ) from None
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
