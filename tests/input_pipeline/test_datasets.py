"""Assembling a benchmark's splits, and clear errors for bad settings."""

import pytest

import input_pipeline as ip


def test_places_lt_from_list_files(jpeg_dataset):
  counts = [3] + [1] * 364  # all 365 classes present
  train_list, root = jpeg_dataset(counts, size=(8, 8), name='train')
  test_list, _ = jpeg_dataset([1] * 365, size=(8, 8), name='test')
  benchmark = ip.load_benchmark(
      'places_lt',
      source='lists',
      image_root=root,
      train_list=train_list,
      val_list=test_list,
      test_list=test_list,
  )
  assert (len(benchmark.train), len(benchmark.val), len(benchmark.test)) == (
      367,
      365,
      365,
  )
  assert benchmark.spec.preprocessing.color_jitter == 0.4
  no_val = ip.load_benchmark(
      'places_lt',
      source='lists',
      image_root=root,
      train_list=train_list,
      test_list=test_list,
  )
  assert no_val.val is None


def test_training_list_missing_classes_is_a_clear_error(jpeg_dataset):
  train_list, root = jpeg_dataset([3, 2, 1], size=(8, 8))
  with pytest.raises(
      ip.DataError,
      match=r'classes \[3, 4, 5, 6, 7, 8, 9, 10, 11, 12\]\.\.\. \(362 in all\)',
  ):
    ip.load_benchmark(
        'places_lt',
        source='lists',
        image_root=root,
        train_list=train_list,
        test_list=train_list,
    )


class TestTrainCountsOnly:
  """An evaluation reads the train list for its class counts alone."""

  def test_without_a_train_list_the_train_split_is_empty(self, jpeg_dataset):
    test_list, root = jpeg_dataset([1] * 365, size=(8, 8), name='test')
    benchmark = ip.load_benchmark(
        'places_lt',
        source='lists',
        image_root=root,
        test_list=test_list,
        train_counts_only=True,
    )
    assert benchmark.train_counts().tolist() == [0] * 365
    assert len(benchmark.test) == 365

  def test_a_train_list_may_miss_classes_and_images(
      self, jpeg_dataset, tmp_path
  ):
    test_list, root = jpeg_dataset([1] * 365, size=(8, 8), name='test')
    train_list = tmp_path / 'partial.txt'
    train_list.write_text('absent/a.jpg 2\nabsent/b.jpg 2\nabsent/c.jpg 5\n')
    benchmark = ip.load_benchmark(
        'places_lt',
        source='lists',
        image_root=root,
        train_list=str(train_list),
        test_list=test_list,
        train_counts_only=True,
    )
    counts = benchmark.train_counts()
    assert counts[2] == 2 and counts[5] == 1 and counts.sum() == 3

  def test_the_test_list_is_still_checked(self, jpeg_dataset, tmp_path):
    _, root = jpeg_dataset([1], size=(8, 8), name='test')
    test_list = tmp_path / 'test.txt'
    test_list.write_text('absent/a.jpg 0\n')
    with pytest.raises(ip.DataError, match='1 listed images are missing'):
      ip.load_benchmark(
          'places_lt',
          source='lists',
          image_root=root,
          test_list=str(test_list),
          train_counts_only=True,
      )


def test_digits_benchmark():
  benchmark = ip.load_benchmark('digits', source='digits', imbalance_factor=10)
  assert benchmark.val is None
  assert benchmark.train_counts().tolist()[0] == 124
  assert benchmark.spec.preprocessing.kind == 'none'


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (
            dict(dataset='cifar1000', source='tfds'),
            "dataset='cifar1000' is not one of",
        ),
        (
            dict(dataset='cifar100', source='jpeg'),
            "source='jpeg' does not provide cifar100",
        ),
        (dict(dataset='cifar10', source='jpeg'), "'jpeg' needs data_dir"),
        (
            dict(dataset='imagenet_lt', source='lists', train_list='t.txt'),
            'needs test_list, image_root',
        ),
    ],
)
def test_bad_settings_name_what_to_fix(kwargs, message):
  dataset = kwargs.pop('dataset')
  with pytest.raises(ip.DataError, match=message):
    ip.load_benchmark(dataset, **kwargs)


def test_cifar10_class_names_are_those_of_its_label_ids(shared_data):
  """The JPEG copy files each image under its class's name, beside its id."""
  lines = (shared_data / 'cifar10-jpeg' / 'train.txt').read_text().split('\n')
  folder_of = {
      int(label): path.split('/')[1]
      for path, label in (line.split() for line in lines if line)
  }
  assert ip.DATASETS['cifar10'].class_names == tuple(
      folder_of[label] for label in range(10)
  )


def test_the_digits_are_named_by_their_digit():
  """scikit-learn's digits: the label of an image of digit d is d."""
  assert ip.DATASETS['digits'].class_names == tuple('0123456789')


def test_class_names_must_name_every_class():
  with pytest.raises(ValueError, match='3 class names for 10 classes'):
    ip.DatasetSpec(
        10, (0.5,), (0.5,), ip.Preprocessing(), ('digits',), ('a', 'b', 'c')
    )


def test_the_imagenet_scale_benchmarks_report_top5():
  """As their literature does; CIFAR-LT's and the digits' report top-1."""
  assert {name for name, spec in ip.DATASETS.items() if spec.reports_top5} == {
      'imagenet_lt',
      'inat2018',
      'places_lt',
  }
