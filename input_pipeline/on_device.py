"""The on-device input path for small datasets (CIFAR-LT, the quickstart).

The whole training split lives on the accelerators as uint8, sharded over the
mesh's data axes; each step draws its example indices with the same samplers
as the tf.data path and crops/flips them inside the jitted train step, with
JAX random numbers. No host work and no TensorFlow at training time: this is
what lets a 200-epoch CIFAR-LT run finish in minutes on one GPU.

The draws follow the same distributions as `input_pipeline.samplers`
(instance: a fresh pseudo-random permutation per epoch, `shuffled_index`;
class, sqrt, progressive: i.i.d.
with the same class probabilities; class-aware: `samples_per_class` examples
of one uniformly drawn class per group) but not the same sequence, which is
keyed by JAX's PRNG instead of NumPy's. The NumPy samplers are the
reference; tests pin these draws to their class distributions, and
`random_crop_flip` to the tf.data crop's offsets and flips
(tests/input_pipeline/test_on_device.py, test_preprocess.py).

Usage inside a jitted step::

    images, labels = sample_batch(data, key, step, global_batch_size)
    images = random_crop_flip(images, crop_key, padding=4)
    x = normalize_images(images, mean, std)
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from input_pipeline.datasets import Preprocessing
from input_pipeline.samplers import SamplerSpec, class_probabilities, epoch_size
from input_pipeline.sources import Split


@dataclasses.dataclass(frozen=True)
class DeviceData:
  """A training split on the accelerators, plus what the samplers need.

  Attributes:
    images: (N_padded, H, W, C) uint8, sharded over the data axis; rows past
      N are padding and never drawn.
    labels: (N,) int32, replicated.
    members: (C, max_count) int32: row c lists class c's example indices
      (padded with 0 past its count), replicated.
    counts: (C,) int32 examples per class.
    example_p_start, example_p_end: (N,) float32 draw probability of each
      example at the start and the end of the run (equal except for
      'progressive', which interpolates linearly over epochs).
    sampler: the sampler spec (static).
    epoch_size: draws per epoch (static).
    batch_sharding: how sampled batches are laid out: split over the data
      axis (static).
  """

  images: jax.Array
  labels: jax.Array
  members: jax.Array
  counts: jax.Array
  example_p_start: jax.Array
  example_p_end: jax.Array
  sampler: SamplerSpec
  epoch_size: int
  batch_sharding: NamedSharding

  @property
  def num_examples(self) -> int:
    return self.labels.shape[0]


jax.tree_util.register_dataclass(
    DeviceData,
    data_fields=[
        'images',
        'labels',
        'members',
        'counts',
        'example_p_start',
        'example_p_end',
    ],
    meta_fields=['sampler', 'epoch_size', 'batch_sharding'],
)


def _example_probabilities(counts, labels, sampler: str, progress: float):
  if sampler in ('instance', 'class_aware'):
    return np.zeros(len(labels), np.float32)  # unused by these samplers
  p_class = class_probabilities(counts, sampler, progress)
  return (p_class[labels] / counts[labels]).astype(np.float32)


def put_on_devices(
    split: Split, spec: SamplerSpec, batch_sharding: NamedSharding
) -> DeviceData:
  """Copies an in-memory split to the devices: images sharded, rest replicated.

  Args:
    split: the training split, images in memory.
    spec: the sampler.
    batch_sharding: how batches are laid out: the leading axis split over
      the mesh's data axes (the trainer's `Topology.batch_sharding`). The
      images are sharded the same way.

  Works with several hosts: every host holds the whole split in memory (it
  is small) and places only the shards its devices own. The data axes must
  be of type Auto (XLA places the gathers' collectives).
  """
  mesh = batch_sharding.mesh
  data_axes = _axis_names(batch_sharding.spec[0])
  explicit = [
      a
      for a in data_axes
      if mesh.axis_types[mesh.axis_names.index(a)] != AxisType.Auto
  ]
  if explicit:
    raise ValueError(
        f'the on-device path needs mesh axes {explicit} of type '
        'AxisType.Auto (jax.make_mesh(..., axis_types=(AxisType.Auto,)); the '
        "default in this jax is Explicit), as the trainer's mesh has."
    )
  if not split.in_memory:
    raise ValueError(
        f'{split.name}: the on-device path needs images in memory (CIFAR-'
        'sized data); use the tf.data path for list-file datasets.'
    )
  labels = split.labels.astype(np.int32)
  counts = np.bincount(labels, minlength=split.num_classes)
  if (counts == 0).any():
    raise ValueError(
        f'{split.name}: classes {np.flatnonzero(counts == 0).tolist()} have '
        'no training examples.'
    )
  members = np.zeros((len(counts), counts.max()), np.int32)
  for c in range(len(counts)):
    members[c, : counts[c]] = np.flatnonzero(labels == c)

  shards = int(np.prod([mesh.shape[a] for a in data_axes]))
  padded = -(-len(labels) // shards) * shards
  images = np.concatenate([
      split.images,
      np.zeros((padded - len(labels), *split.images.shape[1:]), np.uint8),
  ])
  replicated = NamedSharding(mesh, P())

  def place(array, sharding):
    return jax.make_array_from_callback(
        array.shape, sharding, lambda index: array[index]
    )

  return DeviceData(
      images=place(images, batch_sharding),
      labels=place(labels, replicated),
      members=place(members, replicated),
      counts=place(counts.astype(np.int32), replicated),
      example_p_start=place(
          _example_probabilities(counts, labels, spec.name, 0.0), replicated
      ),
      example_p_end=place(
          _example_probabilities(counts, labels, spec.name, 1.0), replicated
      ),
      sampler=spec,
      epoch_size=epoch_size(counts, spec),
      batch_sharding=batch_sharding,
  )


def _axis_names(entry) -> tuple[str, ...]:
  """A PartitionSpec entry (None, a name or a tuple of names) as a tuple."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def sample_indices(
    data: DeviceData, key: jax.Array, step: jax.Array, batch_size: int
) -> jax.Array:
  """(batch_size,) int32 example indices of global batch `step`.

  `key` is the run's sampling key (the same every step): the epoch
  permutations and per-step draws are folded from it, so a step's indices
  depend only on (key, step) and a resumed run continues the same stream.
  """
  n = data.num_examples
  name = data.sampler.name
  positions = step * batch_size + jnp.arange(batch_size)
  if name == 'instance':
    epochs, offsets = positions // n, positions % n
    return shuffled_index(offsets, jax.random.fold_in(key, 0), epochs, n)
  step_key = jax.random.fold_in(jax.random.fold_in(key, 1), step)
  if name == 'class_aware':
    k = data.sampler.samples_per_class
    groups = -(-batch_size // k)
    class_key, member_key = jax.random.split(step_key)
    classes = jax.random.randint(
        class_key, (groups, 1), 0, data.counts.shape[0]
    )
    ranks = jax.random.randint(member_key, (groups, k), 0, data.counts[classes])
    return data.members[classes, ranks].reshape(-1)[:batch_size]
  # class, sqrt, progressive: i.i.d. draws with per-example probabilities.
  progress = 0.0
  if name == 'progressive':
    epoch = (step * batch_size) // data.epoch_size
    progress = jnp.minimum(epoch / data.sampler.num_epochs, 1.0)
  p = (1 - progress) * data.example_p_start + progress * data.example_p_end
  return jax.random.choice(step_key, n, (batch_size,), p=p)


FEISTEL_ROUNDS = 6


def _mix32(x: jax.Array) -> jax.Array:
  """A 32-bit integer hash (murmur3's finaliser) on uint32."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def shuffled_index(
    index: jax.Array, key: jax.Array, epoch: jax.Array, n: int
) -> jax.Array:
  """Where `index` lands in epoch `epoch`'s pseudo-random permutation of [0, n).

  A keyed Feistel network is a bijection of [0, 2^b); walking its cycle until
  the value falls back into [0, n) makes it a bijection of [0, n). Each
  element costs O(1), so a batch needs no O(n log n) shuffle of the whole
  epoch (the method of `tf.random.experimental.index_shuffle`).

  Args:
    index: int array of values in [0, n).
    key: PRNG key of the run's instance sampler.
    epoch: int array broadcastable to `index`: whose permutation.
    n: size of the permuted range (static).

  Returns:
    int32 array shaped like `index`.
  """
  bits = max(2, (n - 1).bit_length())
  bits += bits % 2
  half, mask = bits // 2, jnp.uint32((1 << (bits // 2)) - 1)
  round_keys = jax.vmap(
      lambda e: jax.random.bits(jax.random.fold_in(key, e), (FEISTEL_ROUNDS,))
  )(jnp.ravel(jnp.broadcast_to(epoch, index.shape))).reshape(
      *index.shape, FEISTEL_ROUNDS
  )

  def permute(value):
    left, right = value >> half, value & mask
    for r in range(FEISTEL_ROUNDS):
      left, right = right, left ^ (_mix32(right ^ round_keys[..., r]) & mask)
    return (left << half) | right

  value = permute(index.astype(jnp.uint32))
  value = jax.lax.while_loop(
      lambda v: jnp.any(v >= n),
      lambda v: jnp.where(v >= n, permute(v), v),
      value,
  )
  return value.astype(jnp.int32)


def sample_batch(
    data: DeviceData, key: jax.Array, step: jax.Array, batch_size: int
) -> tuple[jax.Array, jax.Array]:
  """(images uint8 (B, H, W, C), labels int32 (B,)) of global batch `step`."""
  indices = sample_indices(data, key, step, batch_size)
  return (
      _gather_rows(data.images, indices, data.batch_sharding),
      _gather_rows(data.labels, indices, data.batch_sharding),
  )


def training_batch(
    data: DeviceData,
    key: jax.Array,
    step: jax.Array,
    batch_size: int,
    preprocessing: Preprocessing,
) -> tuple[jax.Array, jax.Array]:
  """Global batch `step`, sampled and augmented: what a train step reads.

  `key` is the run's data key: sampling and augmentation keys are split
  from it and folded with `step`, so the batch depends only on (key, step).
  Augmentation: 'cifar' pad-crop-flip, 'none' as stored.
  """
  if preprocessing.kind not in ('cifar', 'none'):
    raise ValueError(
        'the on-device path augments in-memory data only; preprocessing '
        f'kind={preprocessing.kind!r} needs the tf.data path.'
    )
  sample_key, crop_key = jax.random.split(key)
  images, labels = sample_batch(data, sample_key, step, batch_size)
  if preprocessing.kind == 'cifar':
    images = random_crop_flip(
        images, jax.random.fold_in(crop_key, step), preprocessing.crop_padding
    )
  return images, labels


def _gather_rows(array: jax.Array, indices: jax.Array, sharding: NamedSharding):
  """array[indices], laid out by `sharding`."""
  return jax.lax.with_sharding_constraint(array[indices], sharding)


def random_crop_flip(
    images: jax.Array, key: jax.Array, padding: int
) -> jax.Array:
  """Zero-pad by `padding`, random crop back to size, flip half; per example.

  Args:
    images: (B, H, W, C) any dtype.
    key: PRNG key for this batch.
    padding: pixels of zero padding on each side (0: flip only).
  """
  batch, height, width, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  if padding:
    padded = jnp.pad(
        images, ((0, 0), (padding, padding), (padding, padding), (0, 0))
    )
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)
    images = jax.vmap(
        lambda image, offset: jax.lax.dynamic_slice(
            image, (offset[0], offset[1], 0), (height, width, image.shape[-1])
        )
    )(padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


def normalize_images(
    images: jax.Array,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    dtype=jnp.float32,
) -> jax.Array:
  """uint8 images -> (images / 255 - mean) / std in `dtype` (per channel).

  torchvision's ToTensor followed by Normalize(mean, std); both input paths
  use it inside the jitted step.
  """
  scale = 1.0 / (255.0 * jnp.asarray(std, jnp.float32))
  shift = jnp.asarray(mean, jnp.float32) / jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) * scale - shift).astype(dtype)
