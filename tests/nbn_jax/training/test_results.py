"""What K runs' results are summarised into: mean, std and each run's."""

import numpy as np
import pytest

from nbn_jax.training import results


def _run(seed, top1, few, stopped=None, stopped_early=None):
  test = {'top1': top1, 'many': 0.9, 'medium': 0.5, 'few': few}
  run = {'seed': seed, 'status': 'finished', 'last': {'test': test}}
  if stopped is not None:
    run |= {'status': 'stopped', 'stopped': stopped}
  if stopped_early is not None:
    run |= {'status': 'stopped_early', 'stopped_early': stopped_early}
  return run


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


def test_a_progress_summary_shows_percent_and_an_empty_group_as_not_available():
  summary = {'top1': 0.1642, 'many': 0.2052, 'medium': 0.0, 'few': np.nan}
  assert results.format_summary(summary) == (
      'top1 16.42, many 20.52, medium 0.00, few n/a'
  )


def test_stopped_runs_are_listed_and_left_out_of_the_statistics():
  nan_at_47 = {'step': 47, 'reason': 'the training loss is nan'}
  summary = results.summarize([
      _run(0, 0.5, 0.1),
      _run(1, 0.1, 0.0, stopped=nan_at_47),
      _run(2, 0.7, 0.3),
  ])
  assert summary['seeds'] == [0, 1, 2]
  assert summary['counted_seeds'] == [0, 2]
  assert summary['stopped'] == [{'run': 1, 'seed': 1, **nan_at_47}]
  assert summary['last']['top1']['runs'] == [0.5, 0.7]
  assert summary['last']['top1']['mean'] == pytest.approx(0.6)
  unit = results.summary_table(summary).splitlines()[-1]
  assert unit == (
      '(accuracy in %, mean +- std over 2 of 3 runs; run 1 (seed 1) stopped '
      'at step 47: the training loss is nan)'
  )


def test_one_finished_run_has_a_mean_and_no_spread():
  stop = {'step': 3, 'reason': 'the parameters became non-finite'}
  summary = results.summarize([_run(0, 0.5, 0.1), _run(1, 0.2, 0.1, stop)])
  assert summary['last']['top1'] == {'mean': 0.5, 'std': None, 'runs': [0.5]}
  row = results.summary_table(summary).splitlines()[1]
  assert row.split()[:3] == ['last', 'test', '50.00']


def test_runs_stopped_early_are_counted_and_said_to_be_so():
  """config.num_train_steps=22 of 19,385: means over the runs, labelled."""
  early = {'step': 22, 'planned_steps': 19385}
  summary = results.summarize([
      _run(0, 0.5, 0.1, stopped_early=early),
      _run(1, 0.7, 0.3, stopped_early=early),
  ])
  assert summary['counted_seeds'] == [0, 1]
  assert summary['stopped_early'] == [
      {'run': 0, 'seed': 0, **early},
      {'run': 1, 'seed': 1, **early},
  ]
  assert summary['last']['top1']['mean'] == pytest.approx(0.6)
  assert summary['accuracy_unit'] == 'fraction'
  unit = results.summary_table(summary).splitlines()[-1]
  assert unit == (
      '(accuracy in %, mean +- std over runs; stopped early at step 22 of '
      'the 19385 planned)'
  )


def test_a_summary_from_before_the_counted_seeds_reads_its_finished_ones():
  assert results.counted_seeds({'seeds': [0, 1], 'finished_seeds': [1]}) == [1]
  assert results.counted_seeds({'seeds': [0, 1]}) == [0, 1]  # schema < 4


@pytest.mark.parametrize(
    'status, evaluation, line',
    [
        ('finished', False, ''),
        (
            'stopped_early',
            False,
            (
                'stopped early at step 22 of the 19385 planned: not a finished '
                'run (config.num_train_steps); rerun with a larger '
                'config.num_train_steps, or -1, to continue it'
            ),
        ),
        (
            'stopped_early',
            True,
            (
                'stopped early at step 22 of the 19385 planned: not a finished '
                'run (the checkpoint evaluated)'
            ),
        ),
        (
            'converted',
            True,
            'a converted checkpoint (step 0): trained elsewhere, not here',
        ),
    ],
)
def test_a_table_says_what_is_not_a_finished_run(status, evaluation, line):
  run = {
      'status': status,
      'stopped_early': {'step': 22, 'planned_steps': 19385},
  }
  assert results.status_line(run, evaluation) == line


def test_top5_is_summarised_where_every_run_has_it():
  with_top5 = [_run(seed, 0.5, 0.1) for seed in (0, 1)]
  for run, top5 in zip(with_top5, (0.8, 0.9)):
    run['last']['test'] = {'top1': 0.5, 'top5': top5} | run['last']['test']
  summary = results.summarize(with_top5)
  assert summary['last']['top5']['mean'] == pytest.approx(0.85)
  header = results.summary_table(summary).splitlines()[0]
  assert header.split() == ['top1', 'top5', 'many', 'medium', 'few']
  cifar = results.summarize([_run(0, 0.5, 0.1), _run(1, 0.7, 0.3)])
  assert 'top5' not in cifar['last']
