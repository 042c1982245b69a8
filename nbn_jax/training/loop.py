"""`train_and_evaluate(config, workdir)`: the whole run.

Builds the run plan from the config, checks every image file of list-file
benchmarks, resumes from the workdir's newest intact checkpoint if there is
one, and trains: for each chunk of steps, run it, log, evaluate, checkpoint.
It ends with the results (`nbn_jax.training.results`): evaluated on test at
the last step and, where the benchmark has a validation split, at the step
with the best validation accuracy (selected on val, never on test).

One run or K (`plan.runs`) are trained by the same loop; its steps share a
`RunContext` (the plan, the workdir's checkpoints and writers, the
evaluator and each run's record). A run whose loss or parameters become
non-finite stops (its update is dropped, `nbn_jax.training.runs`); it is
reported and marked in its record (`records.Stop`), the others go on, and
the loop raises `NonFiniteLossError` once every run has stopped.

On SIGTERM or SIGINT (`preemption.StopSignals`) the run finishes the current
chunk (one step, or one dispatch of several on accelerators), writes a
checkpoint at that step and raises `preemption.Preempted`; the same command
resumes it. The workdir's lock and recorded config are `workdir.claim`'s
(train.py holds it around the run).
"""

import contextlib
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from input_pipeline import image_check
from nbn_jax.training import plan as plan_lib
from nbn_jax.training import finetune, metrics, preemption, records
from nbn_jax.training import reporting, results
from nbn_jax.training import runs as runs_lib
from nbn_jax.training import workdir as workdir_lib
from nbn_jax.training.checkpoints import Checkpoints
from nbn_jax.training.context import RunContext
from nbn_jax.training.errors import ConfigError, NonFiniteLossError
from nbn_jax.training.plan import Plan
from nbn_jax.training.steps import TrainState, furthest_step

# An NBN alpha (it starts at 1) whose magnitude falls below this has scaled
# the affine output of every NBN layer reading it to under a thousandth of
# its unit-norm direction: those layers (a RIDE expert's last stage, say)
# have all but switched off. The loop warns once per alpha and run.
COLLAPSED_ALPHA = 1e-3


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    signals: preemption.StopSignals | None = None,
) -> dict[str, Any]:
  """Trains and evaluates per `config`; returns the results written to JSON.

  Args:
    config: the run's config.
    workdir: a local folder or a gs:// URL (`storage`).
    signals: the run's stop signals when it has several processes
      (`preemption.run_signals`); None: the training steps install their own.

  Raises:
    ConfigError, input_pipeline.DataError: bad settings or data (one-line
      messages).
    NonFiniteLossError: training diverged; the last good checkpoint is kept.
    preemption.Preempted, preemption.Terminated: stopped by a signal.
  """
  return run(plan_lib.build_plan(config), workdir, signals)


def run(
    plan: Plan, workdir: str, signals: preemption.StopSignals | None = None
) -> dict[str, Any]:
  """Trains (unless `plan.eval_only`) and evaluates in `workdir`.

  Nothing is written to `workdir` before every image file is checked and,
  for eval_only, a checkpoint to evaluate is found. With `signals` (several
  processes), all processes stop together before the training steps, in
  them, or before the results are written, if any one was signalled.
  """
  # Cached once passed; an evaluation reads no training image.
  image_check.check_benchmark_images(plan.benchmark, train=not plan.eval_only)
  _log_uncounted_classes(plan)
  runs = plan.runs
  checkpoints = Checkpoints(
      workdir,
      plan.keep_checkpoints,
      [runs.run_dir(workdir, k) for k in range(runs.num_runs)],
  )
  try:
    state, run_records = _starting_state(plan, workdir, checkpoints)
    if signals is not None:
      signals.terminate_if_requested()  # all processes, before any write
    # The config the workdir trained with stays recorded: an evaluation
    # (whose data fields may differ) records its own only where none is.
    if jax.process_index() == 0 and not (
        plan.eval_only and workdir_lib.recorded_config(workdir) is not None
    ):
      workdir_lib.record_config(workdir, plan.config)
    logging.info(
        '%s', metrics.describe_shot_groups(plan.groups, *plan.shot_thresholds)
    )
    writers = [
        reporting.MetricWriter(
            runs.run_dir(workdir, k),
            first_step=furthest_step(state),
            enabled=jax.process_index() == 0,
        )
        for k in range(runs.num_runs)
    ]
    try:
      context = RunContext(
          plan, workdir, checkpoints, writers, plan.evaluator(), run_records
      )
      if not plan.eval_only:
        with contextlib.ExitStack() as stack:
          steps_signals = signals or stack.enter_context(
              preemption.StopSignals()  # one process: the steps' own
          )
          state = _train(context, state, steps_signals)
      return results.finish(
          context,
          state,
          before_writing=signals and signals.terminate_if_requested,
      )
    finally:
      for writer in writers:
        writer.close()
  finally:
    checkpoints.close()  # once pending writes are confirmed


def _starting_state(
    plan: Plan, workdir: str, checkpoints: Checkpoints
) -> tuple[TrainState, list[records.RunRecord]]:
  """The state and run records the run starts from: its latest checkpoint,
  else (training only) a fresh start or a second stage's first one."""
  runs = plan.runs
  state = runs.init_state()
  run_records = [records.RunRecord() for _ in range(runs.num_runs)]
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, run_records = restored[0], records.from_checkpoint(restored[1])
    logging.info(
        '%s the checkpoint at step %d of %s.',
        'Evaluating' if plan.eval_only else 'Resuming from',
        furthest_step(state),
        workdir,
    )
    return state, run_records
  if plan.eval_only:
    raise ConfigError(
        f'config.eval_only=True but {workdir}/checkpoints holds no '
        'checkpoint to evaluate.'
    )
  if plan.finetune_from:  # a second stage: from which checkpoint
    step = finetune.first_stage_step(plan.finetune_from)
    logging.info(
        'Second stage: starting from %s, its checkpoint at step %d.',
        plan.finetune_from,
        step,
    )
    for record in run_records:
      record.first_stage_step = step
    _warn_if_unfinished(plan, step)
  return plan.start(state), run_records


def _warn_if_unfinished(plan: Plan, step: int):
  """One warning per run whose first stage is not a finished run."""
  runs = plan.runs
  for k in range(runs.num_runs):
    first = finetune.first_stage_results(
        plan.finetune_from, runs.run_dir(plan.finetune_from, k), step
    )
    if warning := finetune.unfinished_warning(first):
      logging.warning('%s%s', runs.log_prefix(k), warning)


def _log_uncounted_classes(plan: Plan):
  """One line if classes lack a training count (eval_only with a partial or
  no train list): they are in no Many/Medium/Few group."""
  counts = plan.benchmark.train_counts()
  uncounted = np.flatnonzero(counts == 0)
  if not plan.eval_only or not uncounted.size:
    return
  if uncounted.size == counts.size:
    logging.warning(
        'eval_only without config.train_list: no class has a training '
        'count, so Many/Medium/Few are n/a (top-1 is over every test '
        'image); give config.train_list for them.'
    )
    return
  logging.warning(
      'eval_only: %d of %d classes (%s%s) have no example in '
      'config.train_list and are in no shot group: Many/Medium/Few are '
      'over the %d classes it has (%s), top-1 over every test image.',
      uncounted.size,
      counts.size,
      ', '.join(map(str, uncounted[:5])),
      ', ...' if uncounted.size > 5 else '',
      counts.size - uncounted.size,
      ' / '.join(f'{len(ids)} {name}' for name, ids in plan.groups.items()),
  )


def _train(
    context: RunContext, state: TrainState, signals: preemption.StopSignals
) -> TrainState:
  """For each chunk: run, log, evaluate, checkpoint; stop on a signal.

  A chunk ends at the next event (log, eval, checkpoint) or after one call
  of the training input, whichever comes first.
  """
  plan, checkpoints = context.plan, context.checkpoints
  length, runs = plan.core.length, plan.runs
  batch_size = plan.core.step_config.global_batch_size
  step = furthest_step(state)
  progress = reporting.Progress(
      length.stop_step, length.steps_per_epoch, batch_size, runs.num_runs
  )
  progress.start(step)
  switch = plan.loss_switch
  collapsed = set()  # (run, alpha path) of each alpha warned of
  logging.info(
      'Training %d steps (%.1f steps per epoch, batch %d) of %d run(s) on %d '
      'devices%s.',
      length.total_steps,
      length.steps_per_epoch,
      batch_size,
      runs.num_runs,
      plan.core.topology.device_count,
      (
          f', stopping at step {length.stop_step} (config.num_train_steps)'
          if length.stop_step < length.total_steps
          else ''
      ),
  )
  training_input = plan.training_input()
  pending = []  # per-step metrics on the devices since the last log
  while step < length.stop_step:
    count = min(length.next_event(step) - step, training_input.steps_per_call)
    if switch is not None and step < switch.first_step <= step + count:
      logging.info(
          'step %d (epoch %.2f): %s.',
          switch.first_step,
          (switch.first_step - 1) / length.steps_per_epoch,
          switch.description,
      )
    state, chunk = training_input.run(state, step, count)
    pending.append(chunk)
    step += count
    end = step == length.stop_step
    checkpoint = step % length.checkpoint_every == 0 or end
    stop = signals.stop_requested()
    # Metrics are checked before every checkpoint: a stop is never missed.
    if step % length.log_every == 0 or checkpoint or stop:
      _log_training(context, state, step, pending, progress, collapsed)
      pending = []
      checkpoints.confirm()  # a failed background write stops the run here
    if step % length.eval_every == 0 or end:
      _evaluate(context, state, step)
    if checkpoint or stop:
      for writer in context.writers:  # a resume from here loses no row
        writer.flush(force=True)
      seconds = checkpoints.save(
          state,
          records.to_checkpoint(context.records),
          wait=stop and not checkpoint,
      )
      if stop and not checkpoint:
        logging.info('Checkpoint at step %d written in %.1f s.', step, seconds)
    if stop:
      checkpoints.confirm()
      raise preemption.Preempted(step, signals.signal_name)
  checkpoints.confirm()  # the last checkpoint is on disk before the results
  return state


def _evaluate(context: RunContext, state: TrainState, step: int):
  """Evaluates every live run on the selection split; records new bests.

  A stopped run's state no longer changes: its evaluations after it stopped
  are not recorded (its last one stands).
  """
  plan, evaluator = context.plan, context.evaluator
  runs, split = plan.runs, plan.selection_split
  epoch = step / plan.core.length.steps_per_epoch
  tests = None  # evaluated once, at the first new best on val
  for k, accuracy in enumerate(
      evaluator(state, getattr(plan.benchmark, split))
  ):
    record = context.records[k]
    if record.stop is not None:
      continue
    summary = accuracy.summary()
    logging.info(
        'step %d (epoch %.1f)%s %s: %s',
        step,
        epoch,
        f' {runs.name(k)}' if runs.name(k) else '',
        split,
        results.format_summary(summary),
    )
    context.writers[k].write(
        step, {f'eval/{split}/{g}': v for g, v in summary.items()}
    )
    if record.add_evaluation(step, epoch, split, summary):
      if tests is None:
        tests = evaluator(state, plan.benchmark.test)
      record.add_best_test(tests[k])
      context.checkpoints.save_best(k, runs.select(state, k), record.to_json())


def _log_training(
    context: RunContext,
    state: TrainState,
    step: int,
    pending: list[dict[str, jax.Array]],
    progress: reporting.Progress,
    collapsed: set[tuple[int, str]],
):
  """Fetches pending metrics, marks stopped runs, logs and writes scalars.

  A run found stopped (`runs.Runs.stopped`) is marked in its record; once
  every run has stopped the loop ends, and until then each newly stopped
  run is reported in one warning. Then the progress line (the mean loss
  and accuracy of the live runs), a warning for each NBN alpha newly below
  `COLLAPSED_ALPHA` (`collapsed`: the (run, alpha path) already warned
  of, added to), and each run's scalars.

  Raises:
    NonFiniteLossError: every run has stopped.
  """
  runs, core = context.plan.runs, context.plan.core
  fetched = jax.device_get(pending)
  loss = runs.per_run(np.concatenate([m['loss'] for m in fetched]))
  correct = runs.per_run(np.concatenate([m['correct'] for m in fetched]))
  first = step - len(loss)  # the state's step before the pending metrics
  newly_stopped = []
  for k, last in runs.stopped(state, step).items():
    if context.records[k].stop is None:
      reason = _divergence(loss[last - first, k] if last >= first else None)
      context.records[k].stop = records.Stop(last + 1, reason)
      newly_stopped.append(k)
  if all(record.stop is not None for record in context.records):
    raise NonFiniteLossError(_all_stopped(context))
  for k in newly_stopped:
    stop = context.records[k].stop
    logging.warning(
        '%s (seed %d) stopped at step %d: %s; the other runs go on.',
        runs.name(k),
        runs.seeds[k],
        stop.step,
        stop.reason,
    )
  live = runs.steps_of(state) == step
  rate = float(core.learning_rate(step - 1))
  accuracy = correct.sum(0) / (
      len(correct) * core.step_config.global_batch_size
  )
  mean_loss = loss.mean(0)
  line, images_per_second = progress.line(
      step,
      mean_loss[live].mean(),
      accuracy[live].mean(),
      rate,
      int(np.sum(live)),
  )
  logging.info('%s', line)
  alphas = jax.device_get({
      path: reporting.at_path(state.params, path)
      for path in core.nbn.alpha_paths
  })
  for k in range(runs.num_runs):
    _warn_collapsed_alphas(runs, k, runs.select(alphas, k), step, collapsed)
  for k, writer in enumerate(context.writers):
    scalars = {
        'train/loss': mean_loss[k],
        'train/accuracy': accuracy[k],
        'train/learning_rate': rate,
        'train/epoch': step / core.length.steps_per_epoch,
    }
    if np.isfinite(images_per_second):
      scalars['train/images_per_second'] = images_per_second
    scalars |= reporting.alpha_scalars(runs.select(alphas, k))
    writer.write(step, scalars)
    writer.flush()


def _warn_collapsed_alphas(
    runs: runs_lib.Runs,
    k: int,
    alphas: dict[str, float],
    step: int,
    collapsed: set[tuple[int, str]],
):
  """A warning for each of run k's NBN alphas newly below `COLLAPSED_ALPHA`
  in magnitude, once per (run, alpha); `collapsed` keeps those warned of."""
  for path, alpha in alphas.items():
    if abs(float(alpha)) >= COLLAPSED_ALPHA or (k, path) in collapsed:
      continue
    collapsed.add((k, path))
    logging.warning(
        '%sNBN alpha %s is %.3g at step %d, below %g (it starts at 1): the '
        'NBN layers that read it now pass almost nothing on.',
        runs.log_prefix(k),
        path,
        float(alpha),
        step,
        COLLAPSED_ALPHA,
    )


def _divergence(loss: float | None) -> str:
  """Why a run stopped, from its loss at the step it stopped at."""
  if loss is not None and not np.isfinite(loss):
    return f'the training loss is {loss}'
  return 'the parameters became non-finite'


def _all_stopped(context: RunContext) -> str:
  """The one-line message when every run has stopped."""
  latest, runs = context.checkpoints.latest, context.plan.runs
  last_good = latest.latest_step()
  kept = (
      f'the last good checkpoint (step {last_good}) is kept in '
      f'{latest.directory}'
      if last_good is not None
      else 'no checkpoint had been written yet'
  )
  where = '; '.join(
      f'{runs.log_prefix(k)}{record.stop.reason} at step {record.stop.step}'
      for k, record in enumerate(context.records)
  )
  return (
      f'{where}; stopped, {kept}. Lower config.learning_rate or check the data.'
  )
