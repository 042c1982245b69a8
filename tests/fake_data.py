"""Small generated datasets for tests: JPEG folders with list files, and a
mock TFDS CIFAR whose images encode their official index."""

import io
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline.files import open_file


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def random_image(
    rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
  """Smooth random colours, so JPEG round trips stay close."""
  small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  return np.asarray(
      Image.fromarray(small).resize((width, height), Image.BILINEAR)
  )


def write_jpeg_dataset(
    root: str,
    list_file: str,
    counts: list[int],
    split: str = 'train',
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> None:
  """Writes counts[c] JPEGs of class c under `root` and their list file.

  Paths are ``{split}/class{c}/{i:04d}.jpg``; `root` and `list_file` may be
  local paths or URLs such as ram://, written through tf.io.gfile.
  """
  rng = np.random.default_rng(seed)
  lines = []
  for label, count in enumerate(counts):
    for i in range(count):
      path = f'{split}/class{label}/{i:04d}.jpg'
      full = f'{root}/{path}'
      if '://' not in full:
        os.makedirs(os.path.dirname(full), exist_ok=True)
      with open_file(full, 'wb') as f:
        f.write(jpeg_bytes(random_image(rng, *size)))
      lines.append(f'{path} {label}\n')
  with open_file(list_file, 'w') as f:
    f.write(''.join(lines))


def mock_tfds_cifar(splits: dict[str, tuple[np.ndarray, np.ndarray]]):
  """Mocks TFDS so cifar10/cifar100 splits hold the given examples.

  Args:
    splits: {'train': (labels, tfds_order), 'test': ...}: the labels in
      official order, and the order TFDS stores them in. Each image's first
      two pixels encode its official index (low byte, high byte).

  Returns:
    the `tfds.testing.mock_data` context manager.
  """

  def as_dataset(builder, split, *args, **kwargs):
    del builder, args, kwargs
    labels, order = splits[str(split)]
    ids = tf.constant([f'{split}_{i:05d}' for i in range(len(labels))])
    order_t, labels_t = tf.constant(order), tf.constant(labels, tf.int64)

    def example(position):
      i = order_t[position]
      pixels = tf.cast(tf.stack([i % 256, i // 256, 0]), tf.uint8)
      image = tf.pad(pixels[None, None, :], [[0, 31], [0, 31], [0, 0]])
      return {'id': ids[i], 'image': image, 'label': labels_t[i]}

    return tf.data.Dataset.range(len(order)).map(example)

  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def official_index(images: np.ndarray) -> np.ndarray:
  """The official index a `mock_tfds_cifar` image encodes."""
  return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)
