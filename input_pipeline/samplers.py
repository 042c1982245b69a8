"""Training-example samplers as a deterministic, resumable index stream.

A sampler turns (seed, epoch) into the ordered example indices of that epoch;
the stream is those epochs end to end. Position p of the stream (p = step *
global_batch + slot) depends only on (seed, p), so a run resumed at step k
sees exactly the examples an uninterrupted run sees from step k on, and
hosts can each read their own positions without talking to each other.

Samplers (Kang et al. 2020 for the first four; p_j = probability that a draw
is from class j, n_j = its training count):

* ``instance``: every example once per epoch, in a fresh random order
  (p_j proportional to n_j). The default.
* ``class``: p_j = 1 / C, an example uniformly within the class.
* ``sqrt``: p_j proportional to sqrt(n_j).
* ``progressive``: p_j moves linearly from instance- to class-balanced over
  the run: epoch e of E uses (1 - e / E) * instance + (e / E) * class.
* ``class_aware``: the reference's sampler: classes in a shuffled cycle, and
  for each class the next `samples_per_class` (4) of its examples from a
  shuffled cycle; an epoch has max_j(n_j) * C draws, as in the reference.

`class`, `sqrt` and `progressive` draw with replacement; epochs have as many
draws as the training set has examples.
"""

import dataclasses

import numpy as np

from input_pipeline.sources import DataError

SAMPLERS = ('instance', 'class', 'sqrt', 'progressive', 'class_aware')


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """Which sampler, and its settings.

  Attributes:
    name: one of `SAMPLERS`.
    num_epochs: length of the run in epochs (the `progressive` schedule).
    samples_per_class: consecutive draws per class (`class_aware`).
  """

  name: str = 'instance'
  num_epochs: float | None = None
  samples_per_class: int = 4

  def __post_init__(self):
    if self.name not in SAMPLERS:
      raise ValueError(f'sampler={self.name!r} is not one of {SAMPLERS}.')
    if self.name == 'progressive' and not self.num_epochs:
      raise ValueError(
          "sampler='progressive' needs num_epochs (the length of the run)."
      )


def class_probabilities(
    counts: np.ndarray, sampler: str, progress: float = 0.0
) -> np.ndarray:
  """(C,) probability that a draw comes from each class.

  Args:
    counts: (C,) training examples per class.
    sampler: 'instance', 'class', 'sqrt' or 'progressive'.
    progress: fraction of the run done, for 'progressive' (0 to 1).
  """
  counts = np.asarray(counts, np.float64)
  instance = counts / counts.sum()
  balanced = np.full_like(counts, 1.0 / len(counts))
  if sampler == 'instance':
    return instance
  if sampler == 'class':
    return balanced
  if sampler == 'sqrt':
    return np.sqrt(counts) / np.sqrt(counts).sum()
  if sampler == 'progressive':
    return (1.0 - progress) * instance + progress * balanced
  raise ValueError(f'sampler={sampler!r} has no class probabilities.')


def epoch_size(counts: np.ndarray, spec: SamplerSpec) -> int:
  """Draws per epoch: the training-set size, or max_j(n_j) * C (class-aware)."""
  counts = np.asarray(counts)
  if spec.name == 'class_aware':
    return int(counts.max()) * len(counts)
  return int(counts.sum())


class IndexStream:
  """Maps stream positions to example indices for one sampler and seed."""

  def __init__(self, labels: np.ndarray, spec: SamplerSpec, seed: int):
    """Args: labels (N,) ints in 0..C-1, every class present; spec; seed."""
    self.labels = np.asarray(labels)
    self.spec = spec
    self.seed = seed
    self.counts = np.bincount(self.labels)
    if (self.counts == 0).any():
      raise ValueError(
          f'classes {np.flatnonzero(self.counts == 0).tolist()} have no '
          'training examples; every class needs at least one to be sampled.'
      )
    self.members = np.split(
        np.argsort(self.labels, kind='stable'), np.cumsum(self.counts)[:-1]
    )
    self.epoch_size = epoch_size(self.counts, spec)
    self._recent_epochs = {}  # the last two epochs built: streams move on

  def __getitem__(self, positions: np.ndarray) -> np.ndarray:
    """Example indices at stream `positions` (any shape of ints >= 0)."""
    positions = np.asarray(positions, np.int64)
    epochs, offsets = np.divmod(positions, self.epoch_size)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      indices[here] = self.epoch(int(epoch))[offsets[here]]
    return indices

  def epoch(self, epoch: int) -> np.ndarray:
    """(epoch_size,) example indices of `epoch`, in stream order."""
    if epoch not in self._recent_epochs:
      if len(self._recent_epochs) == 2:
        del self._recent_epochs[min(self._recent_epochs)]
      self._recent_epochs[epoch] = self._build_epoch(epoch)
    return self._recent_epochs[epoch]

  def _build_epoch(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    name = self.spec.name
    if name == 'instance':
      return rng.permutation(len(self.labels))
    if name == 'class_aware':
      return self._class_aware_epoch(rng)
    progress = epoch / self.spec.num_epochs if name == 'progressive' else 0.0
    p_class = class_probabilities(self.counts, name, min(progress, 1.0))
    p_example = p_class[self.labels] / self.counts[self.labels]
    return rng.choice(len(self.labels), self.epoch_size, p=p_example)

  def _class_aware_epoch(self, rng: np.random.Generator) -> np.ndarray:
    """Class cycle x per-class cycles, `samples_per_class` draws per visit."""
    k = self.spec.samples_per_class
    num_classes = len(self.counts)
    visits = -(-self.epoch_size // k)
    cycles = -(-visits // num_classes)
    class_order = np.concatenate(
        [rng.permutation(num_classes) for _ in range(cycles)]
    )[:visits]
    draws = np.empty((visits, k), np.int64)
    for c in range(num_classes):
      visits_of_c = np.flatnonzero(class_order == c)
      needed = len(visits_of_c) * k
      members = self.members[c]
      reshuffles = -(-needed // len(members))
      cycle = np.concatenate(
          [rng.permutation(members) for _ in range(reshuffles)]
      )[:needed]
      draws[visits_of_c] = cycle.reshape(-1, k)
    return draws.ravel()[: self.epoch_size]


def host_positions(
    first_step: int,
    num_steps: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> np.ndarray:
  """(num_steps, per_host_batch) stream positions this host reads.

  Global batch s is positions [s * B, (s + 1) * B); host h of P reads the
  h-th contiguous slice of B / P of them, so hosts are disjoint and together
  cover every batch.
  """
  per_host = global_batch_size // process_count
  steps = np.arange(first_step, first_step + num_steps, dtype=np.int64)
  return (
      steps[:, None] * global_batch_size
      + process_index * per_host
      + np.arange(per_host, dtype=np.int64)
  )


def per_host_batch_size(global_batch_size: int, process_count: int) -> int:
  """Global batch / hosts, or a DataError saying how to fix it."""
  if global_batch_size % process_count:
    raise DataError(
        f'batch_size={global_batch_size} is not divisible by the '
        f'{process_count} processes (hosts); choose a multiple of '
        f'{process_count}.'
    )
  return global_batch_size // process_count


def padded_eval_indices(
    num_examples: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> tuple[np.ndarray, np.ndarray]:
  """This host's example indices and mask, (num_batches, per_host) each.

  The split is padded to ceil(N / B) global batches; padded slots point at
  example 0 and have mask False.
  """
  per_host_batch_size(global_batch_size, process_count)
  num_batches = -(-num_examples // global_batch_size)
  positions = host_positions(
      0, num_batches, global_batch_size, process_index, process_count
  )
  mask = positions < num_examples
  return np.where(mask, positions, 0), mask
