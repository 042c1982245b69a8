"""What a run writes for people: progress lines, TensorBoard scalars, JSON
lines of every scalar, a JSON file of results, a summary table and PNG plots.

Everything goes through `storage`, so a run folder may be local or on a
bucket. Scalars are written in whole objects, never appended (an object in
a bucket cannot be): each flush of a `MetricWriter` writes one file of JSON
lines under ``metrics/`` and one TensorBoard event file under
``tensorboard/``; `read_metrics` reads them back in order. TensorBoard
events are encoded with the `tensorboard` package alone (no TensorFlow).
"""

import dataclasses
import functools
import io
import json
import math
import re
import time
from typing import Any, Mapping

import numpy as np

from nbn_jax.normalization import effective_affine
from nbn_jax.training import storage

METRICS_FOLDER = 'metrics'
EVENTS_FOLDER = 'tensorboard'
# One file of JSON lines, appended to, before runs could write to buckets:
# still read, and cut back on a resume, in a run folder that has one.
LEGACY_METRICS_FILE = 'metrics.jsonl'
ALPHA_TAG = 'nbn/alpha'  # the tags of NBN's alphas start with it
# A flush writes (a file of each kind) once this long since the last one,
# or when forced: at each checkpoint and at the end.
FLUSH_SECONDS = 30.0
# '<microseconds since the epoch>.steps-<first>-<last>': a flush's files, in
# the order they were written; `write_final`'s are 'final[_eval]'.
_CHUNK = re.compile(r'^(\d{16})\.steps-(\d+)-(\d+)$')
_EVENTS_PREFIX = 'events.out.tfevents.'


@dataclasses.dataclass(frozen=True)
class _Chunk:
  """One flush's pair of files: rows of steps `first`..`last`."""

  stem: str
  first: int
  last: int

  @classmethod
  def parse(cls, stem: str) -> '_Chunk | None':
    found = _CHUNK.match(stem)
    if found is None:
      return None
    return cls(stem, int(found.group(2)), int(found.group(3)))


def _chunk_stem(steps: list[int]) -> str:
  return f'{time.time_ns() // 1000:016d}.steps-{min(steps)}-{max(steps)}'


class MetricWriter:
  """Scalars to JSON lines and TensorBoard events of one run folder.

  Rows are kept until `flush` writes them, as one object of each kind
  named by the flush's time and steps. On process 0 only (`enabled`).

  A resumed run starts at `first_step`: the rows after it (written by a run
  killed before its next checkpoint, and about to be written again) are
  dropped, so every step appears once: files holding only later steps are
  deleted, and one holding both is written again without them. TensorBoard
  also drops orphaned events itself when a step goes backwards.
  """

  def __init__(self, run_dir: str, first_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self._run_dir = run_dir
    self._rows = []  # (wall time, step, scalars) not yet written
    self._flushed = time.monotonic()
    if enabled:
      _drop_rows_after(run_dir, first_step)

  def write(self, step: int, scalars: Mapping[str, float]):
    if self.enabled:
      self._rows.append((time.time(), step, dict(scalars)))

  def flush(self, force: bool = False):
    """Writes the rows kept so far, if FLUSH_SECONDS passed or `force`."""
    due = time.monotonic() - self._flushed >= FLUSH_SECONDS
    if not (self.enabled and self._rows and (force or due)):
      return
    _write_chunk(
        self._run_dir,
        _chunk_stem([step for _, step, _ in self._rows]),
        self._rows,
    )
    self._rows = []
    self._flushed = time.monotonic()

  def write_final(self, step: int, scalars: Mapping[str, float], suffix=''):
    """The final results' scalars, in files of their own (``final{suffix}``):
    written again, they replace the earlier ones."""
    if self.enabled:
      self.flush(force=True)
      _write_chunk(
          self._run_dir, f'final{suffix}', [(time.time(), step, dict(scalars))]
      )

  def close(self):
    self.flush(force=True)


def _row(step: int, scalars: Mapping[str, float]) -> dict[str, Any]:
  return {'step': step, **{k: _finite_or_none(v) for k, v in scalars.items()}}


def _events(rows) -> bytes:
  """A TensorBoard event file of (wall time, step, scalars) rows."""
  from tensorboard.compat.proto import event_pb2, summary_pb2
  from tensorboard.summary.writer.record_writer import RecordWriter

  buffer = io.BytesIO()
  records = RecordWriter(buffer)
  records.write(
      event_pb2.Event(
          wall_time=time.time(), file_version='brain.Event:2'
      ).SerializeToString()
  )
  for wall_time, step, scalars in rows:
    values = [
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in scalars.items()
    ]
    records.write(
        event_pb2.Event(
            wall_time=wall_time,
            step=step,
            summary=summary_pb2.Summary(value=values),
        ).SerializeToString()
    )
  return buffer.getvalue()


def _write_chunk(run_dir: str, stem: str, rows):
  """One flush: its JSON lines, then its event file."""
  storage.write_text(
      storage.join(run_dir, METRICS_FOLDER, f'{stem}.jsonl'),
      ''.join(
          json.dumps(_row(step, scalars)) + '\n' for _, step, scalars in rows
      ),
  )
  storage.write_bytes(
      storage.join(run_dir, EVENTS_FOLDER, f'{_EVENTS_PREFIX}{stem}'),
      _events(rows),
  )


def _remove_chunk(run_dir: str, stem: str):
  storage.remove(
      storage.join(run_dir, EVENTS_FOLDER, f'{_EVENTS_PREFIX}{stem}')
  )
  storage.remove(storage.join(run_dir, METRICS_FOLDER, f'{stem}.jsonl'))


def _chunks(run_dir: str) -> list[_Chunk]:
  """The run folder's flushed files, oldest first."""
  stems = (
      name.removesuffix('.jsonl')
      for name in storage.listdir(storage.join(run_dir, METRICS_FOLDER))
  )
  return [chunk for stem in stems if (chunk := _Chunk.parse(stem))]


def _parsed_rows(text: str) -> list[dict[str, Any]]:
  """The rows of JSON lines; a line cut short by a kill is skipped."""
  return [row for line in text.splitlines() if (row := _parsed(line))]


def _drop_rows_after(run_dir: str, step: int):
  """Removes the rows of steps after `step` from the run folder's files."""
  for chunk in _chunks(run_dir):
    if chunk.last <= step:
      continue
    if chunk.first <= step:  # rows of both: the earlier ones written again
      path = storage.join(run_dir, METRICS_FOLDER, f'{chunk.stem}.jsonl')
      kept = [
          (
              time.time(),
              row['step'],
              {k: v for k, v in row.items() if k != 'step'},
          )
          for row in _parsed_rows(storage.read_text(path))
          if row.get('step', 0) <= step
      ]
      _write_chunk(run_dir, _chunk_stem([s for _, s, _ in kept]), kept)
    _remove_chunk(run_dir, chunk.stem)
  legacy = storage.join(run_dir, LEGACY_METRICS_FILE)
  if storage.exists(legacy):
    text = storage.read_text(legacy)
    kept = ''.join(
        json.dumps(row) + '\n'
        for row in _parsed_rows(text)
        if row.get('step', 0) <= step
    )
    if kept != text:
      storage.write_text(legacy, kept)


def _parsed(line: str) -> dict | None:
  """One row of JSON lines, or None for a blank or cut-short line."""
  try:
    row = json.loads(line)
  except ValueError:
    return None
  return row if isinstance(row, dict) else None


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
  """Every row a run folder's `MetricWriter`s wrote, in the order written.

  Rows of a folder's metrics.jsonl (written before scalars were flushed in
  whole files) come first; a row cut short by a kill is skipped.
  """
  rows = []
  legacy = storage.join(run_dir, LEGACY_METRICS_FILE)
  if storage.exists(legacy):
    rows += _parsed_rows(storage.read_text(legacy))
  folder = storage.join(run_dir, METRICS_FOLDER)
  for name in storage.listdir(folder):
    if name.endswith('.jsonl'):
      rows += _parsed_rows(storage.read_text(storage.join(folder, name)))
  return rows


def _finite_or_none(value):
  value = float(value)
  return value if math.isfinite(value) else None


class Progress:
  """Formats 'step / total, epoch, loss, accuracy, lr, images/s, ETA' lines.

  With several runs the loss and the training accuracy are means over the
  live runs, and the line says so; images/s counts every run's images
  (a stopped run's are still computed).
  """

  def __init__(
      self,
      total_steps: int,
      steps_per_epoch: float,
      batch_size: int,
      num_runs: int = 1,
  ):
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = batch_size  # of one run
    self.num_runs = num_runs
    self._last = None  # (step, time) of the last line

  def start(self, step: int):
    """Starts the clock at `step` (the first step of this run)."""
    self._last = (step, time.perf_counter())

  def line(
      self,
      step: int,
      loss: float,
      accuracy: float,
      learning_rate: float,
      live_runs: int | None = None,
  ) -> tuple[str, float]:
    """The progress line at `step` and the images/s since the last one.

    Args:
      step: the steps done.
      loss, accuracy: the training loss and the fraction of training
        examples right (means over the live runs).
      learning_rate: the step's rate.
      live_runs: how many runs `loss` and `accuracy` are means over
        (default: all).
    """
    live = self.num_runs if live_runs is None else live_runs
    now = time.perf_counter()
    images_per_second = float('nan')
    if step > self._last[0]:
      images_per_second = (
          (step - self._last[0])
          * self.batch_size
          * self.num_runs
          / (now - self._last[1])
      )
    self._last = (step, now)
    eta = 'ETA --'
    if math.isfinite(images_per_second):
      seconds = (
          (self.total_steps - step)
          * self.batch_size
          * self.num_runs
          / images_per_second
      )
      eta = f'ETA {format_duration(seconds)}'
    means = ''
    if self.num_runs > 1:
      of = f' of {self.num_runs}' if live < self.num_runs else ''
      means = f' (means over {live}{of} runs)'
    return (
        (
            f'step {step}/{self.total_steps} '
            f'(epoch {step / self.steps_per_epoch:.1f}) loss {loss:.4f} '
            f'train acc {100 * accuracy:.1f}%{means} lr {learning_rate:.4g} '
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
  """Writes JSON whole (`storage.write_bytes`), NaN as null."""
  storage.write_text(path, json.dumps(_json_safe(data), indent=2))


def percent(fraction: float | None) -> str:
  """A fraction in % (two decimals), or 'n/a' for an empty shot group."""
  if fraction is None or not math.isfinite(fraction):
    return 'n/a'
  return f'{100 * fraction:.2f}'


# The accuracies tables show, in this order, where the results have them:
# top-5 only for the benchmarks that report it (`DatasetSpec.reports_top5`).
ACCURACY_COLUMNS = ('top1', 'top5', 'many', 'medium', 'few')


def columns_of(results: list[dict[str, float]]) -> list[str]:
  """The `ACCURACY_COLUMNS` any of `results` has."""
  return [c for c in ACCURACY_COLUMNS if any(c in r for r in results)]


def summary_table(rows: dict[str, dict[str, float]]) -> str:
  """A text table: one row per result, columns top-1 (top-5 where the
  results have it) and the shot groups; a result without a column: n/a."""
  columns = columns_of(list(rows.values()))
  width = max(len(name) for name in rows) + 2
  lines = [f'{"":{width}}' + ''.join(f'{c:>9}' for c in columns)]
  for name, metrics in rows.items():
    cells = ''.join(f'{percent(metrics.get(c)):>9}' for c in columns)
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
#
# Each `*_figure` builds a matplotlib figure (to inspect, as the tests do);
# each `plot_*` saves one as a PNG.

MAX_BARS = 100  # more classes are drawn as points and a running mean
MAX_NAMED_CLASSES = 30  # more classes get no tick label each
MAX_LEGEND_LINES = 10  # more lines in one panel are drawn as a band
FEW_POINTS = 20  # a line of at most this many points gets a marker on each
_EXPERT = re.compile(r'^(expert_\d+)(?:/|$)')


def _save(fig, path: str):
  """Writes a figure as a PNG (120 dpi) to `path`, local or on a bucket."""
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=120)
  _pyplot().close(fig)
  storage.write_bytes(path, png.getvalue())


def _pyplot():
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  return plt


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


def count_ticks(low: int, high: int) -> list[int]:
  """The labelled ticks of a log axis of counts from `low` to `high`.

  Both ends, and the 1-2-5 values between them more than a factor 1.5 from
  either end (closer, two labels would touch): 12 to 124 gives
  [12, 20, 50, 124], where a plain log axis labels 100 alone.
  """
  decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
  inner = {
      value
      for decade in decades
      for value in (10**decade, 2 * 10**decade, 5 * 10**decade)
      if 1.5 * low <= value <= high / 1.5
  }
  return sorted({low, high} | inner)


def _class_labels(order: np.ndarray, class_names) -> list[str]:
  """Each class's name (or id, without names), in `order`."""
  return [class_names[c] if class_names else str(c) for c in order]


def per_class_accuracy_figure(
    accuracy: np.ndarray,
    train_counts: np.ndarray,
    title: str,
    class_names: tuple[str, ...] = (),
):
  """Per-class test accuracy (%) and training count (log axis), head to tail.

  Up to `MAX_BARS` classes: one bar each, named on the class axis up to
  `MAX_NAMED_CLASSES` (by `class_names`, in class-id order, or by id). More
  (ImageNet-LT, iNaturalist): a point per class and the running mean over
  2% of the classes, in a figure of fixed width. The training counts' axis
  labels both ends and the round counts between (`count_ticks`).

  Args:
    accuracy: (C,) test accuracy of each class, a fraction (NaN: no test
      image).
    train_counts: (C,) training images of each class (all 0: not known).
    title: the figure's title.
    class_names: C names in class-id order, or () to show ids.
  """
  plt = _pyplot()
  order = np.argsort(-train_counts, kind='stable')
  num_classes = len(order)
  positions = np.arange(num_classes)
  accuracy_percent = 100 * np.asarray(accuracy, float)[order]
  if num_classes <= MAX_BARS:
    fig, ax = plt.subplots(
        figsize=(max(6, num_classes * 0.06 + 4), 4), layout='constrained'
    )
    ax.bar(positions, accuracy_percent, color='tab:blue')
    if num_classes <= MAX_NAMED_CLASSES:
      labels = _class_labels(order, class_names)
      long = max(len(label) for label in labels) > 3
      ax.set_xticks(
          positions,
          labels,
          rotation=45 if long else 0,
          ha='right' if long else 'center',
          rotation_mode='anchor',
      )
  else:
    fig, ax = plt.subplots(figsize=(10, 4), layout='constrained')
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
  counts = np.asarray(train_counts)[order]
  if (counts > 0).any():  # an evaluation may have no training counts
    low, high = int(counts[counts > 0].min()), int(counts.max())
    counts_axis = ax.twinx()
    few = {'marker': '.'} if num_classes <= MAX_BARS else {}
    counts_axis.plot(positions, counts, color='tab:red', **few)
    counts_axis.set_yscale('log')
    counts_axis.set_ylim(low / 1.3, high * 1.3)
    ticks = count_ticks(low, high)
    counts_axis.set_yticks(ticks, [f'{t:,}' for t in ticks])
    counts_axis.minorticks_off()
    counts_axis.set_ylabel('training images (log scale)', color='tab:red')
  ax.set_title(title)
  return fig


def plot_per_class_accuracy(
    path: str,
    accuracy: np.ndarray,
    train_counts: np.ndarray,
    title: str,
    class_names: tuple[str, ...] = (),
):
  """Writes `per_class_accuracy_figure` as a PNG to `path`."""
  _save(
      per_class_accuracy_figure(accuracy, train_counts, title, class_names),
      path,
  )


def panels(names) -> dict[str, list[str]]:
  """Plot lines' names, split by the RIDE expert they belong to.

  The names fit one panel's legend (`MAX_LEGEND_LINES`): one panel. More:
  a panel per expert ('expert_<e>/...' and 'expert_<e>'), the rest in one
  panel of their own.

  Returns:
    {panel title ('' for one panel alone, else 'expert_<e>' or 'network'):
    its names, in their order}.
  """
  names = list(names)
  if len(names) <= MAX_LEGEND_LINES:
    return {'': names}
  groups = {}
  for name in names:
    expert = _EXPERT.match(name)
    groups.setdefault(expert.group(1) if expert else 'network', []).append(name)
  return groups if len(groups) > 1 else {'': names}


def _line_style(num_points: int) -> dict[str, Any]:
  """Markers on a line of few points: one point alone has no line to show."""
  return {'marker': 'o', 'ms': 3} if num_points <= FEW_POINTS else {}


def _draw_lines(ax, lines: Mapping[str, tuple[np.ndarray, np.ndarray]]):
  """`lines` ({label: (x, y)}) on `ax`, with a legend inside it.

  Up to `MAX_LEGEND_LINES`: each line in its own colour, labelled. More:
  each thin and grey, and their median over a common x, labelled together.
  """
  plt = _pyplot()
  if len(lines) <= MAX_LEGEND_LINES:
    colours = plt.get_cmap('tab10').colors
    for (label, (x, y)), colour in zip(lines.items(), colours):
      ax.plot(x, y, label=label, color=colour, lw=1.2, **_line_style(len(x)))
  else:
    for i, (x, y) in enumerate(lines.values()):
      label = f'each of {len(lines)}' if i == 0 else None
      ax.plot(x, y, color='0.6', lw=0.6, label=label, **_line_style(len(x)))
    start = max(x[0] for x, _ in lines.values())
    stop = min(x[-1] for x, _ in lines.values())
    grid = np.linspace(start, stop, 101) if stop > start else np.array([stop])
    median = np.median([np.interp(grid, x, y) for x, y in lines.values()], 0)
    ax.plot(grid, median, color='black', lw=2, label='median')
  ax.legend(loc='best', fontsize=7)


def _panel_figure(
    panel_lines: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    title: str,
    xlabel: str,
    ylabel: str,
):
  """One panel per entry of `panel_lines` ({panel title: lines}), in rows
  of up to three sharing the y axis (labelled in the first column)."""
  plt = _pyplot()
  columns = min(3, len(panel_lines))
  rows = math.ceil(len(panel_lines) / columns)
  fig, axes = plt.subplots(
      rows,
      columns,
      figsize=(1.2 + 4.8 * columns, 0.4 + 3.6 * rows),
      sharey=True,
      squeeze=False,
      layout='constrained',
  )
  for i, (ax, (name, lines)) in enumerate(zip(axes.flat, panel_lines.items())):
    _draw_lines(ax, lines)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(xlabel)
    if i % columns == 0:
      ax.set_ylabel(ylabel)
  for ax in axes.flat[len(panel_lines) :]:
    ax.set_axis_off()
  fig.suptitle(title, fontsize=9)
  return fig


def scale_spread_figure(scales: Mapping[str, np.ndarray], title: str):
  """Each site's |effective scale| per channel, sorted, over its mean.

  Args:
    scales: {site path: (C,) effective scale} (`site_scales`); an
      ensemble's sites ('expert_<e>/...') too many for one legend are drawn
      in a panel per expert, each labelled without its expert.
    title: the figure's title.
  """
  panel_lines = {}
  for name, sites in panels(scales).items():
    lines = {}
    for site in sites:
      magnitude = np.sort(np.abs(scales[site]))[::-1]
      label = site[len(name) + 1 :] if name else site
      lines[f'{label} (cv {spread(scales[site]):.2f})'] = (
          np.linspace(0, 1, len(magnitude)),
          magnitude / magnitude.mean(),
      )
    panel_lines[name] = lines
  fig = _panel_figure(
      panel_lines,
      title,
      'channel, sorted (fraction of the layer)',
      '|effective scale| / layer mean',
  )
  # From 0, and above 1 (where an untrained network's equal scales lie).
  top = max(1.5, max(ax.get_ylim()[1] for ax in fig.axes))
  for ax in fig.axes:
    ax.set_ylim(0, top)
  return fig


def plot_scale_spread(path: str, scales: dict[str, np.ndarray], title: str):
  """Writes `scale_spread_figure` as a PNG to `path`."""
  _save(scale_spread_figure(scales, title), path)


def alpha_curves(
    rows: list[dict[str, Any]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{alpha tag: (epochs, values)} from `read_metrics` rows, in tag order.

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


def alpha_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str
):
  """Each NBN alpha over training (`alpha_curves`), named by its owner.

  The network's own alpha is 'network', an expert's 'expert_<e>', a layer's
  its path; too many for one legend are split as `panels` splits them. A
  short run's few logged values are drawn as markers.
  """
  owners = {
      tag[len(ALPHA_TAG) + 1 :] or 'network': curve
      for tag, curve in curves.items()
  }
  panel_lines = {
      name: {
          (owner[len(name) + 1 :] if name else owner) or name: owners[owner]
          for owner in names
      }
      for name, names in panels(owners).items()
  }
  return _panel_figure(panel_lines, title, 'epoch', 'alpha')


def plot_alphas(
    path: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str
):
  """Writes `alpha_figure` as a PNG to `path`."""
  _save(alpha_figure(curves, title), path)
