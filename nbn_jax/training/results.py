"""Runs' results: the final evaluations and the outputs.

Each run's record (`nbn_jax.training.records`) travels with every
checkpoint: the evaluation history, the best result so far, selected on
val where the benchmark has one (test is evaluated at each new best, and
that run's checkpoint is kept in its checkpoints_best/) or, labelled as
such, on test, and, for a run that stopped on a non-finite loss or
parameters, where and why. `finish` evaluates the final state and writes,
per run, results.json,
the summary table, TensorBoard scalars and the PNG plots (in the run's
folder, `runs.Runs.run_dir`), and for several runs summary.json over the
runs that did not stop on a non-finite value.

Each result says its status (`records.FINISHED`, `STOPPED`,
`STOPPED_EARLY`, `CONVERTED`): a run that trained fewer steps than planned
is never reported as finished. Accuracies in the JSON files are fractions
of the examples (`ACCURACY_UNIT`); the printed tables show them in percent.
"""

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np

from nbn_jax.training import finetune, plots, reporting, storage
from nbn_jax.training.context import RunContext
from nbn_jax.training.records import CONVERTED, STOPPED, STOPPED_EARLY
from nbn_jax.training.records import RunRecord

# Version of results.json's layout; bumped when a field changes meaning.
# 4: 'status' and, for a stopped run, 'stopped'. 5: 'status' 'finished'
# only for a run that trained every planned step ('stopped_early', with
# the step and the planned steps, or 'converted' otherwise), and
# 'accuracy_unit'.
RESULTS_SCHEMA = 5
# What every accuracy in results.json and summary.json is: correct / total
# (0.5 is half the examples); the printed tables show percent.
ACCURACY_UNIT = 'fraction'
# The accuracies every benchmark's results have (top-5 only some:
# `reporting.ACCURACY_COLUMNS`), which comparisons of arms read.
GROUPS = ('top1', 'many', 'medium', 'few')
# The results `summarize` gathers over runs, where every run has them.
SUMMARIZED = ('last', 'best_on_val', 'best_test_during_training')


def format_summary(summary: dict[str, float]) -> str:
  """'top1 16.42, many 20.52, medium 0.00, few n/a' (an empty group: n/a)."""
  return ', '.join(f'{k} {reporting.percent(v)}' for k, v in summary.items())


def finish(
    context: RunContext,
    state,
    before_writing: Callable[[], None] | None = None,
) -> dict[str, Any]:
  """Final evaluations and every run's outputs; returns what was written.

  A stopped run's state is the one at its last finite step, so its 'last'
  result is that step's. `before_writing` is called between the
  evaluations and the first output (a stop, on several processes).

  Returns:
    One run: its results.json. K runs: {'runs': [each run's results],
    'summary': `summarize` of them} (summary.json).
  """
  plan, evaluator, writers = context.plan, context.evaluator, context.writers
  benchmark, runs, workdir = plan.benchmark, plan.runs, context.workdir
  run_steps = runs.steps_of(state)
  tests = evaluator(state, benchmark.test)
  vals = evaluator(state, benchmark.val) if benchmark.val is not None else None
  if before_writing is not None:
    before_writing()
  params = jax.device_get(state.params)
  per_run = []
  for k in range(runs.num_runs):
    step = int(run_steps[k])
    run_results, rows = _run_results(
        plan, context.records[k], tests[k], vals and vals[k], step
    )
    run_results['seed'] = runs.seeds[k]
    if plan.finetune_from:  # a second stage: the first one's result too
      first = finetune.first_stage_results(
          plan.finetune_from,
          runs.run_dir(plan.finetune_from, k),
          context.records[k].first_stage_step,
      )
      run_results['first_stage'] = first
      if 'last' in first:
        rows = {
            f'first stage (step {first["last"]["step"]}) test': first['last'][
                'test'
            ],
            **rows,
        }
    scales = reporting.site_scales(runs.select(params, k), plan.core.nbn.alphas)
    run_results['scale_spread'] = {
        name: reporting.spread(scale) for name, scale in scales.items()
    }
    if jax.process_index() == 0:
      _write_outputs(
          plan,
          runs.run_dir(workdir, k),
          writers[k],
          run_results,
          rows,
          tests[k],
          scales,
          step,
      )
    per_run.append(run_results)
  if not runs.summarizes:
    return per_run[0]
  summary = summarize(per_run)
  if jax.process_index() == 0:
    suffix = '_eval' if plan.eval_only else ''
    reporting.write_json(
        storage.join(workdir, f'summary{suffix}.json'), summary
    )
    print(
        f'\n{plan.label}, {runs.num_runs} runs (seeds {runs.seeds[0]}..'
        f'{runs.seeds[-1]})\n{summary_table(summary)}'
    )
  return {'runs': per_run, 'summary': summary}


def _run_results(plan, record: RunRecord, test, val, step):
  """One run's results.json and its rows of the summary table."""
  many, few = plan.shot_thresholds
  planned_steps = plan.core.length.total_steps
  rows = {f'last (step {step}) test': test.summary()}
  results = {
      'schema': RESULTS_SCHEMA,
      'status': record.status(step, planned_steps),
      'accuracy_unit': ACCURACY_UNIT,
      'config': plan.config,
      'dataset': plan.benchmark.train.name,
      'train_counts': plan.benchmark.train_counts().tolist(),
      'shot_groups': {k: v.tolist() for k, v in plan.groups.items()},
      'shot_thresholds': {'many': many, 'few': few},
      'nbn_sites': list(plan.core.nbn.paths),
      'nbn_site_alphas': plan.core.nbn.alphas,
      'last': {
          'step': step,
          'test': test.summary(),
          'test_per_class': test.per_class().tolist(),
      },
  }
  if record.stop is not None:
    results['stopped'] = dataclasses.asdict(record.stop)
  if results['status'] == STOPPED_EARLY:
    results['stopped_early'] = {'step': step, 'planned_steps': planned_steps}
  if val is not None:
    results['last']['val'] = val.summary()
    rows[f'last (step {step}) val'] = val.summary()
    best = record.best
    if best is not None:
      results['best_on_val'] = best
      rows[f'best on val (step {best["step"]}) test'] = best['test']
  elif record.best_test_during_training is not None:
    best = record.best_test_during_training
    results['best_test_during_training'] = best
    rows[
        f'best during training (step {best["step"]}) test, selected on test'
    ] = best['test']
  results['history'] = record.history
  return results, rows


def summarize(per_run: list[dict[str, Any]]) -> dict[str, Any]:
  """Mean, standard deviation (ddof 1) and each run's value, per result.

  Over the runs that did not stop on a non-finite value ('counted_seeds'):
  a stopped run (`RunRecord.stop`) is listed under 'stopped' with its step
  and reason, and left out of the statistics. Runs that stopped early
  (`records.STOPPED_EARLY`) are counted and listed under 'stopped_early'
  with their step and the planned steps. Results: 'last' test and, where
  the runs have them, 'best_on_val' test and 'best_test_during_training'
  test; each over top-1, top-5 where every run has it, and the groups.
  """
  counted = [r for r in per_run if r.get('status') != STOPPED]
  summary = {
      'schema': RESULTS_SCHEMA,
      'accuracy_unit': ACCURACY_UNIT,
      'seeds': [r['seed'] for r in per_run],
      'counted_seeds': [r['seed'] for r in counted],
      'stopped': [
          {'run': k, 'seed': r['seed'], **r['stopped']}
          for k, r in enumerate(per_run)
          if r.get('status') == STOPPED
      ],
      'stopped_early': [
          {'run': k, 'seed': r['seed'], **r['stopped_early']}
          for k, r in enumerate(per_run)
          if r.get('status') == STOPPED_EARLY
      ],
  }
  for name in SUMMARIZED:
    if not counted or not all(name in r for r in counted):
      continue
    summary[name] = {}
    tests = [r[name]['test'] for r in counted]
    for group in reporting.ACCURACY_COLUMNS:
      if not all(group in test for test in tests):
        continue  # top-5, on benchmarks that do not report it
      values = np.array([test[group] for test in tests], float)
      summary[name][group] = {
          'mean': float(np.mean(values)),
          'std': float(np.std(values, ddof=1)) if len(values) > 1 else None,
          'runs': values.tolist(),
      }
  return summary


def counted_seeds(summary: dict[str, Any]) -> list[int]:
  """The seeds a summary's statistics are over (summary.json of any
  version: 'finished_seeds' before schema 5, every seed before that)."""
  return summary.get(
      'counted_seeds', summary.get('finished_seeds', summary['seeds'])
  )


def _mean_std(entry: dict[str, Any]) -> str:
  if not math.isfinite(entry['mean']):
    return reporting.percent(entry['mean'])  # 'n/a': an empty group
  if entry['std'] is None:  # one run
    return reporting.percent(entry['mean'])
  return (
      f'{reporting.percent(entry["mean"])} +- {reporting.percent(entry["std"])}'
  )


def runs_counted(summary: dict[str, Any]) -> str:
  """Which runs the statistics are over, e.g. 'over 4 of 5 runs; run 2
  (seed 2) stopped at step 47: the training loss is nan', and where runs
  stopped early ('stopped early at step 22 of the 19385 planned')."""
  counted = len(counted_seeds(summary))
  parts = [
      f'over {counted} of {len(summary["seeds"])} runs'
      if summary['stopped']
      else 'over runs'
  ]
  parts += [
      f'run {s["run"]} (seed {s["seed"]}) stopped at step {s["step"]}: '
      f'{s["reason"]}'
      for s in summary['stopped']
  ]
  early = {(s['step'], s['planned_steps']) for s in summary['stopped_early']}
  parts += [
      f'stopped early at step {step} of the {planned} planned'
      for step, planned in sorted(early)
  ]
  return '; '.join(parts)


def summary_table(summary: dict[str, Any]) -> str:
  """mean +- std (in %) per result and group, and which runs it is over."""
  names = [n for n in SUMMARIZED if n in summary]
  lines = []
  if names:
    width = max(len(n) for n in names) + 7
    columns = reporting.columns_of([summary[name] for name in names])
    lines.append(' ' * width + ''.join(f'{g:>17}' for g in columns))
    for name in names:
      cells = ''.join(f'{_mean_std(summary[name][g]):>17}' for g in columns)
      lines.append(f'{name + " test":{width}}' + cells)
  else:
    lines.append('no run finished')
  return (
      '\n'.join(lines)
      + f'\n(accuracy in %, mean +- std {runs_counted(summary)})'
  )


def _write_outputs(plan, out_dir, writer, results, rows, test, scales, step):
  suffix = '_eval' if plan.eval_only else ''
  reporting.write_json(storage.join(out_dir, f'results{suffix}.json'), results)
  plots.plot_per_class_accuracy(
      storage.join(out_dir, f'per_class_accuracy{suffix}.png'),
      test.per_class(),
      plan.benchmark.train_counts(),
      f'{plan.label}, seed {results["seed"]}, step {step}',
      plan.benchmark.spec.class_names,
  )
  if scales:
    plots.plot_scale_spread(
        storage.join(out_dir, f'scale_spread{suffix}.png'),
        scales,
        f'{plan.label}\neffective BN scales at the NBN sites',
    )
  writer.write_final(
      step,
      {f'final/test/{k}': v for k, v in results['last']['test'].items()}
      | {f'scale_spread/{k}': v for k, v in results['scale_spread'].items()},
      suffix,
  )
  curves = plots.alpha_curves(reporting.read_metrics(out_dir))
  if curves:
    plots.plot_alphas(
        storage.join(out_dir, f'alpha{suffix}.png'),
        curves,
        f'{plan.label}, seed {results["seed"]}\nNBN alpha during training',
    )
  lines = [f'\n{plan.label}, seed {results["seed"]}']
  lines.append(reporting.summary_table(rows))
  if status := status_line(results, plan.eval_only):
    lines.append(status)
  lines.append(f'results: {out_dir}/results{suffix}.json')
  print('\n'.join(lines))


def status_line(results: dict[str, Any], evaluation: bool) -> str:
  """What a run's table needs said of its status; '' for a finished run.

  `evaluation`: the results are an evaluation's (eval_only), not the end
  of a training.
  """
  status = results['status']
  if status == STOPPED:
    stopped = results['stopped']
    return (
        f'stopped at step {stopped["step"]}: {stopped["reason"]}; "last" is '
        'its last finite state'
    )
  if status == STOPPED_EARLY:
    early = results['stopped_early']
    line = (
        f'stopped early at step {early["step"]} of the '
        f'{early["planned_steps"]} planned: not a finished run'
    )
    if evaluation:
      return f'{line} (the checkpoint evaluated)'
    return (
        f'{line} (config.num_train_steps); rerun with a larger '
        'config.num_train_steps, or -1, to continue it'
    )
  if status == CONVERTED:
    return 'a converted checkpoint (step 0): trained elsewhere, not here'
  return ''
