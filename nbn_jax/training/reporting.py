"""What a run writes for people: progress lines, TensorBoard scalars, a JSON
file of results, a summary table and PNG plots.

TensorBoard events are written with the `tensorboard` package alone (no
TensorFlow), so runs on machines without TensorFlow still produce them. Every
scalar also goes to ``metrics.jsonl`` in the workdir, one JSON object per
line, for plotting without TensorBoard.
"""

import functools
import json
import math
import os
import time
from typing import Any, Mapping

import numpy as np

from input_pipeline.files import write_atomically
from nbn_jax.normalization import effective_affine

METRICS_FILE = 'metrics.jsonl'
ALPHA_TAG = 'nbn/alpha'  # the tags of NBN's alphas start with it


class MetricWriter:
  """Scalars to TensorBoard events and metrics.jsonl (process 0 only).

  A resumed run starts at `first_step`: rows of metrics.jsonl after it
  (written by a run killed before its next checkpoint, and about to be
  written again) are dropped, so every step appears once. TensorBoard
  drops such orphaned events itself when a step goes backwards.
  """

  def __init__(self, workdir: str, first_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    os.makedirs(workdir, exist_ok=True)
    self._events = EventFileWriter(os.path.join(workdir, 'tensorboard'))
    path = os.path.join(workdir, METRICS_FILE)
    _drop_rows_after(path, first_step)
    self._jsonl = open(path, 'a')

  def write(self, step: int, scalars: dict[str, float]):
    if not self.enabled:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2

    values = [
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in scalars.items()
    ]
    self._events.add_event(
        event_pb2.Event(
            wall_time=time.time(),
            step=step,
            summary=summary_pb2.Summary(value=values),
        )
    )
    record = {
        'step': step,
        **{k: _finite_or_none(v) for k, v in scalars.items()},
    }
    self._jsonl.write(json.dumps(record) + '\n')

  def flush(self):
    if self.enabled:
      self._events.flush()
      self._jsonl.flush()

  def close(self):
    if self.enabled:
      self._events.close()
      self._jsonl.close()


def _drop_rows_after(path: str, step: int):
  """Rewrites a metrics.jsonl without its rows after `step`, if it has any.

  A row cut short (the process killed while writing it) is dropped too,
  and a last row missing only its newline gets one, so that new rows start
  on a line of their own.
  """
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [
      line.rstrip('\n') + '\n'
      for line in lines
      if (row := _parsed(line)) is not None and row.get('step', 0) <= step
  ]
  if kept != lines:
    with write_atomically(path) as f:
      f.writelines(kept)


def _parsed(line: str) -> dict | None:
  """One metrics.jsonl row, or None for a blank or cut-short line."""
  try:
    return json.loads(line)
  except ValueError:
    return None


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl (none if it does not exist); a row cut
  short by a kill is skipped."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [row for line in f if (row := _parsed(line)) is not None]


def _finite_or_none(value):
  value = float(value)
  return value if math.isfinite(value) else None


class Progress:
  """Formats 'step / total, epoch, loss, lr, images/s, ETA' lines."""

  def __init__(self, total_steps: int, steps_per_epoch: float, batch_size: int):
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = batch_size
    self._last = None  # (step, time) of the last line

  def start(self, step: int):
    """Starts the clock at `step` (the first step of this run)."""
    self._last = (step, time.perf_counter())

  def line(
      self, step: int, loss: float, accuracy: float, learning_rate: float
  ) -> tuple[str, float]:
    """The progress line at `step` and the images/s since the last one."""
    now = time.perf_counter()
    images_per_second = float('nan')
    if step > self._last[0]:
      images_per_second = (
          (step - self._last[0]) * self.batch_size / (now - self._last[1])
      )
    self._last = (step, now)
    eta = 'ETA --'
    if math.isfinite(images_per_second):
      seconds = (self.total_steps - step) * self.batch_size / images_per_second
      eta = f'ETA {format_duration(seconds)}'
    return (
        (
            f'step {step}/{self.total_steps} '
            f'(epoch {step / self.steps_per_epoch:.1f}) loss {loss:.4f} '
            f'train acc {accuracy:.3f} lr {learning_rate:.4g} '
            f'{images_per_second:,.0f} img/s {eta}'
        ),
        images_per_second,
    )


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}:{rest // 60:02d}:{rest % 60:02d}'


def _json_safe(value):
  """NumPy values as Python ones, NaN and infinities as None (null)."""
  if isinstance(value, dict):
    return {key: _json_safe(v) for key, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return _finite_or_none(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def write_json(path: str, data: Any):
  """Writes JSON atomically (a temporary file renamed into place)."""
  with write_atomically(path) as f:
    json.dump(_json_safe(data), f, indent=2)


def percent(fraction: float | None) -> str:
  """A fraction in % (two decimals), or 'n/a' for an empty shot group."""
  if fraction is None or not math.isfinite(fraction):
    return 'n/a'
  return f'{100 * fraction:.2f}'


def summary_table(rows: dict[str, dict[str, float]]) -> str:
  """A text table: one row per result, columns top-1 and the shot groups."""
  columns = ('top1', 'many', 'medium', 'few')
  width = max(len(name) for name in rows) + 2
  lines = [f'{"":{width}}' + ''.join(f'{c:>9}' for c in columns)]
  for name, metrics in rows.items():
    cells = ''.join(f'{percent(metrics[c]):>9}' for c in columns)
    lines.append(f'{name:{width}}' + cells)
  return '\n'.join(lines) + '\n(accuracy in %)'


# --- The BN scale spread of the NBN sites ----------------------------------


def at_path(tree, path: str):
  """The entry of a nested dict at a '/'-joined path."""
  return functools.reduce(lambda node, key: node[key], path.split('/'), tree)


def site_scales(
    params, sites: Mapping[str, str | None]
) -> dict[str, np.ndarray]:
  """Effective scale vectors of the layers at the NBN sites.

  In an NBN model these are NBN layers (scale_eff = alpha * w / ||w||); in a
  BN model the same sites are plain BNs (their scale). Comparing the two is
  the paper's motivation.

  Args:
    params: the model's parameters.
    sites: {'/'-joined path of each site: '/'-joined path of the alpha it
      reads, or None for a plain BN} (`plan.NBNSites.alphas`).

  Returns:
    {'layer4_0/bn3': (C,) vector, ...} in the order of `sites`.
  """
  result = {}
  for site, alpha in sites.items():
    layer = at_path(params, site)
    scale = np.asarray(layer['scale'])
    if alpha is not None:
      scale = np.asarray(
          effective_affine(scale, layer['bias'], at_path(params, alpha))[0]
      )
    result[site] = scale
  return result


def alpha_scalars(alphas: Mapping[str, Any]) -> dict[str, float]:
  """{TensorBoard tag: value} of NBN alphas given by '/'-joined path.

  The tag names the module owning the alpha: 'nbn/alpha' for the model's
  own (the one the reference's layers share), 'nbn/alpha/layer3_0/bn2' for
  a layer's own, 'nbn/alpha/expert_1' for an expert's.
  """
  return {
      '/'.join([ALPHA_TAG, *path.split('/')[:-1]]): float(value)
      for path, value in alphas.items()
  }


def spread(scale: np.ndarray) -> float:
  """Coefficient of variation of |scale| (std / mean): scale-free spread."""
  magnitude = np.abs(scale)
  return float(magnitude.std() / magnitude.mean())


# --- Plots --------------------------------------------------------------------


def _pyplot():
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  return plt


MAX_BARS = 100  # more classes are drawn as points and a running mean


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
  """Mean of each `window` consecutive values (NaNs skipped; NaN if all).

  Returns:
    (len(values) - window + 1,) means; entry i covers values[i:i + window].
  """
  finite = np.isfinite(values)
  sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
  counts = np.concatenate([[0], np.cumsum(finite)])
  totals = sums[window:] - sums[:-window]
  present = counts[window:] - counts[:-window]
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(present > 0, totals / present, np.nan)


def plot_per_class_accuracy(
    path: str, accuracy: np.ndarray, train_counts: np.ndarray, title: str
):
  """Per-class accuracy and training count (line, log scale), head to tail.

  Up to `MAX_BARS` classes: one bar each. More (ImageNet-LT, iNaturalist):
  a point per class and the running mean over 2% of the classes, in a
  figure of fixed width.
  """
  plt = _pyplot()
  order = np.argsort(-train_counts, kind='stable')
  num_classes = len(order)
  positions = np.arange(num_classes)
  accuracy_percent = 100 * np.asarray(accuracy, float)[order]
  if num_classes <= MAX_BARS:
    fig, ax = plt.subplots(figsize=(max(6, num_classes * 0.06 + 4), 4))
    ax.bar(positions, accuracy_percent, color='tab:blue')
    if num_classes <= 30:
      ax.set_xticks(positions, [str(c) for c in order])
  else:
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(positions, accuracy_percent, '.', color='tab:blue', ms=2, alpha=0.3)
    window = max(2, num_classes // 50)
    ax.plot(
        positions[window // 2 :][: num_classes - window + 1],
        running_mean(accuracy_percent, window),
        color='tab:blue',
        label=f'mean of {window} neighbouring classes',
    )
    ax.legend(loc='upper right', fontsize=8)
  ax.set_xlabel('class, by training count (head to tail)')
  ax.set_ylabel('test accuracy (%)', color='tab:blue')
  ax.set_ylim(0, 100)
  if train_counts.any():  # an evaluation may have no training counts
    counts_axis = ax.twinx()
    counts_axis.plot(positions, train_counts[order], color='tab:red')
    counts_axis.set_yscale('log')
    counts_axis.set_ylabel('training images', color='tab:red')
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_scale_spread(path: str, scales: dict[str, np.ndarray], title: str):
  """Each site's effective scale per channel, sorted, over its mean."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, scale in scales.items():
    magnitude = np.sort(np.abs(scale))[::-1]
    ax.plot(
        np.linspace(0, 1, len(magnitude)),
        magnitude / magnitude.mean(),
        label=f'{name} (cv {spread(scale):.2f})',
    )
  ax.set_xlabel('channel (sorted, fraction of the layer)')
  ax.set_ylabel('|effective scale| / layer mean')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def alpha_curves(
    rows: list[dict[str, Any]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{alpha tag: (epochs, values)} from metrics.jsonl rows, in tag order.

  The alphas are logged with the training scalars, 'train/epoch' among them.
  A non-finite value (logged as null) is left out.
  """
  curves = {}
  for row in rows:
    for tag, value in row.items():
      if tag.startswith(ALPHA_TAG) and value is not None:
        epochs, values = curves.setdefault(tag, ([], []))
        epochs.append(row['train/epoch'])
        values.append(value)
  return {
      tag: (np.asarray(epochs, float), np.asarray(values, float))
      for tag, (epochs, values) in curves.items()
  }


def plot_alphas(
    path: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str
):
  """Each NBN alpha over training, one line each (`alpha_curves`)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for tag, (epochs, values) in curves.items():
    owner = tag[len(ALPHA_TAG) + 1 :] or 'network'  # or expert_1, layer3_0/bn2
    ax.plot(epochs, values, label=owner, lw=1)
  ax.set_xlabel('epoch')
  ax.set_ylabel('alpha')
  ax.set_title(title, fontsize=9)
  if len(curves) <= 20:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
