"""The sweep's report: cells as mean +- std, paired differences by seed
with Student-t 95% intervals."""

import json
import os
import sys

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'bench'))
import sweep  # noqa: E402  (a script in bench/)

from nbn_jax.training import results  # noqa: E402


def _run(seed, top1, many):
  test = {'top1': top1, 'many': many, 'medium': 0.5, 'few': float('nan')}
  return {
      'seed': seed,
      'last': {'test': test},
      'best_test_during_training': {'test': test},
  }


def _write_cell(root, imbalance, arm, seeds, top1, many):
  summary = results.summarize(
      [_run(s, t, m) for s, t, m in zip(seeds, top1, many)]
  )
  path = os.path.join(sweep.cell_dir(root, imbalance, arm), 'summary.json')
  os.makedirs(os.path.dirname(path))
  from nbn_jax.training import reporting

  reporting.write_json(path, summary)  # NaN (the empty Few group) as null


@pytest.mark.parametrize('n', [2, 5, 12, 40])
def test_confidence_interval_is_students_t(n):
  values = np.random.default_rng(n).normal(1.0, 2.0, n)
  mean, low, high = sweep.confidence_interval(values)
  expected = stats.t.interval(
      0.95, n - 1, loc=values.mean(), scale=stats.sem(values)
  )
  assert mean == pytest.approx(values.mean())
  assert (low, high) == pytest.approx(expected, rel=1e-3)


def test_report_pairs_nbn_with_bn_by_seed(tmp_path):
  root = str(tmp_path)
  _write_cell(root, 100, 'bn', [0, 1, 2], [0.60, 0.62, 0.64], [0.7, 0.7, 0.7])
  _write_cell(root, 100, 'nbn', [0, 1, 2], [0.61, 0.65, 0.64], [0.8, 0.7, 0.7])
  sweep.report(type('Args', (), {'root': root, 'out': str(tmp_path / 'out')})())
  data = json.loads((tmp_path / 'out' / 'sweep.json').read_text())
  paired = data['if100']['paired']['nbn-bn/last']
  assert paired['seeds'] == [0, 1, 2]
  np.testing.assert_allclose(paired['top1']['per_seed'], [1.0, 3.0, 0.0])
  low, high = stats.t.interval(
      0.95, 2, loc=4 / 3, scale=stats.sem([1.0, 3.0, 0.0])
  )
  np.testing.assert_allclose(paired['top1']['ci95'], [low, high], rtol=1e-3)
  assert 'few' not in paired  # an empty group has no difference
  table = (tmp_path / 'out' / 'sweep.md').read_text()
  assert '| NBN | 3 | 63.33 ± 2.08 |' in table
  assert '| few | ' not in table
