"""Long-tail metrics: per-class hits, Many/Medium/Few groups, accuracy.

The eval step counts, per class, correct predictions (top-1 and top-5) and
examples with `class_hits` (JAX, inside the jitted step, so multi-host
counts come out summed over all hosts); `LongTailAccuracy` accumulates
those counts over batches and reports top-1 (and top-5 where the benchmark
reports it), Many/Medium/Few and per-class accuracy. A group's accuracy is
the mean over its test examples, as in the literature.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MANY_THRESHOLD = 100
FEW_THRESHOLD = 20


def shot_groups(
    train_counts: np.ndarray,
    many: int = MANY_THRESHOLD,
    few: int = FEW_THRESHOLD,
    counted: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """Many / Medium / Few class ids by training count.

  Many: more than `many` training images; Few: fewer than `few`; Medium: the
  rest (`few` to `many` inclusive), as in the long-tail literature.

  Args:
    train_counts: (C,) training images per class.
    many, few: the thresholds.
    counted: (C,) bool, the classes whose training count is known (default:
      all). The others are in no group (an evaluation whose train list is
      partial or absent); they count in top-1 only.

  Returns:
    {'many': ids, 'medium': ids, 'few': ids}, each a sorted int64 array.
  """
  if not few <= many:
    raise ValueError(f'shot thresholds need few <= many, got {few=}, {many=}.')
  counts = np.asarray(train_counts)
  known = np.ones(len(counts), bool) if counted is None else counted
  return {
      'many': np.flatnonzero(known & (counts > many)),
      'medium': np.flatnonzero(known & (counts >= few) & (counts <= many)),
      'few': np.flatnonzero(known & (counts < few)),
  }


def describe_shot_groups(
    groups: dict[str, np.ndarray],
    many: int = MANY_THRESHOLD,
    few: int = FEW_THRESHOLD,
) -> str:
  """One line naming the thresholds and the size of each group."""
  return (
      f'Many (> {many} train images): {len(groups["many"])} classes, '
      f'Medium ({few} to {many}): {len(groups["medium"])}, '
      f'Few (< {few}): {len(groups["few"])}'
  )


TOP_K = 5  # the top-k accuracy reported beside top-1


class ClassHits(NamedTuple):
  """Per-class counts of one batch (or of several, summed).

  Attributes:
    correct: (C,) examples of each class predicted right (top-1).
    total: (C,) examples of each class.
    correct_top5: (C,) examples of each class among whose `TOP_K` highest
      logits their class is.
  """

  correct: jax.Array
  total: jax.Array
  correct_top5: jax.Array


def class_hits(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, num_classes: int
) -> ClassHits:
  """Per-class counts of one batch; masked examples ignored.

  Args:
    logits: (B, num_classes).
    labels: (B,) int.
    mask: (B,) bool, False on padding.
    num_classes: C.

  Returns:
    Three (C,) int32 arrays (`ClassHits`).
  """
  mask = mask.astype(jnp.int32)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.int32) * mask
  _, top = jax.lax.top_k(logits, min(TOP_K, num_classes))
  in_top = jnp.any(top == labels[:, None], axis=-1).astype(jnp.int32) * mask
  count = lambda hits: jax.ops.segment_sum(hits, labels, num_classes)
  return ClassHits(count(correct), count(mask), count(in_top))


@dataclasses.dataclass
class LongTailAccuracy:
  """Accumulates per-class hits; reports overall, group and class accuracy.

  Attributes:
    groups: {'many': class ids, 'medium': ..., 'few': ...} (`shot_groups`).
    correct, total: (C,) running counts.
    correct_top5: (C,) running top-5 counts, or None where top-5 is not
      reported.
  """

  groups: dict[str, np.ndarray]
  correct: np.ndarray
  total: np.ndarray
  correct_top5: np.ndarray | None = None

  @classmethod
  def empty(
      cls, num_classes: int, groups: dict[str, np.ndarray], top5: bool = False
  ):
    """No example counted yet; `top5`: count and report top-5 accuracy."""
    zeros = np.zeros(num_classes, np.int64)
    return cls(groups, zeros, zeros.copy(), zeros.copy() if top5 else None)

  def update(
      self,
      correct: np.ndarray,
      total: np.ndarray,
      correct_top5: np.ndarray | None = None,
  ):
    self.correct += np.asarray(correct, np.int64)
    self.total += np.asarray(total, np.int64)
    if self.correct_top5 is not None:
      self.correct_top5 += np.asarray(correct_top5, np.int64)

  @property
  def num_examples(self) -> int:
    return int(self.total.sum())

  def per_class(self) -> np.ndarray:
    """(C,) accuracy of each class; NaN for classes with no eval example."""
    with np.errstate(invalid='ignore', divide='ignore'):
      return self.correct / self.total

  def summary(self) -> dict[str, float]:
    """{'top1', ['top5',] 'many', 'medium', 'few'} as fractions (NaN: an
    empty group); 'top5' where it is counted."""
    result = {'top1': _ratio(self.correct.sum(), self.total.sum())}
    if self.correct_top5 is not None:
      result['top5'] = _ratio(self.correct_top5.sum(), self.total.sum())
    for name, classes in self.groups.items():
      result[name] = _ratio(
          self.correct[classes].sum(), self.total[classes].sum()
      )
    return result


def _ratio(numerator, denominator) -> float:
  return float(numerator / denominator) if denominator else float('nan')
