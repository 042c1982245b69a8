r"""Arms x imbalance factors x seeds on CIFAR-10-LT, and the paired report.

    python -m bench.experiments.sweep run --root=/tmp/sweep \
        --data-dir=../shared/data/cifar10-jpeg --seeds=5 \
        --imbalance-factors=100,50,10 --arms=bn,nbn,bn_la,nbn_la
    python -m bench.experiments.sweep report --root=/tmp/sweep --out=/tmp/sweep/report

`run` trains each (imbalance factor, arm) cell as one program of K runs
(`python train.py --config=configs/cifar10_lt.py --config.num_runs=K`, seeds
0 .. K-1) in its own workdir `ROOT/if<IF>/<arm>`; cells run in the order
given (imbalance factors outer), a finished cell is skipped and a stopped
one resumes from its checkpoint. BN and NBN differ in their parameters, so
each arm is its own program. `--deadline` (Unix time) stops starting cells
and stops a running one (SIGTERM: it checkpoints) in time.

Other flags are passed to train.py, e.g. `--config.deterministic=True`.

`report` reads each cell's summary.json into `sweep.md` and `sweep.json`:
per cell, top-1 and Many/Medium/Few, last epoch and best-during-training
(selected on test, as LDAM's best_acc1: optimistic, labelled), mean +- std
over seeds; and for NBN against BN (and NBN + LA against BN + LA) the paired
difference per seed (same seed: same data order and augmentation) with its
mean and 95% confidence interval (Student t, n - 1 degrees of freedom).
"""

import argparse
import json
import os
import signal
import subprocess
import time

import numpy as np

from bench.experiments.cifar10_lt_accuracy import train_command
from nbn_jax.analysis.comparison import paired_differences
from nbn_jax.training import results

ARMS = {
    'bn': ['--config.norm=bn'],
    'nbn': ['--config.norm=nbn'],
    'bn_la': ['--config.norm=bn', '--config.loss=logit_adjusted'],
    'nbn_la': ['--config.norm=nbn', '--config.loss=logit_adjusted'],
}
LABELS = {
    'bn': 'BN',
    'nbn': 'NBN',
    'bn_la': 'BN + logit-adjusted CE',
    'nbn_la': 'NBN + logit-adjusted CE',
}
PAIRS = (('nbn', 'bn'), ('nbn_la', 'bn_la'))  # (treatment, baseline)
RESULTS = {
    'last': 'last epoch',
    'best_test_during_training': 'best epoch (selected on test)',
}


def cell_dir(root: str, imbalance: float, arm: str) -> str:
  return os.path.join(root, f'if{imbalance:g}', arm)


def run(args):
  for imbalance in args.imbalance_factors:
    for arm in args.arms:
      workdir = cell_dir(args.root, imbalance, arm)
      if os.path.exists(os.path.join(workdir, 'summary.json')):
        print(f'done already: {workdir}', flush=True)
        continue
      if args.deadline and time.time() > args.deadline - 60:
        print(f'no time left for {workdir}', flush=True)
        return
      command = train_command(
          workdir,
          args.data_dir,
          args.cache_dir or os.path.join(args.root, 'cache'),
          imbalance,
          args.epochs,
          [f'--config.num_runs={args.seeds}', *ARMS[arm], *args.extra],
      )
      print(' '.join(command), flush=True)
      _run_until(command, args.deadline)


def _run_until(command: list[str], deadline: float):
  """Runs `command`; past `deadline`, SIGTERM (it checkpoints and exits)."""
  process = subprocess.Popen(command)
  while process.poll() is None:
    if deadline and time.time() > deadline:
      process.send_signal(signal.SIGTERM)
      process.wait()
      return
    time.sleep(2)
  if process.returncode not in (0, 75):  # 75: stopped on a signal
    raise SystemExit(f'{command[1]} exited with {process.returncode}')


# --- report ------------------------------------------------------------------


def load_cells(root: str) -> dict[float, dict[str, dict]]:
  """{imbalance factor: {arm: summary.json}} of the finished cells."""
  cells = {}
  for name in sorted(os.listdir(root)):
    if not name.startswith('if'):
      continue
    for arm in ARMS:
      path = os.path.join(root, name, arm, 'summary.json')
      if os.path.exists(path):
        with open(path) as f:
          cells.setdefault(float(name[2:]), {})[arm] = json.load(f)
  return cells


def _pct(value) -> str:
  return 'n/a' if value is None or not np.isfinite(value) else f'{value:.2f}'


def _mean_std(entry: dict) -> str:
  """'mean ± std' in % of a summary entry; n/a for an empty group (null)."""
  if entry['mean'] is None:
    return 'n/a'
  return f'{_pct(100 * entry["mean"])} ± {_pct(100 * (entry["std"] or 0))}'


def report(args):
  cells = load_cells(args.root)
  if not cells:
    raise SystemExit(f'no finished cell (summary.json) under {args.root}')
  lines = ['# CIFAR-10-LT sweep: arms x imbalance factors x seeds', '']
  data = {}
  for imbalance, arms in sorted(cells.items(), reverse=True):
    data[f'if{imbalance:g}'] = {'cells': arms, 'paired': {}}
    lines += [f'## Imbalance factor {imbalance:g}', '']
    for result, title in RESULTS.items():
      lines += [
          f'Test accuracy (%), {title}, mean ± std over seeds:',
          '',
          '| arm | seeds | '
          + ' | '.join(g.capitalize() for g in results.GROUPS)
          + ' |',
          '| --- | --- |' + ' --- |' * len(results.GROUPS),
      ]
      for arm, summary in arms.items():
        cells_text = [_mean_std(summary[result][g]) for g in results.GROUPS]
        lines.append(
            f'| {LABELS[arm]} | {len(results.counted_seeds(summary))} | '
            + ' | '.join(cells_text)
            + ' |'
        )
      lines.append('')
      for treatment, baseline in PAIRS:
        if treatment not in arms or baseline not in arms:
          continue
        paired = paired_differences(arms[treatment], arms[baseline], result)
        data[f'if{imbalance:g}']['paired'][
            f'{treatment}-{baseline}/{result}'
        ] = paired
        lines += [
            (
                f'{LABELS[treatment]} - {LABELS[baseline]}, {title}, paired by '
                f'seed (points; seeds {paired["seeds"]}):'
            ),
            '',
            '| group | per seed | mean | 95% CI |',
            '| --- | --- | --- | --- |',
        ]
        for group in results.GROUPS:
          if group in paired:
            d = paired[group]
            lines.append(
                f'| {group} | '
                + ', '.join(f'{v:+.2f}' for v in d['per_seed'])
                + f' | {d["mean"]:+.2f} | [{_pct(d["ci95"][0])}, '
                f'{_pct(d["ci95"][1])}] |'
            )
        lines.append('')
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'sweep.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(args.out, 'sweep.json'), 'w') as f:
    json.dump(data, f, indent=2)
  print('\n'.join(lines))


RUN_DESCRIPTION = """Trains each (imbalance factor, arm) cell as one program of K runs
(--seeds K: seeds 0 .. K-1) in its own workdir ROOT/if<IF>/<arm>; a
finished cell is skipped, a stopped one resumes. Other flags go to train.py
(e.g. --config.deterministic=True).
"""
REPORT_DESCRIPTION = """Reads each cell's summary.json under --root into OUT/sweep.md and
OUT/sweep.json: mean +- std over seeds per cell, and the paired
differences by seed of NBN against BN (and NBN + LA against BN + LA) with
their 95% intervals.
"""


def main():
  parser = argparse.ArgumentParser(
      prog='python -m bench.experiments.sweep',
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  commands = parser.add_subparsers(dest='command', required=True)
  run_parser = commands.add_parser(
      'run',
      help='train every cell',
      description=RUN_DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  run_parser.add_argument('--root', required=True, help='folder of the cells')
  run_parser.add_argument(
      '--data-dir', required=True, help='the CIFAR-10 JPEG folder'
  )
  run_parser.add_argument(
      '--cache-dir', default='', help='decoded images (default ROOT/cache)'
  )
  run_parser.add_argument(
      '--seeds',
      type=int,
      default=5,
      metavar='K',
      help=(
          'how many seeds per cell, a count K: seeds 0 .. K-1, run side by'
          ' side in one program (default 5)'
      ),
  )
  run_parser.add_argument(
      '--imbalance-factors',
      type=lambda s: [float(v) for v in s.split(',')],
      default=[100.0, 50.0, 10.0],
      help='a comma-separated list (default 100,50,10)',
  )
  run_parser.add_argument(
      '--arms',
      type=lambda s: s.split(','),
      default=list(ARMS),
      help=f'a comma-separated list of arms of {list(ARMS)} (default all)',
  )
  run_parser.add_argument(
      '--epochs', type=float, default=200.0, help='epochs (default 200)'
  )
  run_parser.add_argument(
      '--deadline',
      type=float,
      default=0.0,
      help='Unix time to stop by (checkpointing); 0: none',
  )
  report_parser = commands.add_parser(
      'report',
      help='tables of the finished cells',
      description=REPORT_DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  report_parser.add_argument(
      '--root', required=True, help='folder of the cells'
  )
  report_parser.add_argument(
      '--out', required=True, help='where sweep.md and sweep.json go'
  )
  # Flags this script does not know go to train.py (e.g. --config.x=y).
  args, args.extra = parser.parse_known_args()
  bad = [arm for arm in getattr(args, 'arms', []) if arm not in ARMS]
  if bad:
    parser.error(f'unknown arms {bad}; choose from {list(ARMS)}')
  run(args) if args.command == 'run' else report(args)


if __name__ == '__main__':
  main()
