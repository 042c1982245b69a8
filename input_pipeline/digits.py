"""A small real long-tailed dataset that needs no download: scikit-learn's
bundled 8x8 handwritten digits (1,797 images, 10 classes), for the quickstart.

Per class, a fixed random `test_per_class` images form a balanced test set;
the remaining training pool is trimmed to its smallest class (so it is
balanced) and made long-tailed with the LDAM protocol.
"""

import numpy as np

from input_pipeline.long_tail import long_tail_indices
from input_pipeline.sources import Split

NUM_CLASSES = 10


def load_digits_lt(
    imbalance_factor: float = 10.0, test_per_class: int = 50, seed: int = 0
) -> tuple[Split, Split]:
  """(train, test) Splits of (8, 8, 1) uint8 digit images.

  With the defaults: 124 training images of class 0 down to 12 of class 9
  (503 in all), and 50 test images per class.
  """
  from sklearn.datasets import load_digits  # only the quickstart needs it

  digits = load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  rng = np.random.RandomState(seed)
  test, pool = [], []
  for c in range(NUM_CLASSES):
    members = np.flatnonzero(labels == c)
    rng.shuffle(members)
    test.append(members[:test_per_class])
    pool.append(members[test_per_class:])
  pool_size = min(len(p) for p in pool)
  pool = np.concatenate([np.sort(p[:pool_size]) for p in pool])
  train = pool[long_tail_indices(labels[pool], imbalance_factor, seed)]
  return (
      Split(
          'digits-lt:train', labels[train], NUM_CLASSES, images=images[train]
      ),
      Split(
          'digits:test',
          labels[np.concatenate(test)],
          NUM_CLASSES,
          images=images[np.concatenate(test)],
      ),
  )
