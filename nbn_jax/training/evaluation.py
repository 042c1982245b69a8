"""Exact evaluation of every run of a train state on a split.

`Evaluator` counts per-class hits over a split's padded, host-sharded
batches (`input_pipeline.evaluation.eval_batches`), so no example is dropped
or counted twice, with the run strategy's eval program. It remembers the
evaluations of the latest step, so the loop's last evaluation and the final
results share one pass over the data, and it logs progress during long
evaluations.
"""

import dataclasses
import time
from typing import Callable

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

import input_pipeline as ip
from input_pipeline.evaluation import eval_batches
from nbn_jax.training import reporting, steps
from nbn_jax.training.inputs import to_global
from nbn_jax.training.metrics import ClassHits, LongTailAccuracy

PROGRESS_SECONDS = 30.0  # a progress line at most this often


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """Exact long-tail accuracy of each run of a train state on a split.

  Attributes:
    eval_step: jit (state, images, labels, mask) -> per-class counts
      (`metrics.ClassHits`), (C,) each for one run or (K, C) for K
      (`runs.Runs.eval_step`).
    sharding: the global layout of an eval batch.
    preprocessing: the eval-time resizing of image files.
    batch_size: global eval batch (the last one is padded and masked).
    groups: Many/Medium/Few class ids.
    top5: report top-5 accuracy too (`LongTailAccuracy.summary`).
  """

  eval_step: Callable
  sharding: NamedSharding
  preprocessing: ip.Preprocessing
  batch_size: int
  groups: dict[str, np.ndarray]
  top5: bool = False
  _latest: dict = dataclasses.field(default_factory=dict, compare=False)

  def __call__(
      self, state: steps.TrainState, split: ip.Split
  ) -> list[LongTailAccuracy]:
    """One accuracy per run (a list of one for a single run).

    A split already evaluated at the state's step is not evaluated again.
    """
    key = (split.name, steps.furthest_step(state))
    if key not in self._latest:
      if self._latest and next(iter(self._latest))[1] != key[1]:
        self._latest.clear()  # only the latest step is kept
      self._latest[key] = self._evaluate(state, split)
    return self._latest[key]

  def _evaluate(self, state, split):
    counts = ClassHits(0, 0, 0)  # summed over the batches
    batches = eval_batches(
        split,
        self.preprocessing,
        self.batch_size,
        jax.process_index(),
        jax.process_count(),
    )
    num_batches = -(-len(split) // self.batch_size)
    start = last_line = time.perf_counter()
    for done, batch in enumerate(batches, start=1):
      hits = self.eval_step(
          state,
          *(
              to_global(batch[k], self.sharding)
              for k in ('image', 'label', 'mask')
          ),
      )
      counts = ClassHits(*map(np.add, counts, jax.device_get(hits)))
      now = time.perf_counter()
      if now - last_line >= PROGRESS_SECONDS and done < num_batches:
        last_line = now
        seconds_left = (now - start) / done * (num_batches - done)
        logging.info(
            'evaluating %s: batch %d/%d, ETA %s',
            split.name,
            done,
            num_batches,
            reporting.format_duration(seconds_left),
        )
    accuracies = []
    for run_counts in zip(*map(np.atleast_2d, counts)):
      accuracy = LongTailAccuracy.empty(
          len(run_counts[0]), self.groups, self.top5
      )
      accuracy.update(*run_counts)
      if accuracy.num_examples != len(split):
        raise RuntimeError(
            f'evaluated {accuracy.num_examples} of {len(split)} examples of '
            f'{split.name}'
        )
      accuracies.append(accuracy)
    return accuracies
