"""Runs' records and results: evaluation history, selection, outputs.

The record travels with every checkpoint (JSON), one entry per run: the
evaluation history and the best result so far, selected on val where the
benchmark has one (test is evaluated at each new best, and a single run also
keeps that checkpoint in checkpoints_best/) or, labelled as such, on test.
`finish` evaluates the final state and writes, per run, results.json, the
summary table, TensorBoard scalars and the PNG plots (in the workdir for one
run; in workdir/run_<k>/ for K runs, with summary.json over them).
"""

import math
import os
from typing import Any

import jax
import numpy as np

from nbn_jax.training import reporting, runs
from nbn_jax.training.inputs import Evaluator
from nbn_jax.training.metrics import LongTailAccuracy
from nbn_jax.training.plan import Plan
from nbn_jax.training.steps import furthest_step

# Version of results.json's layout; bumped when a field changes meaning.
RESULTS_SCHEMA = 3
GROUPS = ('top1', 'many', 'medium', 'few')
# The results `summarize` gathers over runs, where every run has them.
SUMMARIZED = ('last', 'best_on_val', 'best_test_during_training')


def run_dir(workdir: str, num_runs: int, k: int) -> str:
  """Where run k's outputs go: the workdir itself for a single run."""
  return workdir if num_runs == 1 else os.path.join(workdir, f'run_{k}')


def empty_record(num_runs: int) -> dict[str, Any]:
  return {
      'runs': [
          {'history': [], 'best': None, 'best_test_during_training': None}
          for _ in range(num_runs)
      ]
  }


def resumed_record(record: dict[str, Any]) -> dict[str, Any]:
  """A checkpoint's record in today's layout.

  Checkpoints written before K runs existed hold one run's record itself;
  it becomes that single run's entry.
  """
  return record if 'runs' in record else {'runs': [record]}


def record_evaluation(
    record: dict[str, Any],
    step: int,
    epoch: float,
    split: str,
    summary: dict[str, float],
) -> bool:
  """Adds an evaluation to one run's `record`; True if a new best on val."""
  record['history'].append({'step': step, 'epoch': epoch, split: summary})
  key = 'best' if split == 'val' else 'best_test_during_training'
  best = record[key]
  if best is not None and summary['top1'] <= best[split]['top1']:
    return False
  record[key] = {'step': step, 'epoch': epoch, split: summary}
  return split == 'val'


def record_best_test(record: dict[str, Any], test: LongTailAccuracy):
  """Test accuracy at a run's new best-on-val step, into its record."""
  record['best']['test'] = test.summary()
  record['best']['test_per_class'] = test.per_class().tolist()


def format_summary(summary: dict[str, float]) -> str:
  return ', '.join(f'{k} {100 * v:.2f}' for k, v in summary.items())


def finish(
    plan: Plan,
    state,
    record: dict[str, Any],
    evaluator: Evaluator,
    writers: list[reporting.MetricWriter],
    workdir: str,
) -> dict[str, Any]:
  """Final evaluations and every run's outputs; returns what was written.

  Returns:
    One run: its results.json. K runs: {'runs': [each run's results],
    'summary': `summarize` of them} (summary.json).
  """
  benchmark, k_runs = plan.benchmark, plan.num_runs
  step = furthest_step(state)
  tests = evaluator(state, benchmark.test)
  vals = evaluator(state, benchmark.val) if benchmark.val is not None else None
  params = jax.device_get(state.params)
  per_run = []
  for k in range(k_runs):
    run_params = params if k_runs == 1 else runs.select_run(params, k)
    run_results, rows = _run_results(
        plan, record['runs'][k], tests[k], vals and vals[k], step
    )
    run_results['seed'] = plan.seeds[k]
    scales = reporting.site_scales(run_params, plan.core.nbn_sites)
    run_results['scale_spread'] = {
        name: reporting.spread(scale) for name, scale in scales.items()
    }
    if jax.process_index() == 0:
      _write_outputs(
          plan,
          run_dir(workdir, k_runs, k),
          writers[k],
          run_results,
          rows,
          tests[k],
          scales,
          step,
      )
    per_run.append(run_results)
  if k_runs == 1:
    return per_run[0]
  summary = summarize(per_run)
  if jax.process_index() == 0:
    suffix = '_eval' if plan.eval_only else ''
    reporting.write_json(
        os.path.join(workdir, f'summary{suffix}.json'), summary
    )
    print(
        f'\n{plan.label}, {k_runs} runs (seeds {plan.seeds[0]}..'
        f'{plan.seeds[-1]})\n{summary_table(summary)}'
    )
  return {'runs': per_run, 'summary': summary}


def _run_results(plan, record, test, val, step):
  """One run's results.json and its rows of the summary table."""
  many, few = plan.shot_thresholds
  rows = {f'last (step {step}) test': test.summary()}
  results = {
      'schema': RESULTS_SCHEMA,
      'config': plan.config,
      'dataset': plan.benchmark.train.name,
      'train_counts': plan.benchmark.train_counts().tolist(),
      'shot_groups': {k: v.tolist() for k, v in plan.groups.items()},
      'shot_thresholds': {'many': many, 'few': few},
      'nbn_sites': list(plan.core.nbn_sites),
      'last': {
          'step': step,
          'test': test.summary(),
          'test_per_class': test.per_class().tolist(),
      },
  }
  if val is not None:
    results['last']['val'] = val.summary()
    rows[f'last (step {step}) val'] = val.summary()
    best = record['best']
    if best is not None:
      results['best_on_val'] = best
      rows[f'best on val (step {best["step"]}) test'] = best['test']
  elif record['best_test_during_training'] is not None:
    best = record['best_test_during_training']
    results['best_test_during_training'] = best
    rows[
        f'best during training (step {best["step"]}) test, selected on test'
    ] = best['test']
  results['history'] = record['history']
  return results, rows


def summarize(per_run: list[dict[str, Any]]) -> dict[str, Any]:
  """Mean, standard deviation (ddof 1) and each run's value, per result.

  Results: 'last' test and, where the runs have them, 'best_on_val' test
  and 'best_test_during_training' test; each over top-1 and the groups.
  """
  summary = {'seeds': [r['seed'] for r in per_run]}
  for name in SUMMARIZED:
    if not all(name in r for r in per_run):
      continue
    summary[name] = {}
    for group in GROUPS:
      values = np.array([r[name]['test'][group] for r in per_run], float)
      summary[name][group] = {
          'mean': float(np.mean(values)),
          'std': float(np.std(values, ddof=1)),
          'runs': values.tolist(),
      }
  return summary


def _mean_std(entry: dict[str, Any]) -> str:
  if not math.isfinite(entry['mean']):
    return reporting.percent(entry['mean'])  # 'n/a': an empty group
  return (
      f'{reporting.percent(entry["mean"])} +- {reporting.percent(entry["std"])}'
  )


def summary_table(summary: dict[str, Any]) -> str:
  """mean +- std (in %) per result and group."""
  names = [n for n in SUMMARIZED if n in summary]
  width = max(len(n) for n in names) + 7
  lines = [' ' * width + ''.join(f'{g:>17}' for g in GROUPS)]
  for name in names:
    cells = ''.join(f'{_mean_std(summary[name][g]):>17}' for g in GROUPS)
    lines.append(f'{name + " test":{width}}' + cells)
  return '\n'.join(lines) + '\n(accuracy in %, mean +- std over runs)'


def _write_outputs(plan, out_dir, writer, results, rows, test, scales, step):
  suffix = '_eval' if plan.eval_only else ''
  os.makedirs(out_dir, exist_ok=True)
  reporting.write_json(os.path.join(out_dir, f'results{suffix}.json'), results)
  reporting.plot_per_class_accuracy(
      os.path.join(out_dir, f'per_class_accuracy{suffix}.png'),
      test.per_class(),
      plan.benchmark.train_counts(),
      f'{plan.label}, seed {results["seed"]}, step {step}',
  )
  if scales:
    reporting.plot_scale_spread(
        os.path.join(out_dir, f'scale_spread{suffix}.png'),
        scales,
        f'{plan.label}\neffective BN scales at the NBN sites',
    )
  writer.write(
      step,
      {f'final/test/{k}': v for k, v in results['last']['test'].items()}
      | {f'scale_spread/{k}': v for k, v in results['scale_spread'].items()},
  )
  table = reporting.summary_table(rows)
  print(
      f'\n{plan.label}, seed {results["seed"]}\n{table}\nresults: '
      f'{out_dir}/results{suffix}.json'
  )
