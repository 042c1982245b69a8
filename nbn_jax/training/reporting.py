"""What a run writes for people: progress lines, TensorBoard scalars, JSON
lines of every scalar, a JSON file of results and a summary table (the PNG
plots: `plots`).

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
    self.num_runs = num_runs
    self.images_per_step = batch_size * num_runs  # every run's batch
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
    steps_per_second = float('nan')
    if step > self._last[0]:
      steps_per_second = (step - self._last[0]) / (now - self._last[1])
    self._last = (step, now)
    images_per_second = steps_per_second * self.images_per_step
    eta = 'ETA --'
    if math.isfinite(steps_per_second):
      seconds = (self.total_steps - step) / steps_per_second
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
