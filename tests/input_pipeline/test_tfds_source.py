"""CIFAR from TFDS: official order from the ids, and the same LT subset as the
JPEG copy's lists."""

import numpy as np
import pytest

import input_pipeline as ip
from input_pipeline.tfds_source import load_tfds_cifar, official_order
from tests.fake_data import mock_tfds_cifar, official_index


@pytest.mark.slow
def test_lt_subset_from_jpeg_lists_equals_subset_from_tfds(shared_data):
  _, labels = ip.read_list_file(
      str(shared_data / 'cifar10-jpeg' / 'train.txt'), 10
  )
  from_lists = ip.long_tail_indices(labels, 100)

  tfds_order = np.random.default_rng(1).permutation(len(labels))
  with mock_tfds_cifar({'train': (labels, tfds_order)}):
    train = load_tfds_cifar('cifar10', 'train', data_dir='/unused')
  np.testing.assert_array_equal(
      official_index(train.images), np.arange(len(labels))
  )
  np.testing.assert_array_equal(train.labels, labels)
  subset = train.subset(ip.long_tail_indices(train.labels, 100))
  np.testing.assert_array_equal(official_index(subset.images), from_lists)
  assert (
      subset.class_counts().tolist()
      == ip.long_tail_counts(5000, 10, 100).tolist()
  )


def test_unprepared_dataset_fails_at_once_with_instructions(tmp_path):
  with pytest.raises(
      ip.DataError, match=r'cifar100 is not prepared.*tfds build cifar100'
  ):
    load_tfds_cifar('cifar100', 'train', data_dir=str(tmp_path))


def test_ids_without_official_index_are_rejected():
  with pytest.raises(ip.DataError, match="id 'abc' is not of the form"):
    official_order(np.array([b'train_00001', b'abc']), 'cifar10:train')
  with pytest.raises(ip.DataError, match='not 0..1 exactly once'):
    official_order(np.array([b'train_00001', b'train_00001']), 'cifar10:train')
