"""`train_and_evaluate(config, workdir)`: the whole run.

Builds the run plan from the config, checks every image file of list-file
benchmarks, resumes from the workdir's newest intact checkpoint if there is
one, and trains: for each chunk of steps, run it, log, evaluate, checkpoint.
It ends with the results (`nbn_jax.training.results`): evaluated on test at
the last step and, where the benchmark has a validation split, at the step
with the best validation accuracy (selected on val, never on test).

On SIGTERM or SIGINT (`preemption.StopSignals`) the run finishes the current
chunk (one step, or one dispatch of several on accelerators), writes a
checkpoint at that step and raises `preemption.Preempted`; the same command
resumes it. The workdir's lock and recorded config are `workdir.claim`'s
(train.py holds it around the run).
"""

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from input_pipeline import image_check
from nbn_jax.models.common import NBN_ALPHA
from nbn_jax.training import plan as plan_lib
from nbn_jax.training import preemption, reporting, results
from nbn_jax.training import workdir as workdir_lib
from nbn_jax.training.checkpoints import Checkpoints
from nbn_jax.training.inputs import Evaluator
from nbn_jax.training.plan import ConfigError, Plan
from nbn_jax.training.steps import TrainState


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains and evaluates per `config`; returns the results written to JSON.

  Raises:
    ConfigError, input_pipeline.DataError: bad settings or data (one-line
      messages).
    NonFiniteLossError: the loss diverged; the last good checkpoint is kept.
  """
  return run(plan_lib.build_plan(config), workdir)


def run(plan: Plan, workdir: str) -> dict[str, Any]:
  """Trains (unless `plan.eval_only`) and evaluates in `workdir`.

  Nothing is written to `workdir` before every image file is checked and,
  for eval_only, a checkpoint to evaluate is found.
  """
  image_check.check_benchmark_images(plan.benchmark)  # cached once passed
  checkpoints = Checkpoints(workdir, plan.keep_checkpoints)
  try:
    state, record = plan.init_state(), results.empty_record()
    restored = checkpoints.restore_latest(state)
    if restored is not None:
      state, record = restored
      logging.info('Resuming from the checkpoint at step %d.', int(state.step))
    elif plan.eval_only:
      raise ConfigError(
          f'config.eval_only=True but {workdir}/checkpoints holds no '
          'checkpoint to evaluate.'
      )
    if jax.process_index() == 0:
      workdir_lib.record_config(workdir, plan.config)
    writer = reporting.MetricWriter(workdir, enabled=jax.process_index() == 0)
    try:
      evaluator = plan.evaluator()
      if not plan.eval_only:
        with preemption.StopSignals() as signals:
          state = _train(
              plan, state, record, evaluator, checkpoints, writer, signals
          )
      return results.finish(
          plan, state, record, evaluator, checkpoints, writer, workdir
      )
    finally:
      writer.close()
  finally:
    checkpoints.wait()
    checkpoints.close()


def _train(
    plan: Plan,
    state: TrainState,
    record: dict[str, Any],
    evaluator: Evaluator,
    checkpoints: Checkpoints,
    writer: reporting.MetricWriter,
    signals: preemption.StopSignals,
) -> TrainState:
  """For each chunk: run, log, evaluate, checkpoint; stop on a signal.

  A chunk ends at the next event (log, eval, checkpoint) or after one call
  of the training input, whichever comes first.
  """
  length = plan.core.length
  batch_size = plan.core.step_config.global_batch_size
  step = int(jax.device_get(state.step))
  progress = reporting.Progress(
      length.total_steps, length.steps_per_epoch, batch_size
  )
  progress.start(step)
  logging.info(
      'Training %d steps (%.1f steps per epoch, batch %d) on %d devices.',
      length.total_steps,
      length.steps_per_epoch,
      batch_size,
      plan.core.topology.device_count,
  )
  training_input = plan.training_input()
  pending = []  # per-step metrics on the devices since the last log
  while step < length.total_steps:
    count = min(length.next_event(step) - step, training_input.steps_per_call)
    state, chunk = training_input.run(state, step, count)
    pending.append(chunk)
    step += count
    end = step == length.total_steps
    checkpoint = step % length.checkpoint_every == 0 or end
    # Metrics are checked before every checkpoint: a NaN is never saved.
    if step % length.log_every == 0 or checkpoint:
      _log_training(plan, state, step, pending, progress, checkpoints, writer)
      pending = []
    if step % length.eval_every == 0 or end:
      split = plan.selection_split
      summary = evaluator(state, getattr(plan.benchmark, split)).summary()
      epoch = step / length.steps_per_epoch
      logging.info(
          'step %d (epoch %.1f) %s: %s',
          step,
          epoch,
          split,
          results.format_summary(summary),
      )
      writer.write(step, {f'eval/{split}/{k}': v for k, v in summary.items()})
      if results.record_evaluation(record, step, epoch, split, summary):
        checkpoints.save(state, record, best=True)
    if checkpoint:
      checkpoints.save(state, record)
    if signals.stop_requested():
      if not checkpoint:
        if pending:  # a NaN is never saved
          _log_training(
              plan, state, step, pending, progress, checkpoints, writer
          )
        seconds = checkpoints.save(state, record, wait=True)
        logging.info('Checkpoint at step %d written in %.1f s.', step, seconds)
      checkpoints.wait()
      raise preemption.Preempted(step, signals.signal_name)
  return state


def _log_training(plan, state, step, pending, progress, checkpoints, writer):
  """Fetches pending metrics, stops on a non-finite loss, logs and writes."""
  fetched = jax.device_get(pending)
  loss = np.concatenate([m['loss'] for m in fetched])
  correct = np.concatenate([m['correct'] for m in fetched])
  bad = np.flatnonzero(~np.isfinite(loss))
  if bad.size:
    last_good = checkpoints.latest.latest_step()
    kept = (
        f'the last good checkpoint (step {last_good}) is kept in '
        f'{checkpoints.latest.directory}'
        if last_good is not None
        else 'no checkpoint had been written yet'
    )
    raise NonFiniteLossError(
        f'the training loss is {loss[bad[0]]} at step '
        f'{step - len(loss) + bad[0] + 1}; stopped, {kept}. Lower '
        'config.learning_rate or check the data.'
    )
  core = plan.core
  rate = float(core.learning_rate(step - 1))
  batch_size = core.step_config.global_batch_size
  accuracy = correct.sum() / (len(correct) * batch_size)
  line, images_per_second = progress.line(step, loss.mean(), accuracy, rate)
  logging.info('%s', line)
  scalars = {
      'train/loss': loss.mean(),
      'train/accuracy': accuracy,
      'train/learning_rate': rate,
      'train/epoch': step / core.length.steps_per_epoch,
  }
  if np.isfinite(images_per_second):
    scalars['train/images_per_second'] = images_per_second
  if NBN_ALPHA in state.params:
    scalars['nbn/alpha'] = jax.device_get(state.params[NBN_ALPHA])
  writer.write(step, scalars)
  writer.flush()
