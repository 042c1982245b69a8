"""Fixtures: generated JPEG datasets and the shared real list files."""

import io
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from input_pipeline.sources import open_file

SHARED_DATA = pathlib.Path(
    os.environ.get(
        'NBN_SHARED_DATA', pathlib.Path(__file__).parents[3] / 'shared' / 'data'
    )
)


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """../shared/data (real list files, CIFAR-10 JPEG lists).

  Outside the project's machines it may be absent: the tests that need it
  skip then, unless NBN_REQUIRE_SHARED_DATA=1 (set by .ci/run) turns its
  absence into a failure.
  """
  if not SHARED_DATA.is_dir():
    message = f'shared data folder {SHARED_DATA} not found'
    if os.environ.get('NBN_REQUIRE_SHARED_DATA'):
      pytest.fail(message)
    pytest.skip(message)
  return SHARED_DATA


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
    paths: list[str],
    labels: list[int],
    list_file: str,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> None:
  """Writes a JPEG per path under `root` and the list file, locally or via
  tf.io.gfile for URLs such as ram://."""
  rng = np.random.default_rng(seed)
  for path in paths:
    full = f'{root}/{path}'
    if '://' not in full:
      os.makedirs(os.path.dirname(full), exist_ok=True)
    with open_file(full, 'wb') as f:
      f.write(jpeg_bytes(random_image(rng, *size)))
  with open_file(list_file, 'w') as f:
    f.write(''.join(f'{p} {l}\n' for p, l in zip(paths, labels)))


@pytest.fixture
def jpeg_dataset(tmp_path):
  """Factory: (num_per_class counts, size) -> (list_file, image_root)."""

  def make(counts, size=(40, 48), root=None, name='train'):
    root = root or str(tmp_path / 'images')
    paths, labels = [], []
    for label, count in enumerate(counts):
      for i in range(count):
        paths.append(f'{name}/class{label}/{i:04d}.jpg')
        labels.append(label)
    list_file = (
        f'{root}/{name}.txt' if '://' in root else str(tmp_path / f'{name}.txt')
    )
    write_jpeg_dataset(root, paths, labels, list_file, size)
    return list_file, root

  return make
