"""Each run's record: typed, and saved as the JSON checkpoints hold."""

import json

import numpy as np
import pytest

from nbn_jax.training import records
from nbn_jax.training.metrics import LongTailAccuracy

SUMMARY = {'top1': 0.5, 'many': 0.6, 'medium': 0.4, 'few': 0.3}
# Two runs as a checkpoint of today's layout holds them, run 1 stopped.
CHECKPOINT = {
    'runs': [
        {
            'history': [{'step': 4, 'epoch': 1.0, 'val': SUMMARY}],
            'best': {
                'step': 4,
                'epoch': 1.0,
                'val': SUMMARY,
                'test': SUMMARY,
                'test_per_class': [0.5, 0.5],
            },
            'best_test_during_training': None,
        },
        {
            'history': [],
            'best': None,
            'best_test_during_training': None,
            'stopped': {'step': 3, 'reason': 'the training loss is nan'},
        },
    ]
}


def test_a_checkpoints_records_read_back_as_they_were_written():
  saved = json.loads(json.dumps(CHECKPOINT))  # as orbax's JSON returns it
  run_records = records.from_checkpoint(saved)
  assert run_records[0].best['step'] == 4 and run_records[0].stop is None
  assert run_records[1].stop == records.Stop(3, 'the training loss is nan')
  assert records.to_checkpoint(run_records) == CHECKPOINT


def test_a_record_from_before_k_runs_resumes_as_the_single_run():
  one_run = {'history': [{'step': 4}], 'best': None}
  (record,) = records.from_checkpoint(one_run)
  assert record == records.RunRecord(history=[{'step': 4}])
  assert record.add_evaluation(8, 2.0, 'test', SUMMARY) is False
  assert record.best_test_during_training['step'] == 8


def test_a_record_marks_where_and_why_a_run_stopped():
  record = records.RunRecord()
  assert record.status(100, 100) == records.FINISHED
  assert 'stopped' not in record.to_json()
  record.stop = records.Stop(12, 'the training loss is inf')
  assert record.status(11, 100) == records.STOPPED
  assert record.to_json()['stopped'] == {
      'step': 12,
      'reason': 'the training loss is inf',
  }


@pytest.mark.parametrize(
    'split, best', [('val', 'best'), ('test', 'best_test_during_training')]
)
def test_a_tie_keeps_the_first_best(split, best):
  """Equal accuracy later is no new best: the earlier checkpoint stands."""
  record = records.RunRecord()
  assert record.add_evaluation(10, 1.0, split, SUMMARY) == (split == 'val')
  assert not record.add_evaluation(20, 2.0, split, dict(SUMMARY))
  assert getattr(record, best)['step'] == 10
  assert len(record.history) == 2


def test_the_test_result_at_a_new_best_on_val_joins_it():
  record = records.RunRecord()
  assert record.add_evaluation(10, 1.0, 'val', SUMMARY)
  groups = {'many': np.array([0]), 'few': np.array([1])}
  test = LongTailAccuracy.empty(2, groups)
  test.update(np.array([3, 1]), np.array([4, 4]))
  record.add_best_test(test)
  assert record.best['test'] == test.summary()
  assert record.best['test_per_class'] == [0.75, 0.25]


@pytest.mark.parametrize(
    'step, status',
    [
        (100, records.FINISHED),  # every planned step
        (22, records.STOPPED_EARLY),  # config.num_train_steps=22
        (99, records.STOPPED_EARLY),
        (0, records.CONVERTED),  # the converter's checkpoint, never trained
    ],
)
def test_only_a_run_at_its_planned_end_is_finished(step, status):
  assert records.RunRecord().status(step, planned_steps=100) == status
