"""Reporting helpers: the summary table, progress line, scale spread, JSON
files and the metrics a run writes."""

import json
import os

import numpy as np
import pytest

from nbn_jax import effective_affine
from nbn_jax.training import reporting, storage


def test_summary_table_in_percent():
  table = reporting.summary_table({
      'last test': {'top1': 0.5, 'many': 0.75, 'medium': 0.5, 'few': 0.125},
  })
  header, row, unit = table.splitlines()
  assert header.split() == ['top1', 'many', 'medium', 'few']
  assert row.split()[-4:] == ['50.00', '75.00', '50.00', '12.50']
  assert unit == '(accuracy in %)'


def test_top5_is_a_column_where_results_have_it():
  """An ImageNet-LT run's results, under a first stage's row without top-5
  (its results.json from before top-5 was counted, say)."""
  table = reporting.summary_table({
      'first stage test': {'top1': 0.5, 'many': 0.5, 'medium': 0, 'few': 0},
      'last test': {
          'top1': 0.5,
          'top5': 0.875,
          'many': 0.75,
          'medium': 0.5,
          'few': 0.125,
      },
  })
  header, first, last, _ = table.splitlines()
  assert header.split() == ['top1', 'top5', 'many', 'medium', 'few']
  assert first.split()[-5:] == ['50.00', 'n/a', '50.00', '0.00', '0.00']
  assert last.split()[-5:] == ['50.00', '87.50', '75.00', '50.00', '12.50']


def test_an_empty_shot_group_is_not_available_rather_than_nan():
  table = reporting.summary_table({
      'last test': {'top1': 0.5, 'many': 0.75, 'medium': 0.5, 'few': np.nan},
  })
  assert table.splitlines()[1].split()[-1] == 'n/a'


@pytest.mark.parametrize(
    'num_runs, live_runs, says',
    [
        (1, None, 'train acc 25.0% lr'),  # one run: its own loss
        (3, None, 'train acc 25.0% (means over 3 runs) lr'),
        (3, 2, 'train acc 25.0% (means over 2 of 3 runs) lr'),  # one stopped
    ],
)
def test_the_progress_line_says_when_it_shows_means_over_runs(
    num_runs, live_runs, says
):
  progress = reporting.Progress(100, 10.0, batch_size=32, num_runs=num_runs)
  progress.start(0)
  line, _ = progress.line(5, 2.5, 0.25, 0.1, live_runs)
  assert line.startswith(f'step 5/100 (epoch 0.5) loss 2.5000 {says} 0.1 ')


def test_the_progress_line_counts_every_runs_images_and_the_steps_left(
    monkeypatch,
):
  clock = iter([100.0, 102.0])  # 10 steps in 2 s
  monkeypatch.setattr(reporting.time, 'perf_counter', lambda: next(clock))
  progress = reporting.Progress(100, 10.0, batch_size=32, num_runs=3)
  progress.start(0)
  line, images_per_second = progress.line(10, 2.5, 0.25, 0.1)
  assert images_per_second == 10 / 2 * 32 * 3
  assert line.endswith(' 480 img/s ETA 0:00:18')  # 90 steps at 5 a second


def _block(scale, bias, alpha=None):
  layer = {
      'scale': np.asarray(scale, np.float32),
      'bias': np.asarray(bias, np.float32),
  }
  if alpha is not None:
    layer['alpha'] = np.float32(alpha)
  return layer


def test_site_scales_are_effective_for_nbn_and_raw_for_bn():
  nbn_params = {
      'nbn_alpha': np.float32(2.0),
      'layer3_0': {
          'bn2': _block([3.0, 4.0], [0.0, 0.0]),
          'bn1': _block([9.0, 9.0], [0, 0]),
      },
      'layer3_1': {'bn2': _block([1.0, 1.0], [0.0, 1.0])},
      'layer2_0': {'bn2': _block([5.0, 5.0], [0.0, 0.0])},
  }
  sites = {'layer3_0/bn2': 'nbn_alpha', 'layer3_1/bn2': 'nbn_alpha'}
  scales = reporting.site_scales(nbn_params, sites)
  assert list(scales) == list(sites)  # the sites only, in their order
  np.testing.assert_allclose(
      scales['layer3_0/bn2'],
      effective_affine(np.array([3.0, 4.0]), np.zeros(2), 2.0)[0],
  )
  bn_params = {'layer3_0': {'bn2': _block([3.0, 4.0], [0.0, 0.0])}}
  np.testing.assert_array_equal(
      reporting.site_scales(bn_params, {'layer3_0/bn2': None})['layer3_0/bn2'],
      [3.0, 4.0],
  )
  per_layer = {'layer3_0': {'bn2': _block([3.0, 4.0], [0, 0], alpha=10.0)}}
  own = {'layer3_0/bn2': 'layer3_0/bn2/alpha'}
  assert np.linalg.norm(
      reporting.site_scales(per_layer, own)['layer3_0/bn2']
  ) == pytest.approx(10.0, rel=1e-5)


def test_alpha_tags_name_the_module_owning_each_alpha():
  alphas = {
      'nbn_alpha': np.float32(2.0),
      'expert_1/nbn_alpha': np.float32(0.5),
      'layer3_0/bn2/alpha': np.float32(3.0),
  }
  assert reporting.alpha_scalars(alphas) == {
      'nbn/alpha': 2.0,
      'nbn/alpha/expert_1': 0.5,
      'nbn/alpha/layer3_0/bn2': 3.0,
  }


def test_spread_is_scale_free():
  assert reporting.spread(np.array([1.0, 3.0])) == pytest.approx(0.5)
  assert reporting.spread(np.array([-10.0, 30.0])) == pytest.approx(0.5)


def test_json_is_written_atomically_with_nan_as_null(tmp_path):
  path = str(tmp_path / 'results.json')
  reporting.write_json(path, {'few': float('nan'), 'top1': np.float32(0.5)})
  assert json.loads(open(path).read()) == {'few': None, 'top1': 0.5}
  assert os.listdir(tmp_path) == ['results.json']


def _steps(run_dir) -> list[int]:
  return [row['step'] for row in reporting.read_metrics(str(run_dir))]


def _tensorboard_steps(run_dir, tag='train/loss') -> list[int]:
  """The steps TensorBoard itself reads for `tag` from the run folder."""
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(
      os.path.join(run_dir, 'tensorboard')
  ).Reload()
  return [event.step for event in events.Scalars(tag)]


class TestMetricWriter:
  """Scalars in whole files, one JSON-lines file and one TensorBoard event
  file per flush, so that a bucket holds them as a folder does."""

  @pytest.fixture
  def run_dir(self, request, tmp_path):
    """A local folder, or a folder in a bucket on a local Cloud Storage
    server (`bucket` fixture)."""
    if request.param == 'bucket':
      return f'{request.getfixturevalue("bucket")}/run'
    return str(tmp_path / 'run')

  @pytest.mark.parametrize('run_dir', ['local', 'bucket'], indirect=True)
  def test_each_flush_is_one_file_of_each_kind_read_back_in_order(
      self, run_dir
  ):
    writer = reporting.MetricWriter(run_dir)
    for step in (1, 2, 3):
      writer.write(step, {'train/loss': 1.0 / step})
      if step != 2:
        writer.flush(force=True)
    writer.close()
    assert len(storage.listdir(f'{run_dir}/metrics')) == 2
    assert len(storage.listdir(f'{run_dir}/tensorboard')) == 2
    assert reporting.read_metrics(run_dir) == [
        {'step': 1, 'train/loss': 1.0},
        {'step': 2, 'train/loss': 0.5},
        {'step': 3, 'train/loss': 1 / 3},
    ]

  def test_tensorboard_reads_every_flush(self, tmp_path):
    writer = reporting.MetricWriter(str(tmp_path))
    for step in range(1, 6):
      writer.write(step, {'train/loss': 1.0 / step})
      writer.flush(force=step % 2 == 0)
    writer.close()
    assert _tensorboard_steps(tmp_path) == [1, 2, 3, 4, 5]

  def test_a_flush_writes_once_flush_seconds_passed(
      self, tmp_path, monkeypatch
  ):
    writer = reporting.MetricWriter(str(tmp_path))
    writer.write(1, {'train/loss': 1.0})
    writer.flush()
    assert _steps(tmp_path) == []  # kept: less than FLUSH_SECONDS ago
    monkeypatch.setattr(reporting, 'FLUSH_SECONDS', 0.0)
    writer.flush()
    assert _steps(tmp_path) == [1]

  def test_a_resumed_writer_drops_the_rows_after_its_checkpoint(self, tmp_path):
    """A run killed after step 6, its last checkpoint at step 4, resumes
    from step 4: steps 5 and 6 come again, and each step is logged once,
    in TensorBoard too."""
    writer = reporting.MetricWriter(str(tmp_path))
    for step in range(1, 7):
      writer.write(step, {'train/loss': 1.0 / step})
      if step in (2, 5, 6):  # files of steps 1-2, 3-5 and 6
        writer.flush(force=True)
    resumed = reporting.MetricWriter(str(tmp_path), first_step=4)
    assert _steps(tmp_path) == [1, 2, 3, 4]
    for step in (5, 6, 7):
      resumed.write(step, {'train/loss': 0.1})
    resumed.close()
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6, 7]
    assert _tensorboard_steps(tmp_path) == [1, 2, 3, 4, 5, 6, 7]

  def test_the_final_scalars_written_again_replace_the_earlier_ones(
      self, tmp_path
  ):
    # A finished run started again: it restores its last checkpoint and
    # writes its results once more.
    for _ in range(2):
      writer = reporting.MetricWriter(str(tmp_path), first_step=3)
      writer.write_final(3, {'final/test/top1': 0.5})
      writer.close()
    assert reporting.read_metrics(str(tmp_path)) == [
        {'step': 3, 'final/test/top1': 0.5}
    ]

  def test_an_evaluations_final_scalars_are_kept_apart(self, tmp_path):
    writer = reporting.MetricWriter(str(tmp_path))
    writer.write_final(3, {'final/test/top1': 0.5})
    writer.write_final(3, {'final/test/top1': 0.25}, suffix='_eval')
    writer.close()
    assert [
        r['final/test/top1'] for r in reporting.read_metrics(str(tmp_path))
    ] == [0.5, 0.25]


class TestLegacyMetricsFile:
  """metrics.jsonl, which runs wrote before the flushed files: still read
  (first) and cut back on a resume."""

  def test_a_resume_drops_its_rows_after_the_checkpoint_and_cut_rows(
      self, tmp_path
  ):
    (tmp_path / 'metrics.jsonl').write_text(
        '{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "train/lo'
    )
    writer = reporting.MetricWriter(str(tmp_path), first_step=2)
    writer.write(3, {'train/loss': 0.5})
    writer.close()
    assert (tmp_path / 'metrics.jsonl').read_text() == (
        '{"step": 1}\n{"step": 2}\n'
    )
    assert _steps(tmp_path) == [1, 2, 3]
