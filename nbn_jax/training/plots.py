"""The PNG plots of a run, written through `storage` (local or a bucket).

Each `*_figure` builds a matplotlib figure (to inspect, as the tests do);
each `plot_*` saves one as a PNG. Figures stay readable for any model the
configs name: an ensemble's sites and alphas get a panel per expert, too
many lines for a legend become a band and its median, a short run's few
points get markers, and the per-class plot names classes where the dataset
has names.
"""

import io
import math
import re
from typing import Any, Mapping

import numpy as np

from nbn_jax.training import storage
from nbn_jax.training.reporting import ALPHA_TAG, spread

MAX_BARS = 100  # more classes are drawn as points and a running mean
MAX_NAMED_CLASSES = 30  # more classes get no tick label each
MAX_LEGEND_LINES = 10  # more lines in one panel are drawn as a band
FEW_POINTS = 20  # a line of at most this many points gets a marker on each
_EXPERT = re.compile(r'^(expert_\d+)(?:/|$)')


def save(fig, path: str):
  """Writes a figure as a PNG (120 dpi) to `path`, local or on a bucket."""
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=120)
  pyplot().close(fig)
  storage.write_bytes(path, png.getvalue())


def pyplot():
  """matplotlib.pyplot on the Agg backend (no screen needed)."""
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
  plt = pyplot()
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
  save(
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
  plt = pyplot()
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
  plt = pyplot()
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
  save(scale_spread_figure(scales, title), path)


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
  save(alpha_figure(curves, title), path)
