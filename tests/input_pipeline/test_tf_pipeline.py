"""The tf.data pipelines: batches, host sharding, exact eval, resumption."""

import itertools
import os

import numpy as np
import pytest

import input_pipeline as ip
from input_pipeline import tf_pipeline
from input_pipeline.datasets import Preprocessing

IMAGENET_STYLE = Preprocessing(
    'imagenet', image_size=32, resize_size=36, color_jitter=0.4
)


def _indexed_split(num_examples, num_classes=4):
  """In-memory 8x8 images whose corner pixels encode their index (both top
  corners, so a horizontal flip keeps it readable)."""
  index = np.arange(num_examples)
  images = np.zeros((num_examples, 8, 8, 3), np.uint8)
  images[:, 0, ::7, 0] = (index % 256)[:, None]
  images[:, 0, ::7, 1] = (index // 256)[:, None]
  labels = (index % num_classes).astype(np.int32)
  return ip.Split('indexed', labels, num_classes, images=images)


def _index_of(images):
  return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)


def _take(dataset, n):
  return list(itertools.islice(tf_pipeline.as_numpy(dataset), n))


def _train(split, p, batch, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  return tf_pipeline.train_dataset(split, p, global_batch_size=batch, **kwargs)


class TestListFilePipeline:

  @pytest.mark.slow
  @pytest.mark.parametrize('root', [None, 'ram://pipeline-test'])
  def test_batches_of_generated_jpegs(self, jpeg_dataset, root):
    list_file, image_root = jpeg_dataset([6, 3, 1], size=(50, 70), root=root)
    split = ip.load_list_split(list_file, image_root, 3)
    (batch,) = _take(_train(split, IMAGENET_STYLE, 4), 1)
    assert batch['image'].shape == (4, 32, 32, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['label'].dtype == np.int32
    assert set(batch['label']) <= {0, 1, 2}
    assert batch['image'].max() > 100 and batch['image'].std() > 10

    dataset, num_batches = tf_pipeline.eval_dataset(
        split,
        IMAGENET_STYLE,
        global_batch_size=4,
        process_index=0,
        process_count=1,
    )
    batches = _take(dataset, 10)
    assert num_batches == len(batches) == 3
    labels = np.concatenate([b['label'] for b in batches])
    mask = np.concatenate([b['mask'] for b in batches])
    np.testing.assert_array_equal(labels[mask], split.labels)
    assert mask.tolist() == [True] * 10 + [False] * 2

  def test_missing_image_at_read_time_names_it(self, jpeg_dataset, tmp_path):
    list_file, root = jpeg_dataset([2, 2])
    split = ip.load_list_split(list_file, root, 2, check_images=False)
    os.remove(tmp_path / 'images' / 'train' / 'class0' / '0001.jpg')
    with pytest.raises(ip.DataError, match='missing.*class0/0001.jpg'):
      _take(
          _train(split, IMAGENET_STYLE, 4, sampler=ip.SamplerSpec('instance')),
          3,
      )


class TestHostSharding:

  def test_hosts_split_each_global_batch_of_the_single_host_stream(self):
    split = _indexed_split(100)
    p = Preprocessing('cifar', crop_padding=0)  # flips only: index survives
    one = _take(_train(split, p, 12, seed=5), 4)
    hosts = [
        _take(_train(split, p, 12, seed=5, process_index=h, process_count=2), 4)
        for h in range(2)
    ]
    for step in range(4):
      first, second = hosts[0][step], hosts[1][step]
      assert first['label'].shape == (6,)
      shards = np.concatenate([first['image'], second['image']])
      np.testing.assert_array_equal(shards, one[step]['image'])
      assert not set(_index_of(first['image'])) & set(
          _index_of(second['image'])
      )

  @pytest.mark.parametrize(
      'num_examples, per_host, hosts', [(1003, 64, 3), (10, 4, 2)]
  )
  def test_eval_sees_every_example_exactly_once(
      self, num_examples, per_host, hosts
  ):
    split = _indexed_split(num_examples)
    seen, batch_counts = [], set()
    for h in range(hosts):
      dataset, num_batches = tf_pipeline.eval_dataset(
          split,
          Preprocessing('none'),
          global_batch_size=per_host * hosts,
          process_index=h,
          process_count=hosts,
      )
      batches = _take(dataset, num_batches + 1)
      assert len(batches) == num_batches
      batch_counts.add(num_batches)
      for batch in batches:
        assert batch['image'].shape[0] == per_host
        index = _index_of(batch['image'])[batch['mask']]
        np.testing.assert_array_equal(
            batch['label'][batch['mask']], split.labels[index]
        )
        seen.extend(index)
    assert len(batch_counts) == 1  # every host runs the same number of steps
    np.testing.assert_array_equal(np.sort(seen), np.arange(num_examples))

  def test_batch_not_divisible_by_hosts_is_a_clear_error(self):
    with pytest.raises(
        ip.DataError, match='batch_size=64 is not divisible by the 3 processes'
    ):
      _train(_indexed_split(10), Preprocessing('none'), 64, process_count=3)


class TestDeterminism:

  @pytest.mark.parametrize('sampler', ['instance', 'class_aware'])
  def test_stream_from_step_k_is_the_tail_of_the_stream_from_zero(
      self, sampler
  ):
    split = _indexed_split(50)
    p = Preprocessing('cifar', crop_padding=2)
    spec = ip.SamplerSpec(sampler)
    full = _take(_train(split, p, 8, seed=3, sampler=spec), 12)
    resumed = _take(_train(split, p, 8, seed=3, sampler=spec, start_step=7), 5)
    for a, b in zip(full[7:], resumed):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
    other_seed = _take(_train(split, p, 8, seed=4, sampler=spec), 1)[0]
    assert not np.array_equal(other_seed['image'], full[0]['image'])

  def test_augmented_jpeg_stream_resumes_exactly(self, jpeg_dataset):
    list_file, root = jpeg_dataset([4, 4])
    split = ip.load_list_split(list_file, root, 2)
    full = _take(_train(split, IMAGENET_STYLE, 2, seed=1), 6)
    resumed = _take(_train(split, IMAGENET_STYLE, 2, seed=1, start_step=4), 2)
    for a, b in zip(full[4:], resumed):
      np.testing.assert_array_equal(a['image'], b['image'])
