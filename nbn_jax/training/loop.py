"""`train_and_evaluate(config, workdir)`: the whole run.

Builds the data, model and optimiser from the config, resumes from the
workdir's latest checkpoint if there is one, trains with periodic logging,
evaluation and checkpoints, and ends with the results: evaluated on test at
the last step and, where the benchmark has a validation split, at the step
with the best validation accuracy (selected on val, never on test). Results
go to the log, `results.json`, TensorBoard and PNG plots in the workdir.
"""

import dataclasses
import math
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import input_pipeline as ip
from input_pipeline import on_device
from input_pipeline.evaluation import eval_batches
from nbn_jax.training import experiment, losses, optim, reporting, steps
from nbn_jax.training.checkpoints import Checkpoints


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass
class _Run:
  """What the loop's helpers share."""

  config: ml_collections.ConfigDict
  workdir: str
  benchmark: ip.Benchmark
  groups: dict[str, np.ndarray]
  step_config: steps.StepConfig
  schedule: Any
  steps_per_epoch: float
  total_steps: int
  preprocessing: ip.Preprocessing
  log_every: int  # steps between progress lines
  eval_every: int  # steps between evaluations
  checkpoint_every: int  # steps between checkpoints
  writer: reporting.MetricWriter
  checkpoints: Checkpoints
  record: dict[str, Any]  # best result and eval history, saved with state
  eval_step: Any


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains and evaluates per `config`; returns the results written to JSON.

  Raises:
    experiment.ConfigError, ip.DataError: bad settings or data (one-line
      messages).
    NonFiniteLossError: the loss diverged; the last good checkpoint is kept.
  """
  run, state, data_key, resumed = _set_up(config, workdir)
  try:
    if config.eval_only:
      if not resumed:
        raise experiment.ConfigError(
            f'config.eval_only=True but {workdir}/checkpoints holds no '
            'checkpoint to evaluate.'
        )
    else:
      state = _train(run, state, data_key)
    return _finish(run, state)
  finally:
    run.checkpoints.wait()
    run.checkpoints.close()
    run.writer.close()


def _set_up(config: ml_collections.ConfigDict, workdir: str):
  """Data, model, optimiser, steps and the (possibly restored) state.

  Returns:
    (run, state, data key, whether the state came from a checkpoint).
  """
  experiment.check_config(config, jax.device_count())
  benchmark = experiment.load_benchmark(config)
  train_counts = benchmark.train_counts()
  groups = ip.shot_groups(
      train_counts, config.many_threshold, config.few_threshold
  )
  logging.info(
      '%s: %d training images (%d down to %d per class), %s',
      benchmark.train.name,
      len(benchmark.train),
      train_counts.max(),
      train_counts.min(),
      ip.describe_shot_groups(
          groups, config.many_threshold, config.few_threshold
      ),
  )
  steps_per_epoch, total_steps = experiment.run_length(config, train_counts)
  preprocessing = experiment.preprocessing(config, benchmark.spec)
  mesh = steps.create_mesh(config.bn_scope, config.bn_group_size)
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  model = experiment.build_model(config, benchmark.spec.num_classes, dtype)
  schedule = optim.learning_rate_schedule(
      config.schedule,
      optim.base_learning_rate(
          config.learning_rate, config.batch_size, config.lr_batch_size
      ),
      steps_per_epoch,
      total_steps,
      config.warmup_epochs,
      tuple(config.lr_decay_epochs),
      config.lr_decay_factor,
  )
  tx = optim.sgd(
      schedule,
      config.weight_decay,
      config.momentum,
      config.nesterov,
      config.decay_alpha,
  )
  init_key, data_key = jax.random.split(jax.random.key(config.seed))
  state = steps.create_train_state(
      model, tx, init_key, _image_shape(benchmark, preprocessing), mesh
  )
  checkpoints = Checkpoints(workdir, config.keep_checkpoints)
  record = {'history': [], 'best': None, 'best_test_during_training': None}
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, record = restored
    logging.info('Resuming from the checkpoint at step %d.', int(state.step))
  step_config = steps.StepConfig(
      model=model,
      loss_fn=losses.make_loss(
          config.loss, train_counts, config.logit_adjust_tau
      ),
      mesh=mesh,
      bn_scope=config.bn_scope,
      global_batch_size=config.batch_size,
      mean=benchmark.spec.mean,
      std=benchmark.spec.std,
      dtype=dtype,
      num_classes=benchmark.spec.num_classes,
  )
  run = _Run(
      config=config,
      workdir=workdir,
      benchmark=benchmark,
      groups=groups,
      step_config=step_config,
      schedule=schedule,
      steps_per_epoch=steps_per_epoch,
      total_steps=total_steps,
      preprocessing=preprocessing,
      log_every=config.log_every_steps,
      eval_every=_every(config.eval_every_epochs, steps_per_epoch),
      checkpoint_every=_every(config.checkpoint_every_epochs, steps_per_epoch),
      writer=reporting.MetricWriter(workdir, enabled=jax.process_index() == 0),
      checkpoints=checkpoints,
      record=record,
      eval_step=steps.make_eval_step(step_config),
  )
  return run, state, data_key, restored is not None


def _image_shape(
    benchmark: ip.Benchmark, preprocessing: ip.Preprocessing
) -> tuple[int, ...]:
  if benchmark.train.in_memory:
    return benchmark.train.images.shape[1:]
  return (preprocessing.image_size, preprocessing.image_size, 3)


def _global(array: np.ndarray, mesh) -> jax.Array:
  """This host's slice of a batch -> the global batch sharded over `mesh`."""
  return jax.make_array_from_process_local_data(
      steps.batch_sharding(mesh), array
  )


# --- Training -----------------------------------------------------------------


def _every(epochs: float, steps_per_epoch: float) -> int:
  return max(1, int(round(epochs * steps_per_epoch)))


def _train(run: _Run, state, data_key) -> steps.TrainState:
  config = run.config
  step = int(jax.device_get(state.step))
  progress = reporting.Progress(
      run.total_steps, run.steps_per_epoch, config.batch_size
  )
  progress.start(step)
  pending = []  # (first step, per-step metrics on device) since the last log
  logging.info(
      'Training %d steps (%.1f epochs of %.1f steps, batch %d) on %d devices.',
      run.total_steps,
      config.num_epochs,
      run.steps_per_epoch,
      config.batch_size,
      jax.device_count(),
  )
  for first, count, metrics, state in _train_chunks(run, state, data_key, step):
    pending.append((first, metrics))
    step = first + count
    end = step == run.total_steps
    checkpoint = step % run.checkpoint_every == 0 or end
    # Metrics are checked before every checkpoint: a NaN is never saved.
    if step % run.log_every == 0 or checkpoint:
      _log_training(run, state, step, pending, progress)
      pending = []
    if step % run.eval_every == 0 or end:
      _evaluate_during_training(run, state, step)
    if checkpoint:
      run.checkpoints.save(state, run.record)
  return state


def _next_event(step: int, run: _Run) -> int:
  """The first step after `step` that logs, evaluates or checkpoints."""
  periods = (run.log_every, run.eval_every, run.checkpoint_every)
  return min([run.total_steps] + [(step // p + 1) * p for p in periods])


def _train_chunks(run: _Run, state, data_key, step) -> Iterator[tuple]:
  """Runs the steps from `step`; yields (first step, steps run, metrics, state).

  Metrics are per-step arrays left on the device until they are logged.
  """
  if run.config.input_path == 'on_device':
    return _on_device_chunks(run, state, data_key, step)
  return _tf_data_chunks(run, state, step)


def _on_device_chunks(run: _Run, state, data_key, step):
  """Several steps per dispatch, sampled and augmented on the devices."""
  config, cfg = run.config, run.step_config
  data = on_device.put_on_devices(
      run.benchmark.train, experiment.sampler_spec(config), cfg.mesh
  )
  dispatch = steps.steps_per_dispatch(config.steps_per_dispatch)
  if dispatch != config.steps_per_dispatch:
    logging.info(
        'One step per dispatch on %s (XLA:CPU is slow in loops).',
        jax.default_backend(),
    )
  single = steps.make_device_train_steps(cfg, data_key, run.preprocessing, 1)
  many = (
      single
      if dispatch == 1
      else steps.make_device_train_steps(
          cfg, data_key, run.preprocessing, dispatch
      )
  )
  while step < run.total_steps:
    # Whole dispatches up to the next log/eval/checkpoint, then single steps.
    if _next_event(step, run) - step >= dispatch:
      count, run_steps = dispatch, many
    else:
      count, run_steps = 1, single
    state, metrics = run_steps(state, data)
    yield step, count, metrics, state
    step += count


def _tf_data_chunks(run: _Run, state, step):
  """One step per host batch from the tf.data pipeline."""
  from input_pipeline import tf_pipeline  # imports TensorFlow

  config, cfg = run.config, run.step_config
  dataset = tf_pipeline.train_dataset(
      run.benchmark.train,
      run.preprocessing,
      global_batch_size=config.batch_size,
      sampler=experiment.sampler_spec(config),
      seed=config.seed,
      start_step=step,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  train_step = steps.make_train_step(cfg)
  batches = tf_pipeline.as_numpy(dataset)
  for step in range(step, run.total_steps):
    batch = next(batches)
    state, metrics = train_step(
        state,
        _global(batch['image'], cfg.mesh),
        _global(batch['label'], cfg.mesh),
    )
    yield step, 1, jax.tree.map(lambda m: m[None], metrics), state


def _log_training(run: _Run, state, step: int, pending, progress):
  """Fetches pending metrics, stops on a non-finite loss, logs and writes."""
  first = pending[0][0]
  fetched = jax.device_get([metrics for _, metrics in pending])
  loss = np.concatenate([m['loss'] for m in fetched])
  correct = np.concatenate([m['correct'] for m in fetched])
  bad = np.flatnonzero(~np.isfinite(loss))
  if bad.size:
    last_good = run.checkpoints.latest.latest_step()
    raise NonFiniteLossError(
        f'the training loss is {loss[bad[0]]} at step {first + bad[0] + 1}; '
        f'stopped. The last good checkpoint (step {last_good}) is kept in '
        f'{run.workdir}/checkpoints. Lower config.learning_rate or check '
        'the data.'
    )
  rate = float(run.schedule(step - 1))
  accuracy = correct.sum() / (len(correct) * run.config.batch_size)
  line, images_per_second = progress.line(step, loss.mean(), accuracy, rate)
  logging.info('%s', line)
  scalars = {
      'train/loss': loss.mean(),
      'train/accuracy': accuracy,
      'train/learning_rate': rate,
      'train/epoch': step / run.steps_per_epoch,
  }
  if math.isfinite(images_per_second):
    scalars['train/images_per_second'] = images_per_second
  if 'nbn_alpha' in state.params:
    scalars['nbn/alpha'] = jax.device_get(state.params['nbn_alpha'])
  run.writer.write(step, scalars)
  run.writer.flush()


# --- Evaluation ---------------------------------------------------------------


def _evaluate(run: _Run, state, split: ip.Split) -> ip.LongTailAccuracy:
  config, cfg = run.config, run.step_config
  accuracy = ip.LongTailAccuracy.empty(cfg.num_classes, run.groups)
  for batch in eval_batches(
      split,
      run.preprocessing,
      config.eval_batch_size,
      jax.process_index(),
      jax.process_count(),
  ):
    correct, total = run.eval_step(
        state,
        _global(batch['image'], cfg.mesh),
        _global(batch['label'], cfg.mesh),
        _global(batch['mask'], cfg.mesh),
    )
    accuracy.update(*jax.device_get((correct, total)))
  if accuracy.num_examples != len(split):
    raise RuntimeError(
        f'evaluated {accuracy.num_examples} of {len(split)} examples of '
        f'{split.name}'
    )
  return accuracy


def _selection_split(run: _Run) -> str:
  return 'val' if run.benchmark.val is not None else 'test'


def _evaluate_during_training(run: _Run, state, step: int):
  """Evaluates the selection split; keeps the best-on-val checkpoint."""
  name = _selection_split(run)
  split = getattr(run.benchmark, name)
  summary = _evaluate(run, state, split).summary()
  epoch = step / run.steps_per_epoch
  logging.info(
      'step %d (epoch %.1f) %s: %s', step, epoch, name, _format(summary)
  )
  run.writer.write(step, {f'eval/{name}/{k}': v for k, v in summary.items()})
  run.record['history'].append({'step': step, 'epoch': epoch, name: summary})
  if name == 'val':
    best = run.record['best']
    if best is None or summary['top1'] > best['val']['top1']:
      run.record['best'] = {'step': step, 'epoch': epoch, 'val': summary}
      run.checkpoints.save(state, run.record, best=True)
  else:
    best = run.record['best_test_during_training']
    if best is None or summary['top1'] > best['test']['top1']:
      run.record['best_test_during_training'] = {
          'step': step,
          'epoch': epoch,
          'test': summary,
      }


def _format(summary: dict[str, float]) -> str:
  return ', '.join(f'{k} {100 * v:.2f}' for k, v in summary.items())


# --- Results ------------------------------------------------------------------


def _finish(run: _Run, state) -> dict[str, Any]:
  """Final evaluations, results.json, the summary table and the plots."""
  benchmark, config = run.benchmark, run.config
  step = int(jax.device_get(state.step))
  test = _evaluate(run, state, benchmark.test)
  rows = {f'last (step {step}) test': test.summary()}
  results = {
      'config': config.to_dict(),
      'dataset': benchmark.train.name,
      'train_counts': benchmark.train_counts().tolist(),
      'shot_groups': {k: v.tolist() for k, v in run.groups.items()},
      'shot_thresholds': {
          'many': config.many_threshold,
          'few': config.few_threshold,
      },
      'last': {
          'step': step,
          'test': test.summary(),
          'test_per_class': test.per_class().tolist(),
      },
  }
  if benchmark.val is not None:
    val = _evaluate(run, state, benchmark.val).summary()
    results['last']['val'] = val
    rows[f'last (step {step}) val'] = val
    restored = run.checkpoints.restore_best(state)
    if restored is not None:
      best_state, best_record = restored
      best_test = _evaluate(run, best_state, benchmark.test)
      results['best_on_val'] = {
          'step': best_record['best']['step'],
          'val': best_record['best']['val'],
          'test': best_test.summary(),
          'test_per_class': best_test.per_class().tolist(),
      }
      rows[f'best on val (step {best_record["best"]["step"]}) test'] = (
          best_test.summary()
      )
  elif run.record['best_test_during_training'] is not None:
    best = run.record['best_test_during_training']
    results['best_test_during_training'] = best
    rows[
        f'best during training (step {best["step"]}) test, selected on test'
    ] = best['test']
  results['history'] = run.record['history']
  scales = reporting.site_scales(
      jax.device_get(state.params),
      config.nbn_stages,
      config.nbn_block_norms,
      config.nbn_shortcut,
  )
  results['scale_spread'] = {
      name: reporting.spread(scale) for name, scale in scales.items()
  }
  if jax.process_index() == 0:
    _write_outputs(run, results, rows, test, scales, step)
  return results


def _write_outputs(run: _Run, results, rows, test, scales, step):
  workdir, config = run.workdir, run.config
  label = f'{config.model} {config.norm.upper()} on {run.benchmark.train.name}'
  suffix = '_eval' if config.eval_only else ''
  reporting.write_json(os.path.join(workdir, f'results{suffix}.json'), results)
  reporting.plot_per_class_accuracy(
      os.path.join(workdir, f'per_class_accuracy{suffix}.png'),
      test.per_class(),
      run.benchmark.train_counts(),
      f'{label}, step {step}',
  )
  if scales:
    reporting.plot_scale_spread(
        os.path.join(workdir, f'scale_spread{suffix}.png'),
        scales,
        f'{label}\neffective BN scales at the NBN sites',
    )
  run.writer.write(
      step,
      {f'final/test/{k}': v for k, v in results['last']['test'].items()}
      | {f'scale_spread/{k}': v for k, v in results['scale_spread'].items()},
  )
  table = reporting.summary_table(rows)
  print(f'\n{label}\n{table}\nresults: {workdir}/results{suffix}.json')
