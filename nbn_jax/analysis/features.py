"""Per-class strength of the last-stage features of trained runs.

The paper's mechanism: NBN should make the features of rare classes less
weak relative to frequent ones. For a workdir (a finished or stopped run),
`class_magnitudes` rebuilds and restores its model (`trained.load`) and
runs it in eval mode over the run's test split (in-memory splits: CIFAR,
digits).
A test image's feature magnitude is the L2 norm of the last stage's output
averaged over positions, i.e. of the vector the classifier reads; a class's
magnitude is the mean over its test images. In a RIDE ensemble that vector
is the concatenation of the experts' pooled features: the mean of linear
experts' logits is one linear classifier on it, and its squared norm is the
sum of the experts' squared norms.

`report` gives, per arm (the config's `norm`, mean over the workdirs of
that arm), each class's training count and magnitude, and how the
magnitude falls from head to tail (`fall_from_head_to_tail`):

* slope: least-squares slope of log(magnitude) on log(training count); 0:
  no fall, larger: tail features weaker;
* tail / head: the rarest class's magnitude over the most frequent one's;
* spearman: rank correlation of magnitude with training count;
* cv: standard deviation / mean of the class magnitudes.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nbn_jax.models import CLASSIFIER
from nbn_jax.training import plan, trained

EVAL_BATCH = 500


def pooled_features(
    model: nn.Module, variables, prepare: Callable, images: np.ndarray
) -> np.ndarray:
  """(N, D) inputs of the classifier for uint8 images, in eval mode.

  The classifier is the module named `models.CLASSIFIER`; an ensemble's
  experts each have one: their inputs, concatenated in expert order,
  (N, E * D).

  `prepare`: uint8 images -> model inputs (`trained.Trained.prepare`).

  Raises:
    ValueError: the model has no module of that name.
  """

  @jax.jit
  def features(batch):
    captured = []

    def grab_classifier_input(next_fun, args, kwargs, context):
      if context.module.name == CLASSIFIER and (
          context.method_name == '__call__'
      ):
        captured.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab_classifier_input):
      model.apply(variables, prepare(batch), train=False)
    if not captured:
      raise ValueError(
          f'{type(model).__name__} calls no module named {CLASSIFIER!r} '
          '(models.CLASSIFIER): the features are what its classifier reads.'
      )
    return jnp.concatenate(captured, axis=-1)

  return np.concatenate([
      np.asarray(features(images[i : i + EVAL_BATCH]), np.float32)
      for i in range(0, len(images), EVAL_BATCH)
  ])


def class_magnitudes(workdir: str, data_dir=None, cache_dir=None, run=0):
  """(norm, train counts (C,), mean feature magnitude per class (C,)).

  `data_dir`, `cache_dir`: in place of the run's own (a workdir brought
  from another machine).
  """
  run = trained.load(workdir, run)
  config = run.config
  if data_dir:
    config.data_dir = data_dir
  if cache_dir:
    config.cache_dir = cache_dir
  benchmark = plan.load_benchmark(config)
  if not benchmark.test.in_memory:
    raise ValueError(
        f'{workdir}: {benchmark.test.name} is not held in memory; the '
        'feature magnitudes are read from in-memory splits (CIFAR, digits).'
    )
  spec = benchmark.spec
  features = pooled_features(
      run.model, run.variables, run.prepare, benchmark.test.images
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
