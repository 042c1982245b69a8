"""The embedded quickstart data."""

import numpy as np

from input_pipeline.digits import load_digits_lt


def test_long_tailed_train_and_balanced_test():
  train, test = load_digits_lt(imbalance_factor=10, test_per_class=50)
  assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
  counts = train.class_counts()
  assert counts[0] == 124 and counts[-1] == 12
  assert (np.diff(counts) <= 0).all()
  assert (test.class_counts() == 50).all()
  assert train.images.max() == 255


def test_fixed_for_a_seed():
  a, _ = load_digits_lt(seed=0)
  b, _ = load_digits_lt(seed=0)
  c, _ = load_digits_lt(seed=1)
  np.testing.assert_array_equal(a.images, b.images)
  assert not np.array_equal(a.images, c.images)
