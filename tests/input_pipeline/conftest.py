"""Fixtures: generated JPEG list datasets and the shared real list files."""

import os
import pathlib

import pytest

from tests.fake_data import write_jpeg_dataset

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


@pytest.fixture
def jpeg_dataset(tmp_path):
  """Factory: (per-class counts, ...) -> (list_file, image_root)."""

  def make(counts, size=(40, 48), root=None, name='train'):
    root = root or str(tmp_path / 'images')
    if '://' in root:
      list_file = f'{root}/{name}.txt'
    else:
      list_file = str(tmp_path / f'{name}.txt')
    write_jpeg_dataset(root, list_file, counts, split=name, size=size)
    return list_file, root

  return make
