"""A run's record and results: evaluation history, selection, outputs.

The record travels with every checkpoint (JSON): the evaluation history and
the best result so far, selected on val where the benchmark has one (the
best checkpoint is kept separately) or, labelled as such, on test.
`finish` evaluates the final state and writes results.json, the summary
table, TensorBoard scalars and the PNG plots.
"""

import os
from typing import Any

import jax

from nbn_jax.training import reporting
from nbn_jax.training.checkpoints import Checkpoints
from nbn_jax.training.inputs import Evaluator
from nbn_jax.training.plan import Plan

# Version of results.json's layout; bumped when a field changes meaning.
RESULTS_SCHEMA = 2


def empty_record() -> dict[str, Any]:
  return {'history': [], 'best': None, 'best_test_during_training': None}


def record_evaluation(
    record: dict[str, Any],
    step: int,
    epoch: float,
    split: str,
    summary: dict[str, float],
) -> bool:
  """Adds an evaluation to `record`; True if it is a new best on val."""
  record['history'].append({'step': step, 'epoch': epoch, split: summary})
  key = 'best' if split == 'val' else 'best_test_during_training'
  best = record[key]
  if best is not None and summary['top1'] <= best[split]['top1']:
    return False
  record[key] = {'step': step, 'epoch': epoch, split: summary}
  return split == 'val'


def format_summary(summary: dict[str, float]) -> str:
  return ', '.join(f'{k} {100 * v:.2f}' for k, v in summary.items())


def finish(
    plan: Plan,
    state,
    record: dict[str, Any],
    evaluator: Evaluator,
    checkpoints: Checkpoints,
    writer: reporting.MetricWriter,
    workdir: str,
) -> dict[str, Any]:
  """Final evaluations, results.json, the summary table and the plots."""
  benchmark = plan.benchmark
  step = int(jax.device_get(state.step))
  test = evaluator(state, benchmark.test)
  rows = {f'last (step {step}) test': test.summary()}
  many, few = plan.shot_thresholds
  results = {
      'schema': RESULTS_SCHEMA,
      'config': plan.config,
      'dataset': benchmark.train.name,
      'train_counts': benchmark.train_counts().tolist(),
      'shot_groups': {k: v.tolist() for k, v in plan.groups.items()},
      'shot_thresholds': {'many': many, 'few': few},
      'nbn_sites': list(plan.core.nbn_sites),
      'last': {
          'step': step,
          'test': test.summary(),
          'test_per_class': test.per_class().tolist(),
      },
  }
  if benchmark.val is not None:
    val = evaluator(state, benchmark.val).summary()
    results['last']['val'] = val
    rows[f'last (step {step}) val'] = val
    restored = checkpoints.restore_best(state)
    if restored is not None:
      best_state, best_record = restored
      best_step = best_record['best']['step']
      best_test = evaluator(best_state, benchmark.test)
      results['best_on_val'] = {
          'step': best_step,
          'val': best_record['best']['val'],
          'test': best_test.summary(),
          'test_per_class': best_test.per_class().tolist(),
      }
      rows[f'best on val (step {best_step}) test'] = best_test.summary()
  elif record['best_test_during_training'] is not None:
    best = record['best_test_during_training']
    results['best_test_during_training'] = best
    rows[
        f'best during training (step {best["step"]}) test, selected on test'
    ] = best['test']
  results['history'] = record['history']
  scales = reporting.site_scales(
      jax.device_get(state.params), plan.core.nbn_sites
  )
  results['scale_spread'] = {
      name: reporting.spread(scale) for name, scale in scales.items()
  }
  if jax.process_index() == 0:
    _write_outputs(plan, workdir, writer, results, rows, test, scales, step)
  return results


def _write_outputs(plan, workdir, writer, results, rows, test, scales, step):
  suffix = '_eval' if plan.eval_only else ''
  reporting.write_json(os.path.join(workdir, f'results{suffix}.json'), results)
  reporting.plot_per_class_accuracy(
      os.path.join(workdir, f'per_class_accuracy{suffix}.png'),
      test.per_class(),
      plan.benchmark.train_counts(),
      f'{plan.label}, step {step}',
  )
  if scales:
    reporting.plot_scale_spread(
        os.path.join(workdir, f'scale_spread{suffix}.png'),
        scales,
        f'{plan.label}\neffective BN scales at the NBN sites',
    )
  writer.write(
      step,
      {f'final/test/{k}': v for k, v in results['last']['test'].items()}
      | {f'scale_spread/{k}': v for k, v in results['scale_spread'].items()},
  )
  table = reporting.summary_table(rows)
  print(f'\n{plan.label}\n{table}\nresults: {workdir}/results{suffix}.json')
