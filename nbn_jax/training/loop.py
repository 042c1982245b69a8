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
from nbn_jax.training import preemption, reporting, results, runs
from nbn_jax.training import workdir as workdir_lib
from nbn_jax.training.checkpoints import Checkpoints
from nbn_jax.training.inputs import Evaluator
from nbn_jax.training.plan import ConfigError, Plan
from nbn_jax.training.steps import TrainState, furthest_step


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
    state, record = plan.init_state(), results.empty_record(plan.num_runs)
    restored = checkpoints.restore_latest(state)
    if restored is not None:
      state, record = restored[0], results.resumed_record(restored[1])
      logging.info(
          'Resuming from the checkpoint at step %d.', furthest_step(state)
      )
    elif plan.eval_only:
      raise ConfigError(
          f'config.eval_only=True but {workdir}/checkpoints holds no '
          'checkpoint to evaluate.'
      )
    if jax.process_index() == 0:
      workdir_lib.record_config(workdir, plan.config)
    writers = [
        reporting.MetricWriter(
            results.run_dir(workdir, plan.num_runs, k),
            enabled=jax.process_index() == 0,
        )
        for k in range(plan.num_runs)
    ]
    try:
      evaluator = plan.evaluator()
      if not plan.eval_only:
        with preemption.StopSignals() as signals:
          state = _train(
              plan, state, record, evaluator, checkpoints, writers, signals
          )
      return results.finish(plan, state, record, evaluator, writers, workdir)
    finally:
      for writer in writers:
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
    writers: list[reporting.MetricWriter],
    signals: preemption.StopSignals,
) -> TrainState:
  """For each chunk: run, log, evaluate, checkpoint; stop on a signal.

  A chunk ends at the next event (log, eval, checkpoint) or after one call
  of the training input, whichever comes first.
  """
  length = plan.core.length
  batch_size = plan.core.step_config.global_batch_size
  step = furthest_step(state)
  progress = reporting.Progress(
      length.total_steps, length.steps_per_epoch, batch_size * plan.num_runs
  )
  progress.start(step)
  logging.info(
      'Training %d steps (%.1f steps per epoch, batch %d) of %d run(s) on %d '
      'devices.',
      length.total_steps,
      length.steps_per_epoch,
      batch_size,
      plan.num_runs,
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
      _log_training(plan, state, step, pending, progress, checkpoints, writers)
      pending = []
    if step % length.eval_every == 0 or end:
      _evaluate(plan, state, record, evaluator, step, checkpoints, writers)
    if checkpoint:
      checkpoints.save(state, record)
    if signals.stop_requested():
      if not checkpoint:
        if pending:  # a NaN is never saved
          _log_training(
              plan, state, step, pending, progress, checkpoints, writers
          )
        seconds = checkpoints.save(state, record, wait=True)
        logging.info('Checkpoint at step %d written in %.1f s.', step, seconds)
      checkpoints.wait()
      raise preemption.Preempted(step, signals.signal_name)
  return state


def _evaluate(plan, state, record, evaluator, step, checkpoints, writers):
  """Evaluates every run on the selection split; records new bests."""
  split = plan.selection_split
  epoch = step / plan.core.length.steps_per_epoch
  tests = None  # evaluated once, at the first new best on val
  for k, accuracy in enumerate(
      evaluator(state, getattr(plan.benchmark, split))
  ):
    summary = accuracy.summary()
    logging.info(
        'step %d (epoch %.1f)%s %s: %s',
        step,
        epoch,
        f' run {k}' if plan.num_runs > 1 else '',
        split,
        results.format_summary(summary),
    )
    writers[k].write(step, {f'eval/{split}/{g}': v for g, v in summary.items()})
    if results.record_evaluation(
        record['runs'][k], step, epoch, split, summary
    ):
      if tests is None:
        tests = evaluator(state, plan.benchmark.test)
      results.record_best_test(record['runs'][k], tests[k])
      if plan.num_runs == 1:  # the best model, for people to use
        checkpoints.save(state, record, best=True)


def _log_training(plan, state, step, pending, progress, checkpoints, writers):
  """Fetches pending metrics, stops on a non-finite loss, logs and writes.

  A single run stops on a non-finite loss. Of K runs, one whose loss goes
  non-finite is stopped alone (`runs`: its updates are dropped from then
  on) and reported; the program stops when every run has.
  """
  fetched = jax.device_get(pending)
  # (steps, K) for K runs, (steps,) -> (steps, 1) for one.
  loss = np.concatenate([m['loss'] for m in fetched]).reshape(-1, plan.num_runs)
  correct = np.concatenate([m['correct'] for m in fetched]).reshape(
      -1, plan.num_runs
  )
  live = np.ones(plan.num_runs, bool)
  if plan.num_runs > 1:
    stopped = runs.stopped_runs(state)
    for k, last in stopped.items():
      logging.warning(
          'run %d (seed %d) stopped on a non-finite loss at step %d; the '
          'other runs go on.',
          k,
          plan.seeds[k],
          last + 1,
      )
    live[list(stopped)] = False
  last_good = checkpoints.latest.latest_step()
  kept = (
      f'the last good checkpoint (step {last_good}) is kept in '
      f'{checkpoints.latest.directory}'
      if last_good is not None
      else 'no checkpoint had been written yet'
  )
  bad = np.flatnonzero(~np.isfinite(loss[:, 0]))
  if plan.num_runs == 1 and bad.size:
    raise NonFiniteLossError(
        f'the training loss is {loss[bad[0], 0]} at step '
        f'{step - len(loss) + bad[0] + 1}; stopped, {kept}. Lower '
        'config.learning_rate or check the data.'
    )
  if not live.any():
    raise NonFiniteLossError(
        f'the training loss of every run became non-finite (by step {step})'
        f'; stopped, {kept}. Lower config.learning_rate or check the data.'
    )
  core = plan.core
  rate = float(core.learning_rate(step - 1))
  batch_size = core.step_config.global_batch_size
  accuracy = correct.sum(0) / (len(correct) * batch_size)
  mean_loss = loss.mean(0)
  line, images_per_second = progress.line(
      step, mean_loss[live].mean(), accuracy[live].mean(), rate
  )
  logging.info('%s', line)
  alpha = jax.device_get(state.params.get(NBN_ALPHA))
  for k, writer in enumerate(writers):
    scalars = {
        'train/loss': mean_loss[k],
        'train/accuracy': accuracy[k],
        'train/learning_rate': rate,
        'train/epoch': step / core.length.steps_per_epoch,
    }
    if np.isfinite(images_per_second):
      scalars['train/images_per_second'] = images_per_second
    if alpha is not None:
      scalars['nbn/alpha'] = np.reshape(alpha, -1)[k]
    writer.write(step, scalars)
    writer.flush()
