"""Long-tailed subsets, in plain NumPy.

The subset follows the LDAM protocol (Cao et al. 2019) that every CIFAR-LT
paper uses: class i of C keeps ``n_i = int(n_max * (1 / IF) ** (i / (C - 1)))``
examples, chosen by one NumPy MT19937 stream seeded once, shuffling each
class's indices (in official order) class by class in label order.
"""

import numpy as np


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(num_classes,) int64 number of examples of each class in `labels`."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    bad = labels[(labels < 0) | (labels >= num_classes)][0]
    raise ValueError(
        f'label {bad} is outside 0..{num_classes - 1} (num_classes='
        f'{num_classes}).'
    )
  return np.bincount(labels, minlength=num_classes)


def long_tail_counts(
    max_count: float, num_classes: int, imbalance_factor: float
) -> np.ndarray:
  """Per-class sizes of the LDAM long tail: int(n_max * (1/IF)^(i/(C-1))).

  Computed exactly as the LDAM code does (it takes 1/IF as its argument), so
  the rounding of every n_i matches the reference.

  Args:
    max_count: size of the head class (5000 for CIFAR-10, 500 for CIFAR-100).
    num_classes: C.
    imbalance_factor: IF = n_max / n_min, at least 1.

  Returns:
    (num_classes,) int64 counts, non-increasing.
  """
  if not imbalance_factor >= 1:
    raise ValueError(
        f'imbalance_factor={imbalance_factor} must be >= 1 (n_max / n_min; '
        '1 keeps the data balanced, 100 is the usual CIFAR-LT setting).'
    )
  inverse = 1.0 / imbalance_factor
  return np.array(
      [
          int(max_count * inverse ** (i / (num_classes - 1.0)))
          for i in range(num_classes)
      ],
      dtype=np.int64,
  )


def long_tail_indices(
    labels: np.ndarray, imbalance_factor: float, seed: int = 0
) -> np.ndarray:
  """Indices of the LDAM long-tailed subset of a balanced training set.

  Index-identical to the reference: ``np.random.seed(seed)`` once, then for
  each class in label order ``np.random.shuffle`` its indices (in the order
  of `labels`) and keep the first n_i. A private `RandomState` with the same
  seed produces the same stream without touching NumPy's global state.

  Args:
    labels: (N,) integer labels in the official training order.
    imbalance_factor: IF >= 1.
    seed: the protocol's seed (0).

  Returns:
    (sum n_i,) int64 indices into `labels`, class by class in label order
    and, within a class, in the shuffled order (the reference's order).
  """
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1
  counts = class_counts(labels, num_classes)
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise ValueError(
        f'classes {empty.tolist()} have no training examples; the long-tail '
        'protocol needs every class 0..max(label) present.'
    )
  # LDAM: img_max = len(data) / cls_num (the per-class size of balanced data).
  targets = long_tail_counts(
      len(labels) / num_classes, num_classes, imbalance_factor
  )
  short = np.flatnonzero(targets > counts)
  if short.size:
    c = short[0]
    raise ValueError(
        f'class {c} has {counts[c]} examples but the long tail asks for '
        f'{targets[c]}: the protocol expects balanced training data.'
    )
  rng = np.random.RandomState(seed)
  selected = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    rng.shuffle(members)
    selected.append(members[: targets[c]])
  return np.concatenate(selected)
