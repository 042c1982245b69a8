"""The Evaluator: exact per-class counts, one pass per split and step, and
progress lines during long evaluations."""

import logging
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import input_pipeline as ip
from nbn_jax.training import evaluation

NUM_CLASSES = 3
BATCH = 4


class CountingEvalStep:
  """An eval program that predicts class 0 for every image, counting calls.

  Returns per-class counts (correct, total, correct top-5) over the
  unmasked examples, (C,) each, as the trainer's eval step does for one
  run; (K, C) for `num_runs` K. Top-5 counts every example right.
  """

  def __init__(self, num_runs=None):
    self.calls = 0
    self.num_runs = num_runs

  def __call__(self, state, images, labels, mask):
    del state, images
    self.calls += 1
    labels, mask = np.asarray(labels), np.asarray(mask)
    total = np.bincount(labels[mask], minlength=NUM_CLASSES)
    correct = np.bincount(labels[mask & (labels == 0)], minlength=NUM_CLASSES)
    if self.num_runs is None:
      return correct, total, total
    every_run = (self.num_runs, 1)  # each run predicts the same
    return tuple(np.tile(a, every_run) for a in (correct, total, total))


def _evaluator(eval_step, top5=False) -> evaluation.Evaluator:
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  return evaluation.Evaluator(
      eval_step,
      NamedSharding(mesh, P('data')),
      ip.Preprocessing('cifar'),
      BATCH,
      {'many': np.array([0]), 'medium': np.array([1]), 'few': np.array([2])},
      top5,
  )


def _split(labels, name='test') -> ip.Split:
  labels = np.asarray(labels, np.int32)
  images = np.zeros((len(labels), 2, 2, 3), np.uint8)
  return ip.Split(name, labels, NUM_CLASSES, images=images)


def _state(step):
  """A train state at `step`: one run's, or K runs' for a list of steps."""
  return types.SimpleNamespace(step=np.asarray(step, np.int32))


# 11 examples: 3 batches of 4, the last padded with one masked example.
LABELS = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_every_example_is_counted_once_and_the_accuracy_is_exact():
  [accuracy] = _evaluator(CountingEvalStep())(_state(5), _split(LABELS))
  summary = accuracy.summary()
  assert accuracy.num_examples == len(LABELS)
  assert summary['top1'] == pytest.approx(5 / 11)
  assert (summary['many'], summary['medium'], summary['few']) == (1, 0, 0)


@pytest.mark.parametrize('top5', [True, False])
def test_top5_is_reported_where_the_benchmark_reports_it(top5):
  [accuracy] = _evaluator(CountingEvalStep(), top5)(_state(5), _split(LABELS))
  assert ('top5' in accuracy.summary()) == top5
  if top5:
    assert accuracy.summary()['top5'] == 1.0  # CountingEvalStep's top-5


def test_a_split_is_evaluated_once_per_step():
  """The loop's last evaluation and the results share one pass."""
  eval_step = CountingEvalStep()
  evaluator = _evaluator(eval_step)
  test, val = _split(LABELS), _split(LABELS[:4], name='val')
  first = evaluator(_state(5), test)
  assert evaluator(_state(5), test) is first
  assert eval_step.calls == 3
  evaluator(_state(5), val)  # another split: its own pass
  assert eval_step.calls == 4
  evaluator(_state(6), test)  # a new step: evaluated again
  assert eval_step.calls == 7
  evaluator(_state(5), test)  # only the latest step is remembered
  assert eval_step.calls == 10


def test_each_split_of_a_step_is_remembered_until_the_step_moves():
  eval_step = CountingEvalStep()
  evaluator = _evaluator(eval_step)
  test, val = _split(LABELS), _split(LABELS[:4], name='val')
  first = evaluator(_state(5), test)  # 3 batches
  evaluator(_state(5), val)  # 1 batch
  assert evaluator(_state(5), test) is first  # still remembered
  assert eval_step.calls == 4


def test_k_runs_are_evaluated_again_when_any_run_moves_on():
  """Run 0 stopped at step 3; the others' steps decide what is new."""
  eval_step = CountingEvalStep(num_runs=3)
  evaluator = _evaluator(eval_step)
  test = _split(LABELS)
  assert len(evaluator(_state([3, 5, 5]), test)) == 3
  assert eval_step.calls == 3
  evaluator(_state([3, 5, 5]), test)
  assert eval_step.calls == 3
  evaluator(_state([3, 6, 6]), test)  # run 0 has not moved, the others have
  assert eval_step.calls == 6


def test_long_evaluations_log_progress(monkeypatch, caplog):
  monkeypatch.setattr(evaluation, 'PROGRESS_SECONDS', 0.0)
  with caplog.at_level(logging.INFO):
    _evaluator(CountingEvalStep())(_state(5), _split(LABELS))
  progress = [m for m in caplog.messages if m.startswith('evaluating')]
  assert [m.split(', ETA')[0] for m in progress] == [
      'evaluating test: batch 1/3',
      'evaluating test: batch 2/3',
  ]


def test_a_count_that_misses_examples_is_an_error():
  class DroppingEvalStep(CountingEvalStep):

    def __call__(self, state, images, labels, mask):
      mask = np.asarray(mask).copy()
      mask[0] = False  # drops the first example of every batch
      return super().__call__(state, images, labels, mask)

  with pytest.raises(RuntimeError, match='evaluated 8 of 11 examples of test'):
    _evaluator(DroppingEvalStep())(_state(5), _split(LABELS))


def test_a_count_that_includes_the_padding_is_an_error():
  class PaddingEvalStep(CountingEvalStep):

    def __call__(self, state, images, labels, mask):
      return super().__call__(state, images, labels, np.ones_like(mask))

  with pytest.raises(RuntimeError, match='evaluated 12 of 11 examples of test'):
    _evaluator(PaddingEvalStep())(_state(5), _split(LABELS))
