"""The benchmarks: their classes, normalisation, augmentation and splits.

`load_benchmark` assembles the (train, val, test) splits of a benchmark from
one of the sources, applying the long-tail protocol where it is defined
(CIFAR). Validation is for model selection and test for reporting; where a
benchmark has no separate validation set (CIFAR-LT, iNaturalist 2018) `val`
is None and results on test are labelled as such by the trainer.
"""

import dataclasses

import numpy as np

from input_pipeline import long_tail, sources
from input_pipeline.sources import DataError, Split

PREPROCESSING_KINDS = ('cifar', 'imagenet', 'none')


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a benchmark's images are augmented and sized.

  Attributes:
    kind: 'cifar' (pad-crop-flip), 'imagenet' (random-resized crop, flip,
      jitter; eval resize + centre crop) or 'none'.
    crop_padding: zero padding before the CIFAR random crop (pixels).
    image_size: output side of the ImageNet-style crops (pixels).
    resize_size: shorter side before the ImageNet-style centre crop at eval.
    color_jitter: brightness/contrast/saturation strength (0 disables; 0.4
      for ImageNet-LT, 0 for iNaturalist).
    min_crop_area: smallest crop area fraction of the random-resized crop.
    antialias: antialiased (PIL-like) resizing, as the reference's
      torchvision/PIL transforms do. Off by default, as in flax's ImageNet
      example and big_vision: TensorFlow's antialiased resize is 2 to 4x
      slower than plain bilinear here and the input pipeline is the
      bottleneck of ImageNet-scale training on most hosts.
  """

  kind: str = 'cifar'
  crop_padding: int = 4
  image_size: int = 224
  resize_size: int = 256
  color_jitter: float = 0.0
  min_crop_area: float = 0.08
  antialias: bool = False

  def __post_init__(self):
    if self.kind not in PREPROCESSING_KINDS:
      raise ValueError(
          f'preprocessing kind={self.kind!r} is not one of '
          f'{PREPROCESSING_KINDS}.'
      )


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Fixed facts of a dataset: classes, per-channel mean/std, augmentation."""

  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  preprocessing: Preprocessing
  sources: tuple[str, ...]


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)

DATASETS = {
    'cifar10': DatasetSpec(
        10, CIFAR_MEAN, CIFAR_STD, Preprocessing('cifar'), ('tfds', 'jpeg')
    ),
    'cifar100': DatasetSpec(
        100, CIFAR_MEAN, CIFAR_STD, Preprocessing('cifar'), ('tfds',)
    ),
    'imagenet_lt': DatasetSpec(
        1000,
        IMAGENET_MEAN,
        IMAGENET_STD,
        Preprocessing('imagenet', color_jitter=0.4),
        ('lists',),
    ),
    'inat2018': DatasetSpec(
        8142, INAT_MEAN, INAT_STD, Preprocessing('imagenet'), ('lists',)
    ),
    'places_lt': DatasetSpec(
        365,
        IMAGENET_MEAN,
        IMAGENET_STD,
        Preprocessing('imagenet', color_jitter=0.4),
        ('lists',),
    ),
    # Mean and std of the digit pixels (one channel).
    'digits': DatasetSpec(
        10, (0.3053,), (0.3759,), Preprocessing('none'), ('digits',)
    ),
}


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """The splits of one benchmark, ready for the pipelines.

  Attributes:
    name: dataset name (a key of `DATASETS`).
    spec: its `DatasetSpec`.
    train: the (long-tailed) training split.
    val: the model-selection split, or None where the benchmark has none.
    test: the reporting split.
  """

  name: str
  spec: DatasetSpec
  train: Split
  val: Split | None
  test: Split

  def train_counts(self) -> np.ndarray:
    return self.train.class_counts()


def load_benchmark(
    dataset: str,
    *,
    source: str,
    data_dir: str | None = None,
    imbalance_factor: float = 100.0,
    image_root: str = '',
    train_list: str = '',
    val_list: str = '',
    test_list: str = '',
    cache_dir: str | None = None,
    check_images: bool = True,
) -> Benchmark:
  """Builds a benchmark's splits.

  Args:
    dataset: a key of `DATASETS`.
    source: 'tfds' (CIFAR from TensorFlow Datasets in `data_dir`), 'jpeg'
      (the CIFAR-10 JPEG copy in folder `data_dir`), 'lists' (list files
      under `image_root`) or 'digits' (embedded).
    data_dir: TFDS data dir, or the CIFAR-10 JPEG folder.
    imbalance_factor: CIFAR and digits long tail (n_max / n_min).
    image_root: image folder (or URL prefix) for 'lists'.
    train_list, val_list, test_list: list files for 'lists'; `val_list` may
      be empty (iNaturalist: its val set is the test set).
    cache_dir: where decoded CIFAR JPEG arrays are kept.
    check_images: for 'lists', check the listed images exist.

  Raises:
    DataError: unknown dataset or source, or missing data.
  """
  if dataset not in DATASETS:
    raise DataError(f'dataset={dataset!r} is not one of {sorted(DATASETS)}.')
  spec = DATASETS[dataset]
  if source not in spec.sources:
    raise DataError(
        f'data source={source!r} does not provide {dataset}; use one of '
        f'{spec.sources}.'
    )
  val = None
  if source in ('tfds', 'jpeg'):
    if source == 'tfds':
      from input_pipeline import tfds_source  # imports TensorFlow

      full_train = tfds_source.load_tfds_cifar(dataset, 'train', data_dir)
      test = tfds_source.load_tfds_cifar(dataset, 'test', data_dir)
    else:
      if not data_dir:
        raise DataError(
            "data source='jpeg' needs data_dir, the folder with train.txt, "
            'test.txt and cifar10-jpeg.tar.gz.'
        )
      full_train = sources.load_cifar10_jpeg(data_dir, 'train', cache_dir)
      test = sources.load_cifar10_jpeg(data_dir, 'test', cache_dir)
    subset = long_tail.long_tail_indices(full_train.labels, imbalance_factor)
    train = full_train.subset(
        subset, f'{dataset}-lt-if{imbalance_factor:g}:train'
    )
  elif source == 'digits':
    from input_pipeline import digits  # imports scikit-learn

    train, test = digits.load_digits_lt(imbalance_factor)
  else:
    missing = [
        n
        for n, v in (
            ('train_list', train_list),
            ('test_list', test_list),
            ('image_root', image_root),
        )
        if not v
    ]
    if missing:
      raise DataError(
          f'{dataset} from list files needs {", ".join(missing)} (see README, '
          '"Data").'
      )

    def load(list_file, kind, all_classes):
      return sources.load_list_split(
          list_file,
          image_root,
          spec.num_classes,
          name=f'{dataset}:{kind}',
          require_all_classes=all_classes,
          check_images=check_images,
      )

    train = load(train_list, 'train', True)
    val = load(val_list, 'val', False) if val_list else None
    test = load(test_list, 'test', False)
  return Benchmark(dataset, spec, train, val, test)
