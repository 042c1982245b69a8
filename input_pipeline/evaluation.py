"""Long-tail evaluation metrics that ignore padded examples.

The eval step counts, per class, correct predictions and examples with
`class_hits` (JAX, inside the jitted step, so multi-host counts come out
summed over all hosts); `LongTailAccuracy` accumulates those counts over
batches and reports top-1, Many/Medium/Few and per-class accuracy. A group's
accuracy is the mean over its test examples, as in the literature.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


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
