r"""BN against NBN on CIFAR-10-LT from the real images: train, then report.

    python -m bench.experiments.cifar10_lt_accuracy run --root=/tmp/evidence \
        --data-dir=../shared/data/cifar10-jpeg --epochs=200 --seeds=0,1
    python -m bench.experiments.cifar10_lt_accuracy report --root=/tmp/evidence \
        --out=docs/results

`run` trains every arm with every seed, each as `python train.py
--config=configs/cifar10_lt.py` in its own workdir under --root (a stopped
batch of runs continues where it stopped; finished runs are skipped). Arms:
`bn` (the baseline), `nbn`, `nbn_la` (NBN with logit-adjusted
cross-entropy, tau = 1). Everything else is the CIFAR recipe of
docs/method.md with identical seeds, so both arms see the same data order
and the same initial convolutions. --epochs compresses the 200-epoch
schedule keeping its shape: warm-up 5E/200 epochs, learning rate x0.01 at
0.8E and again at 0.9E.

`report` gathers results.json, the metrics (`metrics/`) and the final
checkpoints into a Markdown table (mean and spread over seeds) and three PNG
plots: per-class accuracy, the spread of the last-stage BN scales, and
learning curves (with the shared NBN alpha).
CIFAR-LT has no validation split: "best" is the best test accuracy seen
during training, selected on test and so optimistic; it is labelled as such.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from nbn_jax.training import plots, reporting

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)

ARMS = {
    'bn': ['--config.norm=bn'],
    'nbn': ['--config.norm=nbn'],
    'nbn_la': ['--config.norm=nbn', '--config.loss=logit_adjusted'],
}
LABELS = {'bn': 'BN', 'nbn': 'NBN', 'nbn_la': 'NBN + logit-adjusted CE'}
GROUPS = ('top1', 'many', 'medium', 'few')


def _workdir(root, imbalance, arm, seed):
  return os.path.join(root, f'if{imbalance:g}', arm, f'seed{seed}')


def schedule_flags(epochs: float) -> list[str]:
  """The 200-epoch CIFAR schedule compressed to `epochs`, same shape."""
  scale = epochs / 200
  return [
      f'--config.num_epochs={epochs:g}',
      f'--config.warmup_epochs={5 * scale:g}',
      f'--config.lr_decay_epochs=({160 * scale:g},{180 * scale:g})',
      f'--config.eval_every_epochs={epochs / 10:g}',
      f'--config.checkpoint_every_epochs={epochs / 10:g}',
  ]


def train_command(
    workdir: str,
    data_dir: str,
    cache_dir: str,
    imbalance_factor: float,
    epochs: float,
    flags: list[str],
) -> list[str]:
  """train.py on CIFAR-10-LT from the JPEG copy, the schedule compressed to
  `epochs`, plus `flags`."""
  return [
      sys.executable,
      os.path.join(ROOT, 'train.py'),
      f'--config={os.path.join(ROOT, "configs", "cifar10_lt.py")}',
      f'--workdir={workdir}',
      '--config.data_source=jpeg',
      f'--config.data_dir={data_dir}',
      f'--config.cache_dir={cache_dir}',
      f'--config.imbalance_factor={imbalance_factor:g}',
      *schedule_flags(epochs),
      *flags,
  ]


def run(args):
  for seed in args.seeds:
    for arm in args.arms:
      workdir = _workdir(args.root, args.imbalance_factor, arm, seed)
      if os.path.exists(os.path.join(workdir, 'results.json')):
        print(f'done already: {workdir}')
        continue
      command = train_command(
          workdir,
          args.data_dir,
          os.path.join(args.root, 'cache'),
          args.imbalance_factor,
          args.epochs,
          [f'--config.seed={seed}', *ARMS[arm], *args.extra],
      )
      print(' '.join(command), flush=True)
      subprocess.run(command, check=True)


# --- report ------------------------------------------------------------------


def _load_runs(root, imbalance):
  runs = {}
  for arm in ARMS:
    arm_dir = os.path.dirname(_workdir(root, imbalance, arm, 0))
    if not os.path.isdir(arm_dir):
      continue
    for name in sorted(os.listdir(arm_dir)):
      path = os.path.join(arm_dir, name, 'results.json')
      if os.path.exists(path):
        with open(path) as f:
          runs.setdefault(arm, []).append((os.path.dirname(path), json.load(f)))
  return runs


def _cell(values) -> str:
  """'mean ± std' in %, 'n/a' for an empty group (None or NaN values)."""
  values = 100 * np.asarray([np.nan if v is None else v for v in values], float)
  if not len(values) or np.isnan(values).any():
    return 'n/a'
  if len(values) == 1:
    return f'{values[0]:.2f}'
  return f'{values.mean():.2f} ± {values.std(ddof=1):.2f}'


def _table(runs, key):
  lines = [
      '| arm | seeds | ' + ' | '.join(g.capitalize() for g in GROUPS) + ' |',
      '| --- | --- |' + ' --- |' * len(GROUPS),
  ]
  for arm, arm_runs in runs.items():
    picked = [r[key]['test'] for _, r in arm_runs if key in r]
    cells = [_cell([p[group] for p in picked]) for group in GROUPS]
    lines.append(
        f'| {LABELS[arm]} | {len(picked)} | ' + ' | '.join(cells) + ' |'
    )
  return '\n'.join(lines)


def _per_seed(runs):
  lines = [
      (
          '| arm | seed | last top-1 | last, tail class | best top-1 (on test) '
          '| BN scale spread (cv) |'
      ),
      '| --- | --- | --- | --- | --- | --- |',
  ]
  for arm, arm_runs in runs.items():
    for _, r in arm_runs:
      spread = np.mean(list(r['scale_spread'].values()))
      best = r['best_test_during_training']
      lines.append(
          f'| {LABELS[arm]} | {r["config"]["seed"]} | '
          f'{_cell([r["last"]["test"]["top1"]])} | '
          f'{_cell([r["last"]["test_per_class"][-1]])} | '
          f'{_cell([best["test"]["top1"]])} (epoch {best["epoch"]:.1f}) | '
          f'{spread:.3f} |'
      )
  return '\n'.join(lines)


def _plot_per_class(runs, path):
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  arms = list(runs)
  width = 0.8 / len(arms)
  for i, arm in enumerate(arms):
    per_class = np.mean(
        [r['last']['test_per_class'] for _, r in runs[arm]], axis=0
    )
    ax.bar(
        np.arange(len(per_class)) + (i - (len(arms) - 1) / 2) * width,
        100 * per_class,
        width,
        label=LABELS[arm],
    )
  counts = runs[arms[0]][0][1]['train_counts']
  ax.set_xticks(
      np.arange(len(counts)), [f'{c}\n({n})' for c, n in enumerate(counts)]
  )
  ax.set_xlabel('class (training images)')
  ax.set_ylabel('test accuracy (%), mean over seeds')
  ax.set_ylim(0, 100)
  ax.legend()
  ax.set_title(
      'CIFAR-10-LT (IF 100), ResNet-32: per-class accuracy, last epoch'
  )
  fig.tight_layout()
  plots.save(fig, path)


def _final_scales(workdir, result):
  from nbn_jax.training import reporting
  from nbn_jax.training.checkpoints import latest_params

  return reporting.site_scales(
      latest_params(workdir), result['nbn_site_alphas']
  )


def _plot_scale_spread(runs, path):
  plt = plots.pyplot()
  arms = [a for a in ('bn', 'nbn') if a in runs]
  fig, axes = plt.subplots(
      1, len(arms), figsize=(5 * len(arms), 4), sharey=True
  )
  for ax, arm in zip(np.atleast_1d(axes), arms):
    workdir, result = runs[arm][0]
    for name, scale in _final_scales(workdir, result).items():
      magnitude = np.sort(np.abs(scale))[::-1]
      ax.plot(
          np.arange(len(magnitude)),
          magnitude / magnitude.mean(),
          label=f'{name} (cv {magnitude.std() / magnitude.mean():.2f})',
      )
    ax.set_title(f'{LABELS[arm]}, seed {result["config"]["seed"]}')
    ax.set_xlabel('channel, sorted by |effective scale|')
    ax.legend(fontsize=7)
  np.atleast_1d(axes)[0].set_ylabel('|effective scale| / layer mean')
  fig.suptitle('Last-stage BN scales (layer3 bn2) after CIFAR-10-LT training')
  fig.tight_layout()
  plots.save(fig, path)


def _plot_curves(runs, path):
  """Training loss, test top-1 and the shared NBN alpha against epochs."""
  plt = plots.pyplot()
  fig, (loss_ax, acc_ax, alpha_ax) = plt.subplots(1, 3, figsize=(15, 4))
  colours = dict(zip(ARMS, ('tab:blue', 'tab:red', 'tab:green')))
  for arm, arm_runs in runs.items():
    for workdir, r in arm_runs:
      records = reporting.read_metrics(workdir)
      style = dict(color=colours[arm], alpha=0.7)
      label = f'{LABELS[arm]} seed {r["config"]["seed"]}'
      train = [
          (x['train/epoch'], x['train/loss'], x.get('nbn/alpha'))
          for x in records
          if 'train/loss' in x
      ]
      epochs, loss, alpha = zip(*train)
      loss_ax.plot(epochs, loss, label=label, **style)
      if alpha[0] is not None:
        alpha_ax.plot(epochs, alpha, label=label, **style)
      history = [(h['epoch'], 100 * h['test']['top1']) for h in r['history']]
      acc_ax.plot(*zip(*history), marker='.', label=label, **style)
  loss_ax.set_ylabel('training loss')
  loss_ax.set_yscale('log')
  acc_ax.set_ylabel('test top-1 (%)')
  acc_ax.legend(fontsize=7)
  alpha_ax.set_ylabel('shared NBN alpha (last stage)')
  alpha_ax.axhline(0, color='grey', linewidth=0.5)
  for ax in (loss_ax, acc_ax, alpha_ax):
    ax.set_xlabel('epoch')
  fig.tight_layout()
  plots.save(fig, path)


def report(args):
  runs = _load_runs(args.root, args.imbalance_factor)
  if not runs:
    sys.exit(f'error: no finished runs under {args.root}')
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, f'cifar10_lt_if{args.imbalance_factor:g}')
  epochs = next(iter(runs.values()))[0][1]['config']['num_epochs']
  text = '\n\n'.join([
      (
          f'CIFAR-10-LT, imbalance factor {args.imbalance_factor:g}, ResNet-32,'
          f' {epochs:g} epochs; test accuracy (%), mean ± standard deviation'
          ' over seeds.'
      ),
      '**Last epoch**',
      _table(runs, 'last'),
      '**Best during training (selected on test: optimistic)**',
      _table(runs, 'best_test_during_training'),
      '**Per seed**',
      _per_seed(runs),
  ])
  with open(f'{stem}.md', 'w') as f:
    f.write(text + '\n')
  _plot_per_class(runs, f'{stem}_per_class.png')
  _plot_scale_spread(runs, f'{stem}_scale_spread.png')
  _plot_curves(runs, f'{stem}_curves.png')
  print(text)


RUN_DESCRIPTION = """Trains every arm (--arms) with every seed (--seeds), each as
`python train.py --config=configs/cifar10_lt.py` on the CIFAR-10 JPEG copy
(--data-dir) in its own workdir ROOT/if<IF>/<arm>/seed<S>, the 200-epoch
schedule compressed to --epochs. Finished runs are skipped, stopped ones
resume. Flags --config.<field>=value go to train.py.
"""
REPORT_DESCRIPTION = """Gathers the runs under --root (results.json, metrics/, the final
checkpoints) into OUT/cifar10_lt_if<IF>.md, a table of mean and spread
over seeds, and three PNG plots beside it: per-class accuracy, the spread
of the last-stage BN scales, and learning curves.
"""


def main():
  parser = argparse.ArgumentParser(
      prog='python -m bench.experiments.cifar10_lt_accuracy',
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  commands = parser.add_subparsers(dest='command', required=True)
  run_parser = commands.add_parser(
      'run',
      help='train every arm with every seed',
      description=RUN_DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  report_parser = commands.add_parser(
      'report',
      help='tables and plots of the runs',
      description=REPORT_DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  for command in (run_parser, report_parser):
    command.add_argument('--root', required=True, help='folder of the runs')
    command.add_argument(
        '--imbalance-factor',
        type=float,
        default=100.0,
        help='the CIFAR-10-LT imbalance factor (default 100)',
    )
  run_parser.add_argument(
      '--data-dir', required=True, help='the CIFAR-10 JPEG folder'
  )
  run_parser.add_argument(
      '--epochs',
      type=float,
      default=200.0,
      help='epochs of each run (default 200, the recipe)',
  )
  run_parser.add_argument(
      '--seeds',
      type=lambda s: [int(x) for x in s.split(',')],
      default=[0, 1],
      metavar='S1,S2,...',
      help='a comma-separated list of seeds, e.g. 0,1,2 (default 0,1)',
  )
  run_parser.add_argument(
      '--arms',
      type=lambda s: s.split(','),
      default=list(ARMS),
      help=f'a comma-separated list of arms of {list(ARMS)} (default all)',
  )
  report_parser.add_argument(
      '--out',
      default=os.path.join(ROOT, 'docs', 'results'),
      help='where the table and plots go (default docs/results)',
  )
  args, args.extra = parser.parse_known_args()  # --config.field=value ...
  unknown = [
      flag
      for flag in args.extra
      if args.command == 'report' or not flag.startswith('--config.')
  ]
  if unknown:
    parser.error(f'unknown arguments {unknown}')
  run(args) if args.command == 'run' else report(args)


if __name__ == '__main__':
  main()
