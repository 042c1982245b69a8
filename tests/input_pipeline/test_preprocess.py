"""Augmentation ops: geometry, ranges and determinism of each recipe."""

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import preprocess
from input_pipeline.datasets import Preprocessing
from tests.fake_data import jpeg_bytes
from tests.input_pipeline import crops


def _seed(i):
  return tf.constant([0, i], tf.int64)


def _ramp_jpeg(height, width):
  """R grows left to right, G top to bottom: a crop's extent is readable."""
  x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
  y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
  image = np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8)
  return tf.constant(jpeg_bytes(image, quality=100))


class TestCifar:

  def _augment(self, images, positions, batch=64, seed=0):
    return preprocess.pad_crop_flip_batch(
        tf.constant(images), tf.constant(positions, tf.int64), batch, seed, 4
    ).numpy()

  def test_each_output_is_a_shifted_window_of_its_padded_image(self):
    images = (
        np.random.default_rng(0)
        .integers(1, 256, (64, 32, 32, 3))
        .astype(np.uint8)
    )
    out = self._augment(images, np.arange(64 * 3, 64 * 4))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    seen_offsets, flips = set(), 0
    for image, window in zip(padded, out):
      matches = [
          (dy, dx, flip)
          for dy in range(9)
          for dx in range(9)
          for flip in (False, True)
          if np.array_equal(
              image[dy : dy + 32, dx : dx + 32][:, :: -1 if flip else 1], window
          )
      ]
      assert len(matches) == 1
      seen_offsets.add(matches[0][:2])
      flips += matches[0][2]
    assert len(seen_offsets) > 35  # of 81 possible, from 64 draws
    assert 16 < flips < 48

  def test_an_example_crop_depends_only_on_seed_and_position(self):
    images = (
        np.random.default_rng(0)
        .integers(0, 256, (8, 32, 32, 3))
        .astype(np.uint8)
    )
    positions = np.arange(64, 72)  # step 1 of a global batch of 64
    whole = self._augment(images, positions)
    # The same examples read as two hosts' halves.
    halves = np.concatenate([
        self._augment(images[:4], positions[:4]),
        self._augment(images[4:], positions[4:]),
    ])
    np.testing.assert_array_equal(whole, halves)
    assert not np.array_equal(whole, self._augment(images, positions, seed=1))
    assert not np.array_equal(whole, self._augment(images, positions + 64))


class TestImageNet:

  def test_random_resized_crop_area_and_aspect(self):
    height, width = 300, 400
    image_bytes = _ramp_jpeg(height, width)
    areas = []
    for i in range(30):
      out = preprocess.random_resized_crop(
          image_bytes, _seed(i), 64, 0.08
      ).numpy()
      assert out.shape == (64, 64, 3)
      w = (out[..., 0].max() - out[..., 0].min()) / 255 * width
      h = (out[..., 1].max() - out[..., 1].min()) / 255 * height
      area = w * h / (width * height)
      assert 0.06 < area <= 1.02
      assert 0.7 < w / h < 1.4
      areas.append(area)
    assert min(areas) < 0.4 and max(areas) > 0.6

  def test_color_jitter_factors_by_hand(self):
    # On a grey image contrast and saturation do nothing: out = grey * b.
    grey = tf.fill([4, 4, 3], 100.0)
    ratios = [
        float(preprocess.color_jitter(grey, _seed(i), 0.4)[0, 0, 0]) / 100
        for i in range(200)
    ]
    assert 0.6 <= min(ratios) < 0.65 and 1.35 < max(ratios) <= 1.4
    colour = tf.constant(
        np.random.default_rng(0).uniform(0, 255, (4, 4, 3)), tf.float32
    )
    np.testing.assert_allclose(
        preprocess.color_jitter(colour, _seed(1), 0.0), colour, atol=1e-4
    )

  def test_eval_resizes_the_shorter_side_and_crops_the_centre(self):
    out = preprocess.resize_center_crop(_ramp_jpeg(375, 500), 256, 224).numpy()
    assert out.shape == (224, 224, 3)
    # Width 500 -> 341 after resize; the centre 224 columns span 224/341.
    span = (out[..., 0].max() - out[..., 0].min()) / 255
    assert span == pytest.approx(224 / 341, abs=0.02)
    assert (out[..., 0].max() + out[..., 0].min()) / 2 == pytest.approx(
        127.5, abs=3
    )


class TestRecipes:

  @pytest.mark.parametrize('kind', ['cifar', 'none'])
  def test_in_memory_recipes_keep_size_and_dtype(self, kind):
    images = tf.constant(
        np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)), tf.uint8
    )
    augment = preprocess.batch_train_fn(
        Preprocessing(kind, crop_padding=1), 4, 0
    )
    out = augment(images, tf.range(4, dtype=tf.int64))
    assert out.shape == (4, 8, 8, 1) and out.dtype == tf.uint8
    if kind == 'none':
      np.testing.assert_array_equal(out, images)

  def test_imagenet_recipe_is_for_files(self):
    with pytest.raises(
        ValueError, match="kind='imagenet' works on image files"
    ):
      preprocess.batch_train_fn(Preprocessing('imagenet'), 4, 0)

  def test_imagenet_recipe_reads_files(self, tmp_path):
    path = tmp_path / 'a.jpg'
    path.write_bytes(_ramp_jpeg(60, 80).numpy())
    example = {'path': tf.constant(str(path))}
    p = Preprocessing(
        'imagenet', image_size=32, resize_size=40, color_jitter=0.4
    )
    train = preprocess.train_fn(p)(example, _seed(0))
    test = preprocess.eval_fn(p)(example)
    assert train.shape == test.shape == (32, 32, 3)
    assert train.dtype == test.dtype == tf.uint8


def test_cifar_crop_takes_every_offset_and_flips_half():
  """The tf.data crop is pinned to the on-device one's distribution
  (`test_on_device`): offsets 0..2 * padding on both axes, flip 1/2."""
  padding, batch = 4, 512
  augmented = preprocess.pad_crop_flip_batch(
      tf.constant(crops.position_coded_images(batch)),
      tf.range(batch, dtype=tf.int64),
      batch,
      seed=0,
      padding=padding,
  ).numpy()
  offsets, flips = crops.crop_offsets_and_flips(augmented, padding)
  for axis in (0, 1):
    assert set(offsets[:, axis]) == set(range(2 * padding + 1))
  assert 0.4 < flips.mean() < 0.6
