"""tf.data pipelines: a resumable, host-sharded training stream and an exact,
padded evaluation pass.

Training: the sampler's index stream (`input_pipeline.samplers`) says which
example sits at every stream position; global batch s is positions
[s * B, (s + 1) * B) and host h reads only its slice of B / P of them. Each
example's augmentation is keyed by (run seed, position). The stream from
(seed, step k) is therefore exactly the tail of the stream from (seed, 0),
whatever the number of hosts or parallel calls.

Evaluation: the split is padded up to whole global batches; hosts read
disjoint slices as in training; padded slots carry ``mask = False``. Every
example is seen exactly once across hosts and all hosts run the same number
of batches.

Batches are dicts of NumPy-convertible tensors: ``image`` uint8
(per_host_batch, H, W, C), ``label`` int32 (per_host_batch,), and for eval
``mask`` bool (per_host_batch,).
"""

from typing import Iterator

import numpy as np
import tensorflow as tf

from input_pipeline import preprocess
from input_pipeline.samplers import (
    IndexStream,
    SamplerSpec,
    host_positions,
    padded_eval_indices,
    per_host_batch_size,
)
from input_pipeline.files import join_path
from input_pipeline.sources import DataError, Split

# JAX owns the accelerators; tf.data only needs the CPU.
tf.config.set_visible_devices([], 'GPU')

EXAMPLES_PER_CHUNK = 4096  # sampler look-ups are vectorised over a chunk


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # only for the defaults

    return jax.process_index(), jax.process_count()
  return process_index, process_count


def _columns(split: Split) -> dict[str, np.ndarray]:
  """The per-example data the generator slices: images or full paths."""
  if split.in_memory:
    return {'image': split.images, 'label': split.labels}
  paths = np.array([join_path(split.image_root, p) for p in split.paths])
  return {'path': paths, 'label': split.labels}


def _host_batches(
    columns: dict[str, np.ndarray], index_batches, extra_dtypes
) -> tf.data.Dataset:
  """A dataset of this host's batches, gathered from `columns` in NumPy.

  Args:
    columns: per-example arrays (images or paths, labels).
    index_batches: a callable returning an iterator of (indices, extras):
      the examples of one host batch and 1-D arrays aligned with them.
    extra_dtypes: the dtype of each extra array.
  """

  def spec(array):
    dtype = tf.string if array.dtype.kind in 'USO' else tf.as_dtype(array.dtype)
    return tf.TensorSpec((None, *array.shape[1:]), dtype)

  signature = {name: spec(array) for name, array in columns.items()}
  signature |= {
      name: tf.TensorSpec((None,), dtype)
      for name, dtype in extra_dtypes.items()
  }

  def generate():
    for indices, extras in index_batches():
      yield {name: array[indices] for name, array in columns.items()} | extras

  return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def train_dataset(
    split: Split,
    preprocessing: preprocess.Preprocessing,
    *,
    global_batch_size: int,
    sampler: SamplerSpec = SamplerSpec(),
    seed: int = 0,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
  """Endless training batches for this host, starting at `start_step`.

  Args:
    split: the training split (images in memory or paths).
    preprocessing: augmentation recipe.
    global_batch_size: examples per step over all hosts.
    sampler: which sampler (default instance-balanced).
    seed: run seed: fixes the sampling order and every augmentation.
    start_step: first step to produce (a resumed run passes its step).
    process_index, process_count: this host and the number of hosts
      (default: JAX's).
  """
  process_index, process_count = _process(process_index, process_count)
  per_host = per_host_batch_size(global_batch_size, process_count)
  stream = IndexStream(split.labels, sampler, seed)
  steps_per_chunk = max(1, EXAMPLES_PER_CHUNK // per_host)

  def index_batches():
    step = start_step
    while True:
      positions = host_positions(
          step, steps_per_chunk, global_batch_size, process_index, process_count
      )
      indices = stream[positions]
      for batch_positions, batch_indices in zip(positions, indices):
        yield batch_indices, {'position': batch_positions}
      step += steps_per_chunk

  dataset = _host_batches(
      _columns(split), index_batches, {'position': tf.int64}
  )
  if split.in_memory:
    augment_batch = preprocess.batch_train_fn(
        preprocessing, global_batch_size, seed
    )

    def prepare_batch(batch):
      return {
          'image': augment_batch(batch['image'], batch['position']),
          'label': batch['label'],
      }

    dataset = dataset.map(prepare_batch, tf.data.AUTOTUNE, deterministic=True)
  else:
    augment = preprocess.train_fn(preprocessing)

    def prepare(example):
      example_seed = tf.stack(
          [tf.constant(seed, tf.int64), example['position']]
      )
      return {
          'image': augment(example, example_seed),
          'label': example['label'],
      }

    dataset = dataset.unbatch()
    dataset = dataset.map(prepare, tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(per_host, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(
    split: Split,
    preprocessing: preprocess.Preprocessing,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[tf.data.Dataset, int]:
  """This host's share of one exact pass over `split`.

  Returns:
    (dataset, num_batches): the dataset yields `num_batches` batches of
    per-host size with a ``mask`` (False on padding); every host gets the
    same number of batches.
  """
  process_index, process_count = _process(process_index, process_count)
  per_host = per_host_batch_size(global_batch_size, process_count)
  indices, mask = padded_eval_indices(
      len(split), global_batch_size, process_index, process_count
  )
  num_batches = len(indices)

  def index_batches():
    for batch_indices, batch_mask in zip(indices, mask):
      yield batch_indices, {'mask': batch_mask}

  dataset = _host_batches(_columns(split), index_batches, {'mask': tf.bool})
  if not split.in_memory:
    load = preprocess.eval_fn(preprocessing)

    def prepare(example):
      return {
          'image': load(example),
          'label': example['label'],
          'mask': example['mask'],
      }

    dataset = dataset.unbatch()
    dataset = dataset.map(prepare, tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(per_host, drop_remainder=True)
  return (
      dataset.prefetch(tf.data.AUTOTUNE).with_options(_options()),
      num_batches,
  )


def as_numpy(dataset: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates NumPy batches; unreadable images raise a DataError naming them."""
  iterator = dataset.as_numpy_iterator()
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.NotFoundError as e:
      raise DataError(f'an image file is missing: {e.message}') from None
    except tf.errors.InvalidArgumentError as e:
      raise DataError(f'an image could not be decoded: {e.message}') from None
    yield batch
