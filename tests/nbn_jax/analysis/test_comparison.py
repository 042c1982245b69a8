"""Arms compared over seeds: paired differences with Student t intervals."""

import numpy as np
import pytest
from scipy import stats

from nbn_jax.analysis import comparison
from nbn_jax.training import results


def _summary(seeds, top1, stopped=()):
  """A K-run summary; the runs of seeds in `stopped` diverged."""
  per_run = []
  for seed, value in zip(seeds, top1):
    test = {'top1': value, 'many': 0.7, 'medium': 0.5, 'few': float('nan')}
    run = {'seed': seed, 'status': 'finished', 'last': {'test': test}}
    if seed in stopped:
      run |= {'status': 'stopped', 'stopped': {'step': 9, 'reason': 'nan'}}
    per_run.append(run)
  return results.summarize(per_run)


@pytest.mark.parametrize('n', [2, 5, 12, 40])
def test_confidence_interval_is_students_t(n):
  values = np.random.default_rng(n).normal(1.0, 2.0, n)
  mean, low, high = comparison.confidence_interval(values)
  expected = stats.t.interval(
      0.95, n - 1, loc=values.mean(), scale=stats.sem(values)
  )
  assert mean == pytest.approx(values.mean())
  assert (low, high) == pytest.approx(expected, rel=1e-3)


def test_differences_are_paired_by_seed_in_points():
  nbn = _summary([0, 1, 2], [0.61, 0.65, 0.64])
  bn = _summary([2, 0, 1], [0.64, 0.60, 0.62])  # other order, same seeds
  paired = comparison.paired_differences(nbn, bn, 'last')
  assert paired['seeds'] == [0, 1, 2]
  np.testing.assert_allclose(paired['top1']['per_seed'], [1.0, 3.0, 0.0])
  low, high = stats.t.interval(
      0.95, 2, loc=4 / 3, scale=stats.sem([1.0, 3.0, 0.0])
  )
  assert paired['top1']['mean'] == pytest.approx(4 / 3)
  np.testing.assert_allclose(paired['top1']['ci95'], [low, high], rtol=1e-3)
  assert 'few' not in paired  # an empty group has no difference


def test_a_diverged_run_has_no_pair():
  nbn = _summary([0, 1, 2], [0.61, 0.10, 0.64], stopped=(1,))
  bn = _summary([0, 1, 2], [0.60, 0.62, 0.64])
  paired = comparison.paired_differences(nbn, bn, 'last')
  assert paired['seeds'] == [0, 2]
  np.testing.assert_allclose(paired['top1']['per_seed'], [1.0, 0.0])
