"""The on-device path: same class distributions as tf.data, per-step
determinism, sharding, augmentation and normalisation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from scipy import stats

import input_pipeline as ip
from input_pipeline import on_device, tf_pipeline
from input_pipeline.datasets import Preprocessing
from tests.input_pipeline import crops

COUNTS = ip.long_tail_counts(100, 6, 20)  # 100 ... 5
BATCH = 64
STEPS = 60


def _split():
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(6), COUNTS))
  images = np.zeros((len(labels), 4, 4, 1), np.uint8)
  images[..., 0] = labels[:, None, None]  # the label, readable after a batch
  return ip.Split('toy-lt', labels.astype(np.int32), 6, images=images)


def _batch_sharding(devices=1, axis_type=AxisType.Auto):
  mesh = jax.make_mesh(
      (devices,),
      ('data',),
      axis_types=(axis_type,),
      devices=jax.devices()[:devices],
  )
  return NamedSharding(mesh, P('data'))


def _device_labels(split, spec, sharding, key=0, steps=STEPS):
  data = on_device.put_on_devices(split, spec, sharding)
  sample = jax.jit(
      lambda d, s: on_device.sample_batch(d, jax.random.key(key), s, BATCH)
  )
  return np.concatenate([np.asarray(sample(data, s)[1]) for s in range(steps)])


def _tf_data_labels(split, spec):
  dataset = tf_pipeline.train_dataset(
      split,
      Preprocessing('none'),
      global_batch_size=BATCH,
      sampler=spec,
      process_index=0,
      process_count=1,
  )
  batches = itertools.islice(tf_pipeline.as_numpy(dataset), STEPS)
  return np.concatenate([b['label'] for b in batches])


def _homogeneity_pvalue(a, b):
  table = np.stack([np.bincount(a, minlength=6), np.bincount(b, minlength=6)])
  return stats.chi2_contingency(table).pvalue


@pytest.mark.parametrize('sampler', ip.SAMPLERS)
def test_class_distribution_equals_the_tf_data_path(sampler):
  split = _split()
  spec = ip.SamplerSpec(sampler, num_epochs=4)
  device = _device_labels(split, spec, _batch_sharding())
  host = _tf_data_labels(split, spec)
  assert _homogeneity_pvalue(device, host) > 1e-3


def test_the_comparison_tells_samplers_apart():
  split = _split()
  device = _device_labels(split, ip.SamplerSpec('class'), _batch_sharding())
  host = _tf_data_labels(split, ip.SamplerSpec('instance'))
  assert _homogeneity_pvalue(device, host) < 1e-12


def test_instance_sampler_visits_every_example_once_per_epoch():
  split = _split()
  data = on_device.put_on_devices(split, ip.SamplerSpec(), _batch_sharding())
  n = len(split)
  steps = np.arange(3 * n // BATCH + 1)
  indices = jax.jit(
      jax.vmap(
          lambda s: on_device.sample_indices(data, jax.random.key(1), s, BATCH)
      )
  )(steps).ravel()
  for epoch in range(3):
    np.testing.assert_array_equal(
        np.sort(indices[epoch * n : (epoch + 1) * n]), np.arange(n)
    )


def test_class_aware_groups_share_a_class():
  labels = _device_labels(
      _split(), ip.SamplerSpec('class_aware'), _batch_sharding(), steps=5
  )
  groups = labels.reshape(-1, 4)
  assert (groups == groups[:, :1]).all()


def test_eight_device_sharding_gives_the_one_device_batch():
  split = _split()
  spec = ip.SamplerSpec('sqrt')
  one = on_device.put_on_devices(split, spec, _batch_sharding(1))
  eight = on_device.put_on_devices(split, spec, _batch_sharding(8))
  assert eight.images.sharding.spec == P('data')
  assert eight.images.shape[0] % 8 == 0

  @jax.jit
  def sample(data):
    key = jax.random.key(0)
    images, labels = on_device.sample_batch(data, key, 17, BATCH)
    return on_device.random_crop_flip(images, key, 1), labels

  images_one, labels_one = sample(one)
  images_eight, labels_eight = sample(eight)
  assert images_eight.sharding.spec[0] == 'data'
  np.testing.assert_array_equal(labels_one, labels_eight)
  np.testing.assert_array_equal(images_one, images_eight)
  assert set(np.asarray(images_eight).ravel()) <= set(
      np.asarray(labels_eight)
  ) | {0}


def test_a_two_axis_mesh_shards_over_both_axes_and_gives_the_same_batch():
  """The BN-group mesh ('replica', 'bn_group') is a data layout too."""
  split, spec = _split(), ip.SamplerSpec('instance')
  mesh = jax.make_mesh((4, 2), ('replica', 'bn_group'), (AxisType.Auto,) * 2)
  grouped = on_device.put_on_devices(
      split, spec, NamedSharding(mesh, P(('replica', 'bn_group')))
  )
  one = on_device.put_on_devices(split, spec, _batch_sharding(1))
  assert grouped.images.sharding.spec == P(('replica', 'bn_group'))
  sample = jax.jit(
      lambda d: on_device.sample_batch(d, jax.random.key(3), 5, BATCH)
  )
  for a, b in zip(sample(grouped), sample(one)):
    np.testing.assert_array_equal(a, b)


def test_explicit_mesh_axes_are_a_clear_error():
  with pytest.raises(
      ValueError, match=r"needs mesh axes \['data'\] of type AxisType.Auto"
  ):
    on_device.put_on_devices(
        _split(), ip.SamplerSpec(), _batch_sharding(1, AxisType.Explicit)
    )


def test_a_step_depends_only_on_key_and_step():
  data = on_device.put_on_devices(
      _split(), ip.SamplerSpec('class'), _batch_sharding()
  )
  sample = jax.jit(
      lambda k, s: on_device.sample_indices(data, jax.random.key(k), s, BATCH)
  )
  np.testing.assert_array_equal(sample(0, 5), sample(0, 5))
  assert not np.array_equal(sample(0, 5), sample(0, 6))
  assert not np.array_equal(sample(0, 5), sample(1, 5))


def test_random_crop_flip_is_a_window_of_the_padded_image():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (64, 8, 8, 3)).astype(np.uint8)
  out = np.asarray(
      on_device.random_crop_flip(jnp.asarray(images), jax.random.key(0), 2)
  )
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  flips = 0
  for image, window in zip(padded, out):
    matches = [
        flip
        for dy in range(5)
        for dx in range(5)
        for flip in (0, 1)
        if np.array_equal(
            image[dy : dy + 8, dx : dx + 8][:, :: -1 if flip else 1], window
        )
    ]
    assert len(matches) == 1
    flips += matches[0]
  assert 16 < flips < 48


def test_normalize_images_by_hand():
  images = jnp.array([[[[0, 255], [51, 102]]]], jnp.uint8)  # (1, 1, 2, 2)
  out = on_device.normalize_images(images, mean=(0.5, 0.2), std=(0.25, 0.4))
  np.testing.assert_allclose(out, [[[[-2.0, 2.0], [-1.2, 0.5]]]], atol=1e-6)
  assert (
      on_device.normalize_images(
          images, (0.5,) * 2, (1.0,) * 2, jnp.bfloat16
      ).dtype
      == jnp.bfloat16
  )


def test_paths_split_is_a_clear_error():
  split = ip.Split('lists', np.array([0]), 1, paths=np.array(['a.jpg']))
  with pytest.raises(ValueError, match='needs images in memory'):
    on_device.put_on_devices(split, ip.SamplerSpec(), _batch_sharding())


@pytest.mark.parametrize('n', [1, 2, 7, 64, 1000, 12_406])
def test_shuffled_index_is_a_permutation_of_each_epoch(n):
  key = jax.random.key(3)
  index = jnp.arange(n)
  first = np.asarray(on_device.shuffled_index(index, key, 0, n))
  second = np.asarray(on_device.shuffled_index(index, key, 1, n))
  np.testing.assert_array_equal(np.sort(first), np.arange(n))
  np.testing.assert_array_equal(np.sort(second), np.arange(n))
  if n >= 64:
    assert not np.array_equal(first, second)
    assert abs(np.corrcoef(np.arange(n), first)[0, 1]) < 0.2
    # Neighbours do not stay neighbours.
    assert np.median(np.abs(np.diff(first))) > n / 20


def test_crop_takes_every_offset_and_flips_half():
  """The reference augmentation (torchvision's RandomCrop(32, padding=4) and
  RandomHorizontalFlip): offsets 0..2 * padding on both axes, flip 1/2. The
  tf.data crop is pinned to the same (`test_preprocess`)."""
  padding = 4
  augmented = on_device.random_crop_flip(
      jnp.asarray(crops.position_coded_images(512)),
      jax.random.key(0),
      padding,
  )
  offsets, flips = crops.crop_offsets_and_flips(augmented, padding)
  for axis in (0, 1):
    assert set(offsets[:, axis]) == set(range(2 * padding + 1))
  assert 0.4 < flips.mean() < 0.6
