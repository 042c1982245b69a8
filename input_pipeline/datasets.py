"""The benchmarks: their classes, normalisation, augmentation and splits.

`load_benchmark` assembles the (train, val, test) splits of a benchmark from
one of the sources, applying the long-tail protocol where it is defined
(CIFAR). Validation is for model selection and test for reporting; where a
benchmark has no separate validation set (CIFAR-LT, iNaturalist 2018) `val`
is None and results on test are labelled as such by the trainer.
"""

import dataclasses
import functools
from typing import Callable

import numpy as np

from input_pipeline import digits, long_tail, sources, tfds_source
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
  """Fixed facts of a dataset: classes, per-channel mean/std, augmentation.

  Attributes:
    num_classes: C.
    mean, std: per-channel normalisation, of pixels in [0, 1].
    preprocessing: its augmentation recipe.
    sources: where it can be read from (keys of `SOURCES`).
    class_names: the name of each class id, in id order, for people (plots);
      empty where the dataset has none short enough to show.
    reports_top5: its results include top-5 accuracy, as the literature
      reports it for the ImageNet-scale benchmarks.
  """

  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  preprocessing: Preprocessing
  sources: tuple[str, ...]
  class_names: tuple[str, ...] = ()
  reports_top5: bool = False

  def __post_init__(self):
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(
          f'{len(self.class_names)} class names for {self.num_classes} classes.'
      )


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)
# CIFAR-10's label names, in the order of its label ids (the dataset's
# batches.meta, TFDS's label feature, the JPEG copy's README).
CIFAR10_CLASSES = (
    'airplane',
    'automobile',
    'bird',
    'cat',
    'deer',
    'dog',
    'frog',
    'horse',
    'ship',
    'truck',
)

DATASETS = {
    'cifar10': DatasetSpec(
        10,
        CIFAR_MEAN,
        CIFAR_STD,
        Preprocessing('cifar'),
        ('tfds', 'jpeg'),
        CIFAR10_CLASSES,
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
        reports_top5=True,
    ),
    'inat2018': DatasetSpec(
        8142,
        INAT_MEAN,
        INAT_STD,
        Preprocessing('imagenet'),
        ('lists',),
        reports_top5=True,
    ),
    'places_lt': DatasetSpec(
        365,
        IMAGENET_MEAN,
        IMAGENET_STD,
        Preprocessing('imagenet', color_jitter=0.4),
        ('lists',),
        reports_top5=True,
    ),
    # Mean and std of the digit pixels (one channel).
    'digits': DatasetSpec(
        10,
        (0.3053,),
        (0.3759,),
        Preprocessing('none'),
        ('digits',),
        tuple(str(digit) for digit in range(10)),
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


@dataclasses.dataclass(frozen=True)
class SourceSettings:
  """Where a source finds a benchmark's data (the config's data fields).

  Attributes:
    data_dir: TFDS data dir, or the CIFAR-10 JPEG folder.
    imbalance_factor: CIFAR and digits long tail (n_max / n_min).
    image_root: image folder (or URL prefix) for list files.
    train_list, val_list, test_list: list files; `val_list` may be empty
      (iNaturalist: its val set is the test set).
    cache_dir: where decoded CIFAR JPEG arrays are kept.
    check_images: for list files, check that the listed images exist.
    train_counts_only: the training split serves only its class counts (an
      evaluation, whose Many/Medium/Few groups they define): for list
      files, `train_list` may be empty (a train split without examples) or
      miss classes, and its images are not checked.
  """

  data_dir: str | None = None
  imbalance_factor: float = 100.0
  image_root: str = ''
  train_list: str = ''
  val_list: str = ''
  test_list: str = ''
  cache_dir: str | None = None
  check_images: bool = True
  train_counts_only: bool = False


Splits = tuple[Split, Split | None, Split]  # train, val (or None), test


@dataclasses.dataclass(frozen=True)
class Source:
  """A kind of place benchmarks are read from.

  Attributes:
    load: (dataset name, its spec, settings) -> (train, val, test) splits,
      the training split long-tailed where the benchmark's protocol says.
    in_memory: its splits hold decoded images (what the on-device input
      path needs); otherwise image paths.
  """

  load: Callable[[str, DatasetSpec, SourceSettings], Splits]
  in_memory: bool


def _long_tailed(
    name: str, full_train: Split, test: Split, imbalance_factor: float
) -> Splits:
  """The LDAM long tail of a balanced training split (CIFAR, seed 0)."""
  subset = long_tail.long_tail_indices(full_train.labels, imbalance_factor)
  train = full_train.subset(subset, f'{name}-lt-if{imbalance_factor:g}:train')
  return train, None, test


def _load_tfds(name: str, spec: DatasetSpec, s: SourceSettings) -> Splits:
  del spec
  load = functools.partial(
      tfds_source.load_tfds_cifar, name, data_dir=s.data_dir
  )
  return _long_tailed(name, load('train'), load('test'), s.imbalance_factor)


def _load_cifar10_jpeg(
    name: str, spec: DatasetSpec, s: SourceSettings
) -> Splits:
  del spec
  if not s.data_dir:
    raise DataError(
        "data source='jpeg' needs data_dir, the folder with train.txt, "
        'test.txt and cifar10-jpeg.tar.gz.'
    )
  load = functools.partial(
      sources.load_cifar10_jpeg, s.data_dir, cache_dir=s.cache_dir
  )
  return _long_tailed(name, load('train'), load('test'), s.imbalance_factor)


def _load_digits(name: str, spec: DatasetSpec, s: SourceSettings) -> Splits:
  del name, spec
  train, test = digits.load_digits_lt(s.imbalance_factor)
  return train, None, test


def _load_lists(name: str, spec: DatasetSpec, s: SourceSettings) -> Splits:
  required = {'test_list': s.test_list, 'image_root': s.image_root}
  if not s.train_counts_only:
    required = {'train_list': s.train_list} | required
  missing = [field for field, value in required.items() if not value]
  if missing:
    raise DataError(
        f'{name} from list files needs {", ".join(missing)} (see docs/data.md).'
    )

  def load(list_file, kind, all_classes=False, check_images=s.check_images):
    return sources.load_list_split(
        list_file,
        s.image_root,
        spec.num_classes,
        name=f'{name}:{kind}',
        require_all_classes=all_classes,
        check_images=check_images,
    )

  if not s.train_counts_only:
    train = load(s.train_list, 'train', all_classes=True)
  elif s.train_list:  # its labels alone: classes may be missing, images too
    train = load(s.train_list, 'train', check_images=False)
  else:
    train = Split(
        f'{name}:train',
        labels=np.zeros(0, np.int32),
        num_classes=spec.num_classes,
        paths=np.zeros(0, str),
        image_root=s.image_root,
    )
  val = load(s.val_list, 'val') if s.val_list else None
  return train, val, load(s.test_list, 'test')


# Every source a benchmark can name in its `DatasetSpec.sources`.
SOURCES = {
    'tfds': Source(_load_tfds, in_memory=True),
    'jpeg': Source(_load_cifar10_jpeg, in_memory=True),
    'lists': Source(_load_lists, in_memory=False),
    'digits': Source(_load_digits, in_memory=True),
}


def load_benchmark(dataset: str, *, source: str, **settings) -> Benchmark:
  """Builds a benchmark's splits from one of its sources.

  Args:
    dataset: a key of `DATASETS`.
    source: a key of `SOURCES` that the dataset lists: 'tfds' (CIFAR from
      TensorFlow Datasets in `data_dir`), 'jpeg' (the CIFAR-10 JPEG copy in
      folder `data_dir`), 'lists' (list files under `image_root`) or
      'digits' (embedded).
    **settings: where the source finds the data, the fields of
      `SourceSettings` (data_dir, imbalance_factor, image_root, the lists,
      cache_dir, check_images, train_counts_only).

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
  train, val, test = SOURCES[source].load(
      dataset, spec, SourceSettings(**settings)
  )
  return Benchmark(dataset, spec, train, val, test)
