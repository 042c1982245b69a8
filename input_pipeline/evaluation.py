"""Exact evaluation: padded, host-sharded batches and long-tail metrics.

`padded_eval_indices` lays a split out in whole global batches, each host
reading its own slice, padding marked by a False mask: every example is
counted exactly once over all hosts, and all hosts run the same number of
batches. `eval_batches` yields those batches (NumPy for in-memory splits, so
no TensorFlow is needed; tf.data for image files).

The eval step counts, per class, correct predictions and examples with
`class_hits` (JAX, inside the jitted step, so multi-host counts come out
summed over all hosts); `LongTailAccuracy` accumulates those counts over
batches and reports top-1, Many/Medium/Few and per-class accuracy. A group's
accuracy is the mean over its test examples, as in the literature.
"""

import dataclasses
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline.datasets import Preprocessing
from input_pipeline.samplers import host_positions
from input_pipeline.sources import DataError, Split


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


def eval_batches(
    split: Split,
    preprocessing: Preprocessing,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
  """This host's padded eval batches: 'image' uint8, 'label', 'mask'."""
  if not split.in_memory:
    from input_pipeline import tf_pipeline  # imports TensorFlow

    dataset, _ = tf_pipeline.eval_dataset(
        split,
        preprocessing,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    yield from tf_pipeline.as_numpy(dataset)
    return
  indices, mask = padded_eval_indices(
      len(split), global_batch_size, process_index, process_count
  )
  for batch_indices, batch_mask in zip(indices, mask):
    yield {
        'image': split.images[batch_indices],
        'label': split.labels[batch_indices],
        'mask': batch_mask,
    }


def class_hits(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array]:
  """Per-class (correct, total) counts of one batch; masked examples ignored.

  Args:
    logits: (B, num_classes).
    labels: (B,) int.
    mask: (B,) bool, False on padding.
    num_classes: C.

  Returns:
    Two (C,) int32 arrays.
  """
  mask = mask.astype(jnp.int32)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.int32) * mask
  return (
      jax.ops.segment_sum(correct, labels, num_classes),
      jax.ops.segment_sum(mask, labels, num_classes),
  )


@dataclasses.dataclass
class LongTailAccuracy:
  """Accumulates per-class hits; reports overall, group and class accuracy.

  Attributes:
    groups: {'many': class ids, 'medium': ..., 'few': ...} (see
      `input_pipeline.shot_groups`).
    correct, total: (C,) running counts.
  """

  groups: dict[str, np.ndarray]
  correct: np.ndarray
  total: np.ndarray

  @classmethod
  def empty(cls, num_classes: int, groups: dict[str, np.ndarray]):
    zeros = np.zeros(num_classes, np.int64)
    return cls(groups, zeros, zeros.copy())

  def update(self, correct: np.ndarray, total: np.ndarray):
    self.correct += np.asarray(correct, np.int64)
    self.total += np.asarray(total, np.int64)

  @property
  def num_examples(self) -> int:
    return int(self.total.sum())

  def per_class(self) -> np.ndarray:
    """(C,) accuracy of each class; NaN for classes with no eval example."""
    with np.errstate(invalid='ignore', divide='ignore'):
      return self.correct / self.total

  def summary(self) -> dict[str, float]:
    """{'top1', 'many', 'medium', 'few'} as fractions (NaN: empty group)."""
    result = {'top1': _ratio(self.correct.sum(), self.total.sum())}
    for name, classes in self.groups.items():
      result[name] = _ratio(
          self.correct[classes].sum(), self.total[classes].sum()
      )
    return result


def _ratio(numerator, denominator) -> float:
  return float(numerator / denominator) if denominator else float('nan')
