"""Per-class strength of the last-stage features, BN against NBN (CPU).

    python bench/feature_magnitude.py WORKDIR [WORKDIR ...] \
        [--data-dir=DIR --cache-dir=DIR] [--out=report.md]

The paper's mechanism: NBN should make the features of rare classes less
weak relative to frequent ones. For each workdir (a finished or stopped
`train.py` run: its results.json, or config.json, and its newest
checkpoint), the model is rebuilt from the run's config, restored, and run
in eval mode over the run's test split (in-memory splits: CIFAR, digits).
A test image's feature magnitude is the L2 norm of the last stage's output
averaged over positions, i.e. of the vector the classifier reads; a class's
magnitude is the mean over its test images.

Printed per arm (the config's `norm`, mean over the workdirs of that arm):
each class's training count and magnitude, and how the magnitude falls
from head to tail:

* slope: least-squares slope of log(magnitude) on log(training count); 0:
  no fall, larger: tail features weaker;
* tail / head: the rarest class's magnitude over the most frequent one's;
* spearman: rank correlation of magnitude with training count;
* cv: standard deviation / mean of the class magnitudes.

--data-dir and --cache-dir replace the run's own data paths (workdirs
brought back from another machine).
"""

import argparse
import collections
import json
import os
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from input_pipeline import on_device
from nbn_jax.training import plan
from nbn_jax.training.checkpoints import latest_variables

EVAL_BATCH = 500


def _config(workdir: str) -> ml_collections.ConfigDict:
  for name in ('results.json', 'config.json'):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      return ml_collections.ConfigDict(record.get('config', record))
  raise FileNotFoundError(
      f'{workdir}: neither results.json nor config.json; pass the workdir '
      'of a train.py run.'
  )


def pooled_features(model: nn.Module, variables, images, mean, std):
  """(N, D) inputs of the classifier `fc` for uint8 images, in eval mode."""

  @jax.jit
  def features(batch):
    captured = []

    def grab_fc_input(next_fun, args, kwargs, context):
      if context.module.name == 'fc' and context.method_name == '__call__':
        captured.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab_fc_input):
      model.apply(
          variables, on_device.normalize_images(batch, mean, std), train=False
      )
    return captured[0]

  return np.concatenate([
      np.asarray(features(images[i : i + EVAL_BATCH]), np.float32)
      for i in range(0, len(images), EVAL_BATCH)
  ])


def class_magnitudes(workdir: str, data_dir=None, cache_dir=None):
  """(norm, train counts (C,), mean feature magnitude per class (C,))."""
  config = _config(workdir)
  if data_dir:
    config.data_dir = data_dir
  if cache_dir:
    config.cache_dir = cache_dir
  benchmark = plan.load_benchmark(config)
  if not benchmark.test.in_memory:
    raise ValueError(
        f'{workdir}: {benchmark.test.name} is not held in memory; this '
        'script reads in-memory splits (CIFAR, digits).'
    )
  spec = benchmark.spec
  topology = plan.build_topology(config, jax.local_devices()[:1])
  model = plan.build_model(config, spec.num_classes, topology)
  features = pooled_features(
      model,
      latest_variables(workdir),
      benchmark.test.images,
      spec.mean,
      spec.std,
  )
  magnitude = np.linalg.norm(features, axis=1)
  labels = benchmark.test.labels
  per_class = np.array(
      [magnitude[labels == c].mean() for c in range(spec.num_classes)]
  )
  return config.norm, benchmark.train_counts(), per_class


def _ranks(x: np.ndarray) -> np.ndarray:
  return np.argsort(np.argsort(x)).astype(float)


def fall_from_head_to_tail(counts, magnitudes) -> dict[str, float]:
  """The summaries in the module docstring, for one arm."""
  counts = np.asarray(counts, float)
  magnitudes = np.asarray(magnitudes, float)
  slope = np.polyfit(np.log(counts), np.log(magnitudes), 1)[0]
  return {
      'slope': float(slope),
      'tail / head': float(
          magnitudes[np.argmin(counts)] / magnitudes[np.argmax(counts)]
      ),
      'spearman': float(np.corrcoef(_ranks(counts), _ranks(magnitudes))[0, 1]),
      'cv': float(magnitudes.std() / magnitudes.mean()),
  }


def report(arms: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> str:
  """Markdown: per-class magnitudes and the fall from head to tail per arm."""
  names = sorted(arms)
  counts = arms[names[0]][0][0]
  per_arm = {a: np.stack([m for _, m in arms[a]]) for a in names}
  lines = [
      '| class | training images | '
      + ' | '.join(f'{a.upper()} (n={len(arms[a])})' for a in names)
      + ' |',
      '| --- | --- |' + ' --- |' * len(names),
  ]
  for c in np.argsort(-counts, kind='stable'):
    cells = []
    for a in names:
      values = per_arm[a][:, c]
      spread = f' ± {values.std(ddof=1):.3f}' if len(values) > 1 else ''
      cells.append(f'{values.mean():.3f}{spread}')
    lines.append(f'| {c} | {counts[c]} | ' + ' | '.join(cells) + ' |')
  summaries = {
      a: fall_from_head_to_tail(counts, per_arm[a].mean(0)) for a in names
  }
  lines += [
      '',
      (
          '| arm | slope of log magnitude on log count | tail / head | '
          'spearman | cv |'
      ),
      '| --- | --- | --- | --- | --- |',
  ]
  for a in names:
    s = summaries[a]
    lines.append(
        f'| {a.upper()} | {s["slope"]:.3f} | {s["tail / head"]:.3f} | '
        f'{s["spearman"]:.2f} | {s["cv"]:.3f} |'
    )
  if {'bn', 'nbn'} <= set(names):
    flatter = summaries['nbn']['slope'] < summaries['bn']['slope']
    lines += [
        '',
        (
            f'Under NBN the magnitude falls {"less" if flatter else "no less"}'
            ' from head to tail than under BN (slope'
            f' {summaries["nbn"]["slope"]:.3f} vs'
            f' {summaries["bn"]["slope"]:.3f}).'
        ),
    ]
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--data-dir', default='')
  parser.add_argument('--cache-dir', default='')
  parser.add_argument('--out', default='', help='also write the report here')
  args = parser.parse_args()
  arms = collections.defaultdict(list)
  for workdir in args.workdirs:
    norm, counts, magnitudes = class_magnitudes(
        workdir, args.data_dir, args.cache_dir
    )
    arms[norm].append((counts, magnitudes))
  counts = [c for runs in arms.values() for c, _ in runs]
  if any((c != counts[0]).any() for c in counts):
    sys.exit('error: the workdirs were trained on different class counts.')
  text = report(arms)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
