"""CIFAR from TFDS: official order from the ids, and the same LT subset as the
JPEG copy's lists."""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

import input_pipeline as ip
from input_pipeline import tfds_source
from input_pipeline.tfds_source import load_tfds_cifar, official_order
from tests.fake_data import mock_tfds_cifar, official_index

# The probe itself: tests/conftest.py replaces it in every test.
can_download = tfds_source.can_download


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
  """Offline (tests/conftest.py: the host is unreachable)."""
  with pytest.raises(ip.DataError) as error:
    load_tfds_cifar('cifar100', 'train', data_dir=str(tmp_path))
  message = str(error.value)
  assert message.startswith(
      f"TFDS dataset cifar100 is not prepared in data_dir='{tmp_path}' and "
      'cannot be downloaded here (no connection to www.cs.toronto.edu). '
      'Prepare it once on a machine with internet access: `tfds build '
      'cifar100 --data_dir=DIR`'
  )
  assert '\n' not in message


class _Builders:
  """tfds.builder's stand-in: records each preparation it is asked for;
  `failure`, if set, is what download_and_prepare raises."""

  def __init__(self, failure=None):
    self.prepared = []
    self.failure = failure

  def __call__(self, name, data_dir=None):
    def download_and_prepare():
      if self.failure is not None:
        raise self.failure
      self.prepared.append((name, data_dir))

    return type('Builder', (), {'download_and_prepare': download_and_prepare})


def _unprepared_until_built(monkeypatch, builders):
  """tfds.load (mocked data) says 'not prepared' until `builders` prepared
  the dataset, as TFDS does for a data_dir without it."""
  load = tfds.load

  def loading(name, **kwargs):
    if not builders.prepared:
      raise AssertionError(f'Dataset {name}: could not find data.')
    return load(name, **kwargs)

  monkeypatch.setattr(tfds, 'load', loading)
  monkeypatch.setattr(tfds, 'builder', builders)


def test_an_unprepared_dataset_is_prepared_where_it_can_be_downloaded(
    monkeypatch, tmp_path
):
  monkeypatch.setattr(tfds_source, 'can_download', lambda *args: True)
  builders = _Builders()
  labels = np.repeat(np.arange(10), 3)
  with mock_tfds_cifar({'train': (labels, np.arange(30))}):
    _unprepared_until_built(monkeypatch, builders)
    train = load_tfds_cifar('cifar10', 'train', data_dir=str(tmp_path))
  assert builders.prepared == [('cifar10', str(tmp_path))]
  np.testing.assert_array_equal(train.labels, labels)


def test_a_failed_preparation_is_one_line_naming_the_cause(
    monkeypatch, tmp_path
):
  monkeypatch.setattr(tfds_source, 'can_download', lambda *args: True)
  builders = _Builders(OSError('No space left on device\n(more)'))
  with mock_tfds_cifar({'train': (np.arange(10), np.arange(10))}):
    _unprepared_until_built(monkeypatch, builders)
    with pytest.raises(ip.DataError) as error:
      load_tfds_cifar('cifar10', 'train', data_dir=str(tmp_path))
  assert str(error.value) == (
      f'preparing TFDS dataset cifar10 in data_dir={tmp_path} failed '
      '(OSError: No space left on device); check the network and the free '
      'space, or prepare it on another machine (`tfds build cifar10 '
      '--data_dir=DIR`) and pass data_dir=DIR.'
  )


def test_offline_nothing_is_prepared(monkeypatch, tmp_path):
  builders = _Builders()
  with mock_tfds_cifar({'train': (np.arange(10), np.arange(10))}):
    _unprepared_until_built(monkeypatch, builders)
    with pytest.raises(ip.DataError, match='cannot be downloaded here'):
      load_tfds_cifar('cifar10', 'train', data_dir=str(tmp_path))
  assert builders.prepared == []


def test_a_host_is_reachable_when_a_connection_to_it_opens():
  """On this machine's loopback interface: no network is touched."""
  with socket.socket() as listening:
    listening.bind(('127.0.0.1', 0))
    listening.listen()
    port = listening.getsockname()[1]
    assert can_download(('127.0.0.1', port), timeout=5)
  assert not can_download(('127.0.0.1', port), timeout=5)  # closed


def test_ids_without_official_index_are_rejected():
  with pytest.raises(ip.DataError, match="id 'abc' is not of the form"):
    official_order(np.array([b'train_00001', b'abc']), 'cifar10:train')
  with pytest.raises(ip.DataError, match='not 0..1 exactly once'):
    official_order(np.array([b'train_00001', b'train_00001']), 'cifar10:train')
