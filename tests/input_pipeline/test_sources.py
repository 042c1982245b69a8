"""List files, image folders and archives, and CIFAR-10 from the JPEG copy."""

import io
import os
import tarfile

import numpy as np
import pytest

import input_pipeline as ip
from input_pipeline import sources
from tests.fake_data import jpeg_bytes, random_image


class TestRealListFiles:
  """The shared classifier-balancing lists, read at full size."""

  @pytest.mark.parametrize(
      'name, num_classes, lines, per_class',
      [
          ('ImageNet_LT_val.txt', 1000, 20_000, 20),
          ('ImageNet_LT_test.txt', 1000, 50_000, 50),
          ('iNaturalist18_val.txt', 8142, 24_426, 3),
          ('Places_LT_val.txt', 365, 7_300, 20),
          ('Places_LT_test.txt', 365, 36_500, 100),
      ],
  )
  def test_balanced_eval_lists(
      self, shared_data, name, num_classes, lines, per_class
  ):
    paths, labels = ip.read_list_file(
        str(shared_data / 'lt-lists' / name), num_classes
    )
    assert len(paths) == lines
    counts = ip.class_counts(labels, num_classes)
    assert (counts == per_class).all()

  def test_places_lt_train_is_long_tailed(self, shared_data):
    split = ip.load_list_split(
        str(shared_data / 'lt-lists' / 'Places_LT_train.txt'),
        image_root='unused',
        num_classes=365,
        require_all_classes=True,
        check_images=False,
    )
    counts = split.class_counts()
    assert (len(split), counts.max(), counts.min()) == (62_500, 4980, 5)
    assert [(counts > 100).sum(), (counts < 20).sum()] == [131, 71]

  def test_inaturalist_labels_beyond_the_class_count_are_rejected(
      self, shared_data
  ):
    with pytest.raises(
        ip.DataError,
        match=r'iNaturalist18_val.txt:\d+: label \d+ is outside 0..999',
    ):
      ip.read_list_file(
          str(shared_data / 'lt-lists' / 'iNaturalist18_val.txt'), 1000
      )


class TestListFileErrors:

  def test_missing_list_file_names_it_and_says_where_lists_come_from(
      self, tmp_path
  ):
    missing = tmp_path / 'ImageNet_LT_train.txt'
    with pytest.raises(
        ip.DataError,
        match=f'list file {missing} does not exist.*classifier-balancing',
    ):
      ip.read_list_file(str(missing))

  def test_malformed_line_names_file_and_line(self, tmp_path):
    list_file = tmp_path / 'train.txt'
    list_file.write_text('a/1.jpg 0\na/2.jpg\n')
    with pytest.raises(
        ip.DataError, match=r'train.txt:2: expected "relative/path label"'
    ):
      ip.read_list_file(str(list_file))

  def test_label_out_of_range_names_file_line_and_label(self, tmp_path):
    list_file = tmp_path / 'train.txt'
    list_file.write_text('a/1.jpg 0\n\nb/2.jpg 7\n')
    with pytest.raises(
        ip.DataError, match=r'train.txt:3: label 7 is outside 0..4'
    ):
      ip.read_list_file(str(list_file), num_classes=5)

  @pytest.mark.parametrize(
      'path',
      [
          '../../../etc/passwd',
          'train/../../outside.jpg',
          '..',
          '/etc/passwd',
          '/data/images/train/a.jpg',
          'gs://other-bucket/a.jpg',
      ],
  )
  def test_a_path_leaving_the_image_root_names_file_and_line(
      self, tmp_path, path
  ):
    list_file = tmp_path / 'train.txt'
    list_file.write_text(f'a/1.jpg 0\n{path} 3\n')
    with pytest.raises(
        ip.DataError,
        match=r"train.txt:2: path .* leaves image_root='/data/images'",
    ):
      ip.read_list_file(str(list_file), image_root='/data/images')

  def test_a_list_split_refuses_paths_leaving_its_root(self, jpeg_dataset):
    list_file, root = jpeg_dataset([2, 2])
    with open(list_file, 'a') as f:
      f.write('../../../etc/passwd 1\n')
    with pytest.raises(ip.DataError, match=r'train.txt:5: path .*etc/passwd'):
      ip.load_list_split(list_file, root, 2)

  def test_a_line_that_is_not_utf8_names_file_and_line(self, tmp_path):
    list_file = tmp_path / 'train.txt'
    list_file.write_bytes('a/1.jpg 0\ntrain/caf\xe9.jpg 1\n'.encode('latin-1'))
    with pytest.raises(ip.DataError) as error:
      ip.read_list_file(str(list_file))
    assert str(error.value).startswith(
        f'{list_file}:2: not UTF-8 text (byte 0xe9 at byte 10 of the line).'
    )
    assert 'iconv' in str(error.value)

  def test_utf8_names_and_a_byte_order_mark_are_read(self, tmp_path):
    list_file = tmp_path / 'train.txt'
    list_file.write_bytes('\ufeffa/1.jpg 0\ncafé/2.jpg 1\r\n'.encode('utf-8'))
    paths, labels = ip.read_list_file(str(list_file))
    assert paths.tolist() == ['a/1.jpg', 'café/2.jpg']
    assert labels.tolist() == [0, 1]

  def test_a_list_file_that_cannot_be_read_is_named(
      self, tmp_path, monkeypatch
  ):
    folder = tmp_path / 'lists'
    folder.mkdir()
    with pytest.raises(
        ip.DataError,
        match=f'^list file {folder} cannot be read .Is a directory.',
    ):
      ip.read_list_file(str(folder))

    def refused(path, mode='r'):  # what a file without read permission says
      raise PermissionError(13, 'Permission denied', path)

    monkeypatch.setattr(sources, 'open_file', refused)
    list_file = tmp_path / 'train.txt'
    list_file.write_text('a/1.jpg 0\n')
    with pytest.raises(
        ip.DataError,
        match=f'^list file {list_file} cannot be read .Permission denied.',
    ):
      ip.read_list_file(str(list_file))

  def test_repeated_images_are_kept_and_counted_in_one_warning(
      self, tmp_path, caplog
  ):
    list_file = tmp_path / 'train.txt'
    list_file.write_text(
        'a.jpg 0\nb.jpg 1\na.jpg 0\na.jpg 1\nc.jpg 0\nb.jpg 1\n'
    )
    with caplog.at_level('WARNING'):
      paths, labels = ip.read_list_file(str(list_file))
    assert paths.tolist() == [
        'a.jpg',
        'b.jpg',
        'a.jpg',
        'a.jpg',
        'c.jpg',
        'b.jpg',
    ]
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert caplog.messages == [
        f'{list_file}: 3 lines list an image listed before (the first: line 3, '
        "'a.jpg', as line 1), 1 of them with another label; each line counts "
        'as one more example.'
    ]

  def test_a_list_without_repeats_warns_nothing(self, tmp_path, caplog):
    list_file = tmp_path / 'train.txt'
    list_file.write_text('a.jpg 0\nb.jpg 0\n')
    with caplog.at_level('WARNING'):
      ip.read_list_file(str(list_file))
    assert caplog.messages == []

  def test_symlinks_under_the_root_are_followed_on_purpose(
      self, jpeg_dataset, tmp_path
  ):
    # The root's owner may link folders in from elsewhere (a shared copy of
    # ImageNet, say); only the list's text is held to the root.
    list_file, root = jpeg_dataset([2, 2])
    elsewhere = tmp_path / 'elsewhere'
    os.rename(os.path.join(root, 'train', 'class1'), elsewhere)
    os.symlink(elsewhere, os.path.join(root, 'train', 'class1'))
    split = ip.load_list_split(list_file, root, 2)
    decoded = ip.decode_into_memory(split)
    assert decoded.images.shape == (4, 40, 48, 3)

  def test_paths_with_spaces_and_blank_lines(self, tmp_path):
    list_file = tmp_path / 'train.txt'
    list_file.write_text('my dir/a 1.jpg 3\n\n  b.jpg 0  \n')
    paths, labels = ip.read_list_file(str(list_file))
    assert paths.tolist() == ['my dir/a 1.jpg', 'b.jpg']
    assert labels.tolist() == [3, 0]

  def test_empty_class_in_a_training_list(self, jpeg_dataset):
    list_file, root = jpeg_dataset([2, 0, 3])
    with pytest.raises(
        ip.DataError, match=r'classes \[1\].*have no example, but num_classes=3'
    ):
      ip.load_list_split(list_file, root, 3, require_all_classes=True)

  def test_missing_image_names_it_and_the_root(self, jpeg_dataset, tmp_path):
    list_file, root = jpeg_dataset([2, 2])
    (tmp_path / 'images' / 'train' / 'class1' / '0001.jpg').unlink()
    with pytest.raises(
        ip.DataError,
        match=r'1 listed images are missing.*train/class1/0001.jpg.*image_root',
    ):
      ip.load_list_split(list_file, root, 2)


class TestSplits:

  def test_list_split_keeps_file_order(self, jpeg_dataset):
    list_file, root = jpeg_dataset([2, 3])
    split = ip.load_list_split(list_file, root, 2, name='toy')
    assert split.name == 'toy' and len(split) == 5 and not split.in_memory
    assert split.labels.tolist() == [0, 0, 1, 1, 1]
    assert split.paths[2] == 'train/class1/0000.jpg'
    sub = split.subset(np.array([4, 0]))
    assert sub.paths.tolist() == [
        'train/class1/0002.jpg',
        'train/class0/0000.jpg',
    ]
    assert sub.labels.tolist() == [1, 0]

  def test_url_paths_go_through_tf_io_gfile(self, jpeg_dataset):
    list_file, root = jpeg_dataset([1, 2], root='ram://lists-test')
    split = ip.load_list_split(list_file, root, 2)
    assert list_file.startswith('ram://') and len(split) == 3
    decoded = ip.decode_into_memory(split)
    assert decoded.images.shape == (3, 40, 48, 3)


class TestDecodeIntoMemory:

  def _archive(self, tmp_path, names, rng):
    images = {name: random_image(rng, 32, 32) for name in names}
    archive = tmp_path / 'images.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
      for name, image in images.items():
        data = jpeg_bytes(image)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return archive, images

  def test_reads_listed_members_of_an_archive_in_list_order(self, tmp_path):
    rng = np.random.default_rng(0)
    archive, images = self._archive(
        tmp_path, ['a/0.jpg', 'b/1.jpg', 'c/2.jpg'], rng
    )
    split = ip.Split(
        'toy',
        np.array([1, 0]),
        2,
        paths=np.array(['c/2.jpg', 'a/0.jpg']),
        image_root=str(archive),
    )
    decoded = ip.decode_into_memory(split)
    assert decoded.in_memory and decoded.images.dtype == np.uint8
    for got, name in zip(decoded.images, ['c/2.jpg', 'a/0.jpg']):
      assert np.abs(got.astype(int) - images[name]).mean() < 3  # JPEG loss

  def test_member_missing_from_the_archive(self, tmp_path):
    archive, _ = self._archive(tmp_path, ['a/0.jpg'], np.random.default_rng(0))
    split = ip.Split(
        'toy',
        np.array([0, 0]),
        1,
        paths=np.array(['a/0.jpg', 'a/9.jpg']),
        image_root=str(archive),
    )
    with pytest.raises(
        ip.DataError, match=r'1 listed images are not in .*a/9.jpg'
    ):
      ip.decode_into_memory(split)


class TestCifar10Jpeg:

  @pytest.mark.slow
  def test_first_images_of_the_real_archive(self, shared_data, tmp_path):
    root = shared_data / 'cifar10-jpeg'
    lines = (root / 'train.txt').read_text().splitlines()[:64]
    (tmp_path / 'train.txt').write_text('\n'.join(lines) + '\n')
    (tmp_path / 'cifar10-jpeg.tar.gz').symlink_to(root / 'cifar10-jpeg.tar.gz')
    split = ip.load_cifar10_jpeg(
        str(tmp_path), 'train', cache_dir=str(tmp_path / 'cache')
    )
    assert split.images.shape == (64, 32, 32, 3)
    # The official CIFAR-10 training set starts frog, truck, truck, deer, car.
    assert split.labels[:5].tolist() == [6, 9, 9, 4, 1]
    assert 60 < split.images.mean() < 200
    cached = ip.load_cifar10_jpeg(
        str(tmp_path), 'train', cache_dir=str(tmp_path / 'cache')
    )
    np.testing.assert_array_equal(cached.images, split.images)
    assert not list((tmp_path / 'cache').glob('*.partial'))

  def test_unknown_split(self, tmp_path):
    with pytest.raises(
        ip.DataError, match="split='val' is not 'train' or 'test'"
    ):
      ip.load_cifar10_jpeg(str(tmp_path), 'val')
