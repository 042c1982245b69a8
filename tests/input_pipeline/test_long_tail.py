"""The LDAM long-tail protocol and Many/Medium/Few groups."""

import numpy as np
import pytest

import input_pipeline as ip

CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _balanced_labels(num_classes, per_class, seed=0):
  """Labels of a balanced set in a scrambled 'official' order."""
  labels = np.repeat(np.arange(num_classes), per_class)
  return np.random.default_rng(seed).permutation(labels)


def _ldam_reference(labels, imb_factor):
  """The LDAM code's gen_imbalanced_data, with NumPy's global RNG."""
  cls_num = int(labels.max()) + 1
  img_max = len(labels) / cls_num
  img_num_per_cls = [
      int(img_max * (imb_factor ** (i / (cls_num - 1.0))))
      for i in range(cls_num)
  ]
  np.random.seed(0)
  selected = []
  for the_class, the_img_num in zip(np.unique(labels), img_num_per_cls):
    idx = np.where(labels == the_class)[0]
    np.random.shuffle(idx)
    selected.append(idx[:the_img_num])
  return np.concatenate(selected)


def test_cifar10_if100_per_class_counts():
  assert ip.long_tail_counts(5000, 10, 100).tolist() == CIFAR10_IF100


@pytest.mark.parametrize(
    'num_classes, per_class, totals',
    [
        (10, 5000, (20_431, 13_996, 12_406)),
        (100, 500, (19_573, 12_608, 10_847)),
    ],
)
def test_totals_at_if_10_50_100(num_classes, per_class, totals):
  labels = _balanced_labels(num_classes, per_class)
  for imbalance_factor, total in zip((10, 50, 100), totals):
    subset = ip.long_tail_indices(labels, imbalance_factor)
    assert len(subset) == total
    assert len(np.unique(subset)) == total


@pytest.mark.parametrize('imbalance_factor', [10, 50, 100])
def test_indices_are_those_of_the_ldam_code(imbalance_factor):
  labels = _balanced_labels(10, 5000, seed=3)
  ours = ip.long_tail_indices(labels, imbalance_factor)
  state = np.random.get_state()
  try:
    reference = _ldam_reference(labels, 1 / imbalance_factor)
  finally:
    np.random.set_state(state)
  np.testing.assert_array_equal(ours, reference)


def test_subset_is_grouped_by_class_in_label_order():
  labels = _balanced_labels(10, 500)
  subset = ip.long_tail_indices(labels, 10)
  sizes = ip.long_tail_counts(500, 10, 10)
  np.testing.assert_array_equal(labels[subset], np.repeat(np.arange(10), sizes))


def test_global_numpy_rng_is_left_alone():
  np.random.seed(123)
  expected = np.random.rand()
  np.random.seed(123)
  ip.long_tail_indices(_balanced_labels(10, 50), 10)
  assert np.random.rand() == expected


def test_imbalance_factor_below_one_is_a_clear_error():
  with pytest.raises(ValueError, match='imbalance_factor=0.5 must be >= 1'):
    ip.long_tail_indices(_balanced_labels(10, 50), 0.5)


def test_empty_class_is_a_clear_error():
  labels = np.array([0, 0, 2, 2])
  with pytest.raises(ValueError, match=r'classes \[1\] have no training'):
    ip.long_tail_indices(labels, 10)
