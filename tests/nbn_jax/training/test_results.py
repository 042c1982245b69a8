"""What K runs' results are summarised into: mean, std and each run's."""

import numpy as np
import pytest

from nbn_jax.training import results


def _run(seed, top1, few):
  test = {'top1': top1, 'many': 0.9, 'medium': 0.5, 'few': few}
  return {'seed': seed, 'last': {'test': test}}


def test_summary_is_mean_and_sample_std_over_runs():
  summary = results.summarize([_run(0, 0.5, 0.1), _run(1, 0.7, 0.3)])
  assert summary['seeds'] == [0, 1]
  top1 = summary['last']['top1']
  assert top1['mean'] == pytest.approx(0.6)
  assert top1['std'] == pytest.approx(np.std([0.5, 0.7], ddof=1))
  assert top1['runs'] == [0.5, 0.7]
  assert 'best_on_val' not in summary  # no run selected on a validation set


def test_summary_table_shows_percent_and_not_available_groups():
  summary = results.summarize([_run(0, 0.5, np.nan), _run(1, 0.7, np.nan)])
  header, row, unit = results.summary_table(summary).splitlines()
  assert header.split() == ['top1', 'many', 'medium', 'few']
  assert row.split() == [
      'last',
      'test',
      '60.00',
      '+-',
      '14.14',
      '90.00',
      '+-',
      '0.00',
      '50.00',
      '+-',
      '0.00',
      'n/a',
  ]
  assert unit == '(accuracy in %, mean +- std over runs)'


def test_a_record_from_before_k_runs_resumes_as_the_single_run():
  one_run = {'history': [{'step': 4}], 'best': None}
  assert results.resumed_record(one_run) == {'runs': [one_run]}
  today = results.empty_record(2)
  assert results.resumed_record(today) is today
