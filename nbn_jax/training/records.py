"""Each run's record: its evaluations, its best results, whether it stopped.

The loop keeps one `RunRecord` per run and saves them with every
checkpoint as JSON (`to_checkpoint`), in the layout checkpoints have held
since K runs exist:

    {'runs': [{'history': [...], 'best': ..., 'best_test_during_training':
     ..., 'stopped': {'step': ..., 'reason': ...}, 'first_stage_step':
     ...}, ...]}

('stopped' only for a run that stopped, 'first_stage_step' only for a
second stage). `from_checkpoint` reads it back,
and a checkpoint written before K runs existed (one run's record itself)
as that single run's.
"""

import dataclasses
from typing import Any

from nbn_jax.training.metrics import LongTailAccuracy

# A run's status in its results (results.json's 'status'): it trained every
# planned step; it stopped on a non-finite loss or parameters (`Stop`); it
# trained fewer steps than planned (config.num_train_steps, or an evaluation
# of a checkpoint before the run's end); or its state is a step-0
# checkpoint, which only the converter writes: weights trained elsewhere.
FINISHED, STOPPED = 'finished', 'stopped'
STOPPED_EARLY, CONVERTED = 'stopped_early', 'converted'


@dataclasses.dataclass(frozen=True)
class Stop:
  """Where and why a run stopped.

  Attributes:
    step: the step whose update it dropped (its state is the one before).
    reason: why, in words: 'the training loss is nan'.
  """

  step: int
  reason: str


@dataclasses.dataclass
class RunRecord:
  """One run's record so far; the loop adds to it.

  Attributes:
    history: every evaluation, {'step', 'epoch', split: its summary}.
    best: the best evaluation on val so far, with the test summary
      ('test') and per-class accuracy ('test_per_class') at its step; None
      before the first, or without a validation split.
    best_test_during_training: without a validation split, the best
      evaluation on test (selected on test, and labelled so).
    stop: where and why it stopped; None while it trains.
    first_stage_step: a second stage's: the step of the first stage's
      checkpoint it started from; None otherwise.
  """

  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  best: dict[str, Any] | None = None
  best_test_during_training: dict[str, Any] | None = None
  stop: Stop | None = None
  first_stage_step: int | None = None

  def status(self, step: int, planned_steps: int) -> str:
    """The run's status with its state at `step` of `planned_steps`.

    `STOPPED` once it stopped; else `FINISHED` at the planned end,
    `CONVERTED` at step 0 (train.py checkpoints only after its steps) and
    `STOPPED_EARLY` in between.
    """
    if self.stop is not None:
      return STOPPED
    if step >= planned_steps:
      return FINISHED
    return CONVERTED if step == 0 else STOPPED_EARLY

  def add_evaluation(
      self, step: int, epoch: float, split: str, summary: dict[str, float]
  ) -> bool:
    """Adds an evaluation; True if it is a new best on val.

    A tie is no new best: the earlier step stands.
    """
    self.history.append({'step': step, 'epoch': epoch, split: summary})
    key = 'best' if split == 'val' else 'best_test_during_training'
    best = getattr(self, key)
    if best is not None and summary['top1'] <= best[split]['top1']:
      return False
    setattr(self, key, {'step': step, 'epoch': epoch, split: summary})
    return split == 'val'

  def add_best_test(self, test: LongTailAccuracy):
    """Test accuracy at the new best-on-val step, into `best`."""
    self.best['test'] = test.summary()
    self.best['test_per_class'] = test.per_class().tolist()

  def to_json(self) -> dict[str, Any]:
    """The record as checkpoints hold it."""
    data = {
        'history': self.history,
        'best': self.best,
        'best_test_during_training': self.best_test_during_training,
    }
    if self.stop is not None:
      data['stopped'] = dataclasses.asdict(self.stop)
    if self.first_stage_step is not None:
      data['first_stage_step'] = self.first_stage_step
    return data

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> 'RunRecord':
    """A record as checkpoints hold it (the fields a record lacks: empty)."""
    stopped = data.get('stopped')
    return cls(
        history=list(data.get('history', [])),
        best=data.get('best'),
        best_test_during_training=data.get('best_test_during_training'),
        stop=None if stopped is None else Stop(**stopped),
        first_stage_step=data.get('first_stage_step'),
    )


def to_checkpoint(records: list[RunRecord]) -> dict[str, Any]:
  """Every run's record, as a checkpoint holds them."""
  return {'runs': [record.to_json() for record in records]}


def from_checkpoint(data: dict[str, Any]) -> list[RunRecord]:
  """The runs' records a checkpoint holds.

  Checkpoints written before K runs existed hold one run's record itself;
  it becomes that single run's.
  """
  runs = data['runs'] if 'runs' in data else [data]
  return [RunRecord.from_json(run) for run in runs]
