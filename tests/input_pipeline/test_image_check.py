"""Image files checked before training, and named when tf.data fails."""

import io
import os
import struct

import numpy as np
import pytest
from PIL import Image

import input_pipeline as ip
from input_pipeline import image_check
from input_pipeline.tf_pipeline import as_numpy, eval_dataset
from tests.fake_data import jpeg_bytes, random_image


def _truncate(path, fraction=0.9):
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[: int(len(data) * fraction)])


@pytest.fixture
def split(jpeg_dataset):
  list_file, root = jpeg_dataset([3, 3])
  return ip.load_list_split(list_file, root, 2, name='toy:train')


def _file(split, i):
  return os.path.join(split.image_root, split.paths[i])


class TestFileProblem:

  def test_a_good_jpeg_and_png(self, tmp_path):
    image = random_image(np.random.default_rng(0), 20, 30)
    Image.fromarray(image).save(tmp_path / 'a.png')
    (tmp_path / 'b.jpg').write_bytes(jpeg_bytes(image))
    # Bytes after the end marker are ignored by TensorFlow's decoder too.
    (tmp_path / 'c.jpg').write_bytes(jpeg_bytes(image) + b'\0' * 100)
    for name in ('a.png', 'b.jpg', 'c.jpg'):
      assert image_check.file_problem(str(tmp_path / name)) is None

  @pytest.mark.parametrize(
      'make, problem',
      [
          (lambda p: None, 'missing'),
          (lambda p: p.write_bytes(b''), 'empty file'),
          (lambda p: p.write_text('<html>'), 'not an image (no known header)'),
          (lambda p: p.write_bytes(JPEG[:200]), 'header is cut short'),
          (lambda p: p.write_bytes(JPEG[: len(JPEG) // 2]), 'truncated JPEG'),
          (lambda p: p.write_bytes(JPEG[:-2]), 'truncated JPEG'),
          (lambda p: p.write_bytes(PNG[:-20]), 'truncated PNG'),
          # The thumbnail's end marker does not hide a cut scan.
          (lambda p: p.write_bytes(THUMBNAILED[:-20]), 'truncated JPEG'),
          (
              lambda p: p.write_bytes(TIFF),
              'TIFF image; tf.data decodes only JPEG',
          ),
      ],
  )
  def test_files_tf_data_cannot_decode(self, tmp_path, make, problem):
    path = tmp_path / 'x.jpg'
    make(path)
    assert problem in image_check.file_problem(str(path))

  def test_the_check_agrees_with_tensorflow(self, tmp_path):
    cases = {
        'good.jpg': JPEG,
        'trailing.jpg': JPEG + b'\0' * 10,
        'cut.jpg': JPEG[:-2],
        'half.jpg': JPEG[: len(JPEG) // 2],
        'good.png': PNG,
        'cut.png': PNG[:-20],
        'thumbnailed.jpg': THUMBNAILED,
        'thumbnailed_cut.jpg': THUMBNAILED[:-20],
    }
    for name, data in cases.items():
      (tmp_path / name).write_bytes(data)
      path = str(tmp_path / name)
      assert (image_check.file_problem(path) is None) == (
          image_check.decode_problem(path) is None
      ), name


def _encoded(format_):
  """A 64x64 noise image: mostly pixel data, little header."""
  image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=format_)
  return buffer.getvalue()


JPEG, PNG, TIFF = _encoded('JPEG'), _encoded('PNG'), _encoded('TIFF')


def _with_thumbnail():
  """A small JPEG carrying a JPEG thumbnail (a JFIF extension, JFXX) in its
  header: the thumbnail's end marker precedes the image's scan."""
  rng = np.random.default_rng(2)
  image = jpeg_bytes(random_image(rng, 48, 48))
  payload = b'JFXX\x00\x10' + jpeg_bytes(random_image(rng, 8, 8))
  app0 = b'\xff\xe0' + struct.pack('>H', len(payload) + 2) + payload
  data = image[:2] + app0 + image[2:]
  assert len(data) < image_check.TAIL_BYTES  # the tail read covers it all
  return data


THUMBNAILED = _with_thumbnail()


class TestCheckImages:

  def test_a_truncated_jpeg_is_refused_with_its_path(self, split, tmp_path):
    _truncate(_file(split, 4))
    with pytest.raises(
        ip.DataError,
        match=r'toy:train: 1 of 6 image files cannot be decoded, e.g. '
        r'.*train/class1/0001.jpg: truncated JPEG',
    ) as error:
      image_check.check_images(split, cache_dir=str(tmp_path / 'cache'))
    assert '\n' not in str(error.value)
    assert not (tmp_path / 'cache').exists()  # failures are not cached

  def test_counts_every_bad_file(self, split):
    os.remove(_file(split, 0))
    _truncate(_file(split, 5), 0.5)
    with pytest.raises(ip.DataError, match='2 of 6 image files.*0000.jpg'):
      image_check.check_images(split, cache_dir='', workers=3)

  def test_a_passed_check_is_cached_and_not_repeated(self, split, tmp_path):
    cache = str(tmp_path / 'cache')
    image_check.check_images(split, cache_dir=cache)
    assert len(os.listdir(cache)) == 1
    _truncate(_file(split, 2))  # not seen: the cached result stands
    image_check.check_images(split, cache_dir=cache)
    # Another list (or root) is another cache entry.
    with pytest.raises(ip.DataError, match='truncated'):
      image_check.check_images(split.subset(np.array([2, 3])), cache_dir=cache)

  def test_hosts_writing_the_cache_at_once_both_finish(
      self, split, tmp_path, monkeypatch
  ):
    cache = str(tmp_path / 'cache')
    real_replace = os.replace
    replaced = []

    def another_host_writes_first(source, target):
      if not replaced:  # this host is about to write: another one does too
        replaced.append(source)
        image_check.check_images(split, cache_dir=cache)
      real_replace(source, target)

    monkeypatch.setattr(os, 'replace', another_host_writes_first)
    image_check.check_images(split, cache_dir=cache)
    assert len(os.listdir(cache)) == 1 and not replaced[0].endswith('.json')

  def test_in_memory_splits_have_nothing_to_check(self):
    split = ip.Split(
        'mem', np.array([0]), 1, images=np.zeros((1, 2, 2, 3), np.uint8)
    )
    image_check.check_images(split, cache_dir='')


class TestNamingBadImages:

  def test_an_undecodable_test_image_is_named_during_evaluation(
      self, jpeg_dataset
  ):
    list_file, root = jpeg_dataset([4, 4], name='test')
    split = ip.load_list_split(list_file, root, 2, name='toy:test')
    # Corrupt the middle of the pixel data: the header check cannot see it.
    path = _file(split, 5)
    data = bytearray(JPEG)
    data[len(data) // 2 : len(data) // 2 + 64] = b'\xff' * 64
    open(path, 'wb').write(bytes(data))
    assert image_check.file_problem(path) is None
    preprocessing = ip.Preprocessing('imagenet', image_size=16, resize_size=16)
    dataset, _ = eval_dataset(
        split,
        preprocessing,
        global_batch_size=4,
        process_index=0,
        process_count=1,
    )
    batches = image_check.naming_bad_images(
        as_numpy(dataset), split, lambda k: range(4 * k, 4 * k + 4)
    )
    first = next(batches)
    assert first['image'].shape == (4, 16, 16, 3)
    with pytest.raises(
        ip.DataError,
        match=r'toy:test: .*test/class1/0001.jpg cannot be decoded',
    ) as error:
      next(batches)
    assert '\n' not in str(error.value)
