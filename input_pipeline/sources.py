"""Dataset splits from list files, image folders and archives.

A `Split` is one split of a dataset: labels plus either decoded images in
memory (CIFAR-sized data) or image paths under a root (ImageNet-LT,
iNaturalist 2018, Places-LT, any user dataset), in a fixed order.

List files are the classifier-balancing format, one ``relative/path label``
per line, read from local paths or URLs (`input_pipeline.files`).
"""

import dataclasses
import io
import os
import random
import tarfile
from typing import Iterator

import numpy as np
from absl import logging
from PIL import Image

from input_pipeline.files import (
    DataError,
    file_exists,
    is_url,
    join_path,
    open_file,
    stays_inside_root,
    url_errors,
    write_atomically,
)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a dataset, in a fixed order.

  Attributes:
    name: what it is, for messages (e.g. 'cifar10:train').
    labels: (N,) int32 class ids in 0..num_classes-1.
    num_classes: number of classes of the dataset.
    images: (N, H, W, C) uint8 decoded images, or None.
    paths: (N,) image paths relative to `image_root`, or None.
    image_root: directory (or URL prefix) the paths are relative to.
  """

  name: str
  labels: np.ndarray
  num_classes: int
  images: np.ndarray | None = None
  paths: np.ndarray | None = None
  image_root: str = ''

  def __post_init__(self):
    if (self.images is None) == (self.paths is None):
      raise ValueError('a Split holds either images or paths.')
    if len(self.examples) != len(self.labels):
      raise ValueError(f'{self.name}: images/paths and labels differ in size.')

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def examples(self) -> np.ndarray:
    """The images or the paths, whichever this split holds."""
    return self.images if self.images is not None else self.paths

  @property
  def in_memory(self) -> bool:
    return self.images is not None

  def subset(self, indices: np.ndarray, name: str | None = None) -> 'Split':
    """The examples at `indices`, in that order."""
    indices = np.asarray(indices)
    return dataclasses.replace(
        self,
        name=name or self.name,
        labels=self.labels[indices],
        images=None if self.images is None else self.images[indices],
        paths=None if self.paths is None else self.paths[indices],
    )

  def class_counts(self) -> np.ndarray:
    """(num_classes,) examples per class."""
    return np.bincount(self.labels, minlength=self.num_classes)


LIST_FILE_HELP = (
    'List files have one "relative/path label" per line. ImageNet-LT, '
    'iNaturalist 2018 and Places-LT lists come with the classifier-balancing '
    'release (see docs/data.md).'
)


def _list_lines(list_file: str) -> Iterator[tuple[int, str]]:
  """(line number, text) of each line of a list file, read as UTF-8.

  Raises:
    DataError: the file cannot be read, or a line is not UTF-8 text (the
      message names the file and line).
  """
  try:
    with url_errors(list_file), open_file(list_file, 'rb') as f:
      for number, raw in enumerate(f, start=1):
        try:
          line = raw.decode('utf-8')
        except UnicodeDecodeError as e:
          raise DataError(
              f'{list_file}:{number}: not UTF-8 text (byte '
              f'0x{raw[e.start]:02x} at byte {e.start + 1} of the line). List '
              'files are UTF-8; convert this one (e.g. iconv -f latin1 -t '
              'utf-8).'
          ) from None
        yield number, line.removeprefix('\ufeff') if number == 1 else line
  except OSError as e:
    raise DataError(
        f'list file {list_file} cannot be read ({e.strerror or e}).'
    ) from None


def _warn_about_repeats(
    list_file: str, paths: list[str], labels: list[int], numbers: list[int]
):
  """One warning if some lines list an image that an earlier line lists."""
  first = {}  # path -> (line number, label) of its first line
  repeats = []  # (line number, first line number, path, same label)
  for path, label, number in zip(paths, labels, numbers):
    if path in first:
      repeats.append((number, first[path][0], path, label == first[path][1]))
    else:
      first[path] = (number, label)
  if repeats:
    number, earlier, path, _ = repeats[0]
    relabelled = sum(not same for *_, same in repeats)
    logging.warning(
        '%s: %d lines list an image listed before (the first: line %d, %r, '
        'as line %d)%s; each line counts as one more example.',
        list_file,
        len(repeats),
        number,
        path,
        earlier,
        f', {relabelled} of them with another label' if relabelled else '',
    )


def read_list_file(
    list_file: str,
    num_classes: int | None = None,
    image_root: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Reads ``path label`` lines (UTF-8).

  A line that lists an image an earlier line lists is kept (it counts as
  one more example, as in the reference's loaders) and reported in one
  warning with the count.

  Args:
    list_file: local path or URL.
    num_classes: if given, every label must be in 0..num_classes-1.
    image_root: if given, every path must stay inside it (relative, no
      ``..`` climbing out; see `stays_inside_root`).

  Returns:
    (paths, labels): (N,) str array and (N,) int32 array, in file order.

  Raises:
    DataError: the file is missing or unreadable, a line is not UTF-8 or
      malformed, a label is out of range or a path leaves `image_root`; the
      message names the file and, for a line, its number.
  """
  if not file_exists(list_file):
    raise DataError(f'list file {list_file} does not exist. {LIST_FILE_HELP}')
  paths, labels, numbers = [], [], []
  for line_number, line in _list_lines(list_file):
    line = line.strip()
    if not line:
      continue
    fields = line.rsplit(maxsplit=1)
    if len(fields) != 2 or not fields[1].lstrip('-').isdigit():
      raise DataError(
          f'{list_file}:{line_number}: expected "relative/path label", got '
          f'{line!r}.'
      )
    label = int(fields[1])
    if label < 0 or (num_classes is not None and label >= num_classes):
      raise DataError(
          f'{list_file}:{line_number}: label {label} is outside '
          f'0..{(num_classes or 1) - 1} (num_classes={num_classes}).'
      )
    if image_root is not None and not stays_inside_root(fields[0]):
      raise DataError(
          f'{list_file}:{line_number}: path {fields[0]!r} leaves '
          f'image_root={image_root!r}; list paths must be relative to it, '
          'without ".." that climbs out.'
      )
    paths.append(fields[0])
    labels.append(label)
    numbers.append(line_number)
  if not labels:
    raise DataError(f'list file {list_file} has no examples.')
  _warn_about_repeats(list_file, paths, labels, numbers)
  return np.array(paths), np.array(labels, np.int32)


def load_list_split(
    list_file: str,
    image_root: str,
    num_classes: int,
    name: str | None = None,
    require_all_classes: bool = False,
    check_images: bool = True,
) -> Split:
  """A Split of image paths from a list file.

  Args:
    list_file: local path or URL of the list.
    image_root: directory or URL prefix the listed paths are relative to.
    num_classes: number of classes of the dataset.
    name: for messages; default the list file's name.
    require_all_classes: raise if a class has no example (training splits).
    check_images: check that the images exist: all of them under a local
      root, a random sample of 32 under a URL.

  Raises:
    DataError: as `read_list_file` (paths must stay inside `image_root`),
      plus empty classes and missing images.
  """
  paths, labels = read_list_file(list_file, num_classes, image_root)
  split = Split(
      name=name or os.path.basename(list_file),
      labels=labels,
      num_classes=num_classes,
      paths=paths,
      image_root=image_root,
  )
  if require_all_classes:
    empty = np.flatnonzero(split.class_counts() == 0)
    if empty.size:
      raise DataError(
          f'{list_file}: classes {empty[:10].tolist()}'
          f'{"..." if empty.size > 10 else ""} ({empty.size} in all) have no '
          f'example, but num_classes={num_classes}. Check the list and '
          'num_classes.'
      )
  if check_images:
    check_images_exist(split)
  return split


def check_images_exist(split: Split, sample_size: int = 32):
  """Raises DataError naming missing images (all checked if root is local)."""
  paths = list(split.paths)
  if is_url(split.image_root) and len(paths) > sample_size:
    paths = random.Random(0).sample(paths, sample_size)
  missing = [
      p for p in paths if not file_exists(join_path(split.image_root, p))
  ]
  if missing:
    raise DataError(
        f'{split.name}: {len(missing)} listed images are missing under '
        f'image_root={split.image_root!r}, e.g. '
        f'{join_path(split.image_root, missing[0])}. Check image_root (the '
        'list paths are relative to it).'
    )


def decode_into_memory(split: Split) -> Split:
  """Decodes all images of a path split into one uint8 array (with PIL).

  `split.image_root` may be a directory, a URL prefix, or a ``.tar``/
  ``.tar.gz`` archive whose member names are the listed paths. All images
  must have the same size (CIFAR-like data).
  """

  def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))

  wanted = {path: i for i, path in enumerate(split.paths)}
  images = [None] * len(wanted)
  root = split.image_root
  if root.endswith(('.tar', '.tar.gz', '.tgz')):
    if not file_exists(root):
      raise DataError(f'{split.name}: archive {root} does not exist.')
    with (
        url_errors(root),
        open_file(root, 'rb') as f,
        tarfile.open(fileobj=f, mode='r|*') as tar,
    ):
      for member in tar:
        i = wanted.get(member.name)
        if i is not None:
          images[i] = decode(tar.extractfile(member).read())
    missing = [p for p, i in wanted.items() if images[i] is None]
    if missing:
      raise DataError(
          f'{split.name}: {len(missing)} listed images are not in {root}, '
          f'e.g. {missing[0]}.'
      )
  else:
    check_images_exist(split)
    for path, i in wanted.items():
      image = join_path(root, path)
      with url_errors(image), open_file(image, 'rb') as f:
        images[i] = decode(f.read())
  shapes = {image.shape for image in images}
  if len(shapes) != 1:
    raise DataError(
        f'{split.name}: images differ in size ({sorted(shapes)[:3]}...); '
        'only same-size images can be held in memory.'
    )
  return dataclasses.replace(split, images=np.stack(images), paths=None)


def load_cifar10_jpeg(
    root: str, split: str, cache_dir: str | None = None
) -> Split:
  """CIFAR-10 from the JPEG copy: ``train.txt``/``test.txt`` plus the archive.

  The lists are in the official order, so index-based protocols (the LDAM
  long tail) select the same images as on the original files. Images are
  decoded with PIL; with `cache_dir`, the decoded arrays are kept there as
  ``cifar10-jpeg-{split}.npz`` and reused.

  Args:
    root: folder with ``train.txt``, ``test.txt`` and either
      ``cifar10-jpeg.tar.gz`` or its extracted ``train/`` and ``test/``.
    split: 'train' or 'test'.
    cache_dir: optional folder for decoded arrays.
  """
  if split not in ('train', 'test'):
    raise DataError(f"CIFAR-10 JPEG split={split!r} is not 'train' or 'test'.")
  name = f'cifar10-jpeg:{split}'
  cache = cache_dir and os.path.join(cache_dir, f'cifar10-jpeg-{split}.npz')
  if cache and os.path.exists(cache):
    with np.load(cache) as data:
      return Split(name, data['labels'], 10, images=data['images'])
  archive = join_path(root, 'cifar10-jpeg.tar.gz')
  image_root = archive if file_exists(archive) else root
  split_data = decode_into_memory(
      load_list_split(
          join_path(root, f'{split}.txt'),
          image_root,
          num_classes=10,
          name=name,
          check_images=False,  # decoding checks every image
      )
  )
  if cache:
    with write_atomically(cache, 'wb') as f:
      np.savez(f, images=split_data.images, labels=split_data.labels)
  return split_data
