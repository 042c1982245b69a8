"""Per-example augmentation in TensorFlow, deterministic given a seed.

Every random choice uses a stateless op keyed by the run seed and the
example's stream position, so an example's augmentation does not depend on
parallelism, on the number of hosts or on where a run resumed. Images in
memory (CIFAR) are augmented a batch at a time with vectorised ops; image
files one at a time, as they are decoded.
Outputs are uint8 images: normalisation happens on the accelerator
(`input_pipeline.on_device.normalize_images`), which moves 4x fewer bytes
than float32 and matches the reference, whose PIL transforms round to uint8.

Recipes (docs/method.md; `Preprocessing` holds the settings):
* 'cifar': zero-pad 4, random 32x32 crop, horizontal flip; eval: none. The
  on-device path has its own vectorised copy in JAX
  (`on_device.random_crop_flip`); tests pin both to every offset 0..8 on
  both axes and a flip half the time.
* 'imagenet': random-resized crop (area 8% to 100%, aspect 3/4 to 4/3),
  bilinear resize, flip, optional colour jitter (brightness, contrast,
  saturation in random order, as torchvision's ColorJitter); eval: resize the
  shorter side to 256, centre crop 224.
* 'none': images as stored (the embedded digits quickstart).
"""

import itertools

import tensorflow as tf

from input_pipeline.datasets import Preprocessing


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def pad_crop_flip_batch(
    images: tf.Tensor,
    positions: tf.Tensor,
    global_batch_size: int,
    seed: int,
    padding: int,
) -> tf.Tensor:
  """Zero-pad by `padding`, random crop back to size, flip half; per batch.

  Vectorised over the batch. The random draws of global step s are made for
  all of its B slots from the seed (seed, s), and each example takes those of
  its slot (position % B): an example's crop depends only on (seed,
  position), whichever host reads it.

  Args:
    images: (b, H, W, C) one host's batch of global step positions[0] // B.
    positions: (b,) int64 stream positions of the examples.
    global_batch_size: B.
    seed: the run seed.
    padding: pixels of zero padding on each side.
  """
  height, width = images.shape[1], images.shape[2]
  step = positions[0] // global_batch_size
  slots = positions % global_batch_size
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(
          tf.stack([tf.constant(seed, tf.int64), step]), 2
      )
  )
  offsets = tf.random.stateless_uniform(
      [global_batch_size, 2], crop_seed, 0, 2 * padding + 1, tf.int32
  )
  flips = tf.random.stateless_uniform(
      [global_batch_size], flip_seed, 0, 2, tf.int32
  )
  offsets, flips = tf.gather(offsets, slots), tf.gather(flips, slots) > 0
  padded = tf.pad(
      images, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
  )
  # One gather does crop and flip: a flipped example reads its columns
  # right to left.
  rows = offsets[:, :1] + tf.range(height)[None, :]
  columns = offsets[:, 1:] + tf.where(
      flips[:, None], tf.range(width - 1, -1, -1)[None, :], tf.range(width)
  )
  cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
  return tf.gather(cropped, columns, axis=2, batch_dims=1)


def _decode_crop(image_bytes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """Decodes only `window` (y, x, h, w) of a JPEG; other formats fully."""
  return tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3),
      lambda: tf.image.crop_to_bounding_box(
          tf.io.decode_image(image_bytes, 3, expand_animations=False),
          *tf.unstack(window),
      ),
  )


def _image_shape(image_bytes: tf.Tensor) -> tf.Tensor:
  return tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.extract_jpeg_shape(image_bytes),
      lambda: tf.shape(
          tf.io.decode_image(image_bytes, 3, expand_animations=False)
      ),
  )


def random_resized_crop(
    image_bytes: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    min_area: float,
    antialias: bool = False,
) -> tf.Tensor:
  """torchvision's RandomResizedCrop on encoded bytes -> (size, size, 3) float.

  Up to 10 tries for a crop of area in [min_area, 1] and aspect in
  [3/4, 4/3]; if none fits, the whole image (torchvision falls back to a
  centre crop of clamped aspect, which is the whole image for most photos).
  """
  shape = _image_shape(image_bytes)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(min_area, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
  )
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  image = _decode_crop(image_bytes, window)
  return tf.image.resize(image, [size, size], 'bilinear', antialias=antialias)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """torchvision's luma weights, (h, w, 1)."""
  weights = tf.constant([0.2989, 0.587, 0.114], image.dtype)
  return tf.reduce_sum(image * weights, axis=-1, keepdims=True)


def color_jitter(
    image: tf.Tensor, seed: tf.Tensor, strength: float
) -> tf.Tensor:
  """torchvision ColorJitter(b=c=s=strength) on a float image in [0, 255].

  Each factor is uniform in [max(0, 1 - strength), 1 + strength]; the three
  adjustments run in a random order and clip to [0, 255] after each.
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)
  low, high = max(0.0, 1.0 - strength), 1.0 + strength
  factors = [
      tf.random.stateless_uniform([], seeds[i], low, high) for i in range(3)
  ]

  def blend(image, other, factor):
    return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 255.0)

  adjustments = [
      lambda x: tf.clip_by_value(x * factors[0], 0.0, 255.0),  # brightness
      lambda x: blend(x, tf.reduce_mean(_grayscale(x)), factors[1]),  # contrast
      lambda x: blend(x, _grayscale(x), factors[2]),  # saturation
  ]
  orders = list(itertools.permutations(range(3)))
  order = tf.random.stateless_uniform(
      [], seeds[3], 0, len(orders), dtype=tf.int32
  )

  def apply(order):
    def run():
      x = image
      for i in order:
        x = adjustments[i](x)
      return x

    return run

  return tf.switch_case(order, [apply(o) for o in orders])


def resize_center_crop(
    image_bytes: tf.Tensor,
    resize_size: int,
    crop_size: int,
    antialias: bool = False,
) -> tf.Tensor:
  """Resize the shorter side to `resize_size`, centre crop `crop_size`."""
  image = tf.io.decode_image(image_bytes, 3, expand_animations=False)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize_size / tf.reduce_min(shape)
  new_shape = tf.cast(tf.floor(shape * scale), tf.int32)
  new_shape = tf.maximum(new_shape, resize_size)  # the short side exactly
  image = tf.image.resize(image, new_shape, 'bilinear', antialias=antialias)
  top = (new_shape[0] - crop_size) // 2
  left = (new_shape[1] - crop_size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, crop_size, crop_size)


def train_fn(p: Preprocessing):
  """(example, seed) -> uint8 image, for one list-file training example.

  `example['path']` is the image file; `seed` the example's (run seed,
  position). In-memory data is augmented per batch (`batch_train_fn`).
  """

  def preprocess(example, seed):
    if p.kind != 'imagenet':
      return _read_image(example['path'])
    crop_seed, flip_seed, jitter_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    image = random_resized_crop(
        tf.io.read_file(example['path']),
        crop_seed,
        p.image_size,
        p.min_crop_area,
        p.antialias,
    )
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if p.color_jitter:
      image = color_jitter(image, jitter_seed, p.color_jitter)
    return to_uint8(image)

  return preprocess


def batch_train_fn(p: Preprocessing, global_batch_size: int, seed: int):
  """(images, positions) -> images, for a batch of in-memory examples."""
  if p.kind == 'imagenet':
    raise ValueError(
        "preprocessing kind='imagenet' works on image files; in-memory data "
        "takes 'cifar' or 'none'."
    )

  def preprocess(images, positions):
    if p.kind == 'cifar':
      return pad_crop_flip_batch(
          images, positions, global_batch_size, seed, p.crop_padding
      )
    return images

  return preprocess


def eval_fn(p: Preprocessing):
  """example -> uint8 image, for one list-file eval example."""

  def preprocess(example):
    if p.kind == 'imagenet':
      return to_uint8(
          resize_center_crop(
              tf.io.read_file(example['path']),
              p.resize_size,
              p.image_size,
              p.antialias,
          )
      )
    return _read_image(example['path'])

  return preprocess


def _read_image(path: tf.Tensor) -> tf.Tensor:
  return tf.io.decode_image(tf.io.read_file(path), 3, expand_animations=False)
