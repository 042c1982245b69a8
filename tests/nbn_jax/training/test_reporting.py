"""Reporting helpers: the summary table, scale spread, files and plots."""

import dataclasses
import importlib
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

import configs
import input_pipeline as ip
from configs import quickstart
from nbn_jax import effective_affine, models
from nbn_jax.training import loop, plan, reporting, storage


@pytest.fixture(autouse=True)
def _close_figures():
  """The figures a test builds and does not save, closed after it."""
  yield
  import matplotlib.pyplot as plt

  plt.close('all')


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


def test_running_mean_skips_classes_without_test_images():
  values = np.array([1.0, np.nan, 3.0, 5.0, np.nan, np.nan])
  np.testing.assert_allclose(
      reporting.running_mean(values, 2), [1.0, 3.0, 4.0, 5.0, np.nan]
  )
  np.testing.assert_allclose(reporting.running_mean(values, 6), [3.0])


@pytest.mark.parametrize('num_classes', [10, 8142])
def test_per_class_plot_stays_readable_for_any_class_count(
    tmp_path, num_classes
):
  rng = np.random.default_rng(0)
  counts = rng.integers(1, 1000, num_classes)
  accuracy = rng.uniform(0, 1, num_classes)
  accuracy[::7] = np.nan  # classes without test images
  path = str(tmp_path / 'per_class.png')
  reporting.plot_per_class_accuracy(path, accuracy, counts, 'title')
  width, height = Image.open(path).size
  assert width <= 1200 and height == 480  # at most 10 x 4 inches at 120 dpi


# The quickstart's long tail: 124 images of digit 0 down to 12 of digit 9.
DIGITS_COUNTS = np.array([124, 96, 74, 57, 44, 34, 26, 20, 15, 12])


def _drawn(fig):
  """The figure, laid out as it will be saved."""
  fig.canvas.draw()
  return fig


def _labelled_ticks(axis, limits) -> list[str]:
  """The texts of an axis's tick labels that are shown within `limits`."""
  low, high = sorted(limits)
  return [
      label.get_text()
      for tick, label in zip(axis.get_majorticklocs(), axis.get_ticklabels())
      if low <= tick <= high and label.get_visible() and label.get_text()
  ]


@pytest.mark.parametrize(
    'low, high, ticks',
    [
        (12, 124, [12, 20, 50, 124]),
        (50, 5000, [50, 100, 200, 500, 1000, 2000, 5000]),
        (5, 1280, [5, 10, 20, 50, 100, 200, 500, 1280]),  # not 1000 by 1280
        (500, 500, [500]),  # a balanced set
    ],
)
def test_count_ticks_label_both_ends_and_the_round_counts_between(
    low, high, ticks
):
  assert reporting.count_ticks(low, high) == ticks


def test_per_class_plot_labels_its_count_axis_and_names_the_classes():
  """Classes by name, head to tail; the count axis labels several counts."""
  counts = np.array([50, 5000, 500, 2997, 1077, 645, 387, 232, 139, 83])
  names = ip.DATASETS['cifar10'].class_names
  fig = _drawn(
      reporting.per_class_accuracy_figure(
          np.linspace(0, 1, 10), counts, 'title', names
      )
  )
  ax, counts_axis = fig.axes
  head_to_tail = [names[c] for c in np.argsort(-counts)]
  assert [t.get_text() for t in ax.get_xticklabels()] == head_to_tail
  assert head_to_tail[:2] == ['automobile', 'cat']
  assert ax.get_xlabel() and ax.get_ylabel() and counts_axis.get_ylabel()
  assert _labelled_ticks(counts_axis.yaxis, counts_axis.get_ylim()) == [
      '50',
      '100',
      '200',
      '500',
      '1,000',
      '2,000',
      '5,000',
  ]
  small = _drawn(
      reporting.per_class_accuracy_figure(
          np.zeros(10),
          DIGITS_COUNTS,
          'title',
          ip.DATASETS['digits'].class_names,
      )
  )
  counts_axis = small.axes[1]
  assert len(_labelled_ticks(counts_axis.yaxis, counts_axis.get_ylim())) >= 3


def test_without_class_names_the_class_axis_shows_ids():
  fig = reporting.per_class_accuracy_figure(
      np.zeros(3), np.array([1, 30, 2]), 'title'
  )
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
      '1',
      '2',
      '0',
  ]


def _assert_readable(fig, max_entries=reporting.MAX_LEGEND_LINES):
  """Every panel's legend lies inside its axes, with at most `max_entries`
  entries of distinct colours; every panel has an x label, every row a y
  label."""
  _drawn(fig)
  panels = [ax for ax in fig.axes if ax.axison]
  assert panels
  for ax in panels:
    legend = ax.get_legend()
    inside = ax.get_window_extent().padded(1)  # a pixel for rounding
    box = legend.get_window_extent()
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1, ax.get_title()
    assert inside.y0 <= box.y0 and box.y1 <= inside.y1, ax.get_title()
    colours = [tuple(h.get_color()) for h in legend.legend_handles]
    assert len(colours) <= max_entries
    assert len(set(colours)) == len(colours)
    assert ax.get_xlabel()
  assert all(
      ax.get_ylabel() for ax in panels if ax.get_subplotspec().is_first_col()
  )


def _ride_resnet32_sites() -> list[str]:
  """The 30 NBN sites of a 3-expert RIDE ResNet-32 (`plan.nbn_sites`)."""
  return [
      f'expert_{e}/layer3_{b}/bn{k}'
      for e in range(3)
      for b in range(5)
      for k in (1, 2)
  ]


def test_a_ride_ensembles_scale_spread_has_a_readable_panel_per_expert():
  rng = np.random.default_rng(0)
  scales = {site: rng.gamma(2, size=64) for site in _ride_resnet32_sites()}
  fig = reporting.scale_spread_figure(scales, 'RIDEResNet32')
  _assert_readable(fig)
  assert [ax.get_title() for ax in fig.axes] == [
      'expert_0',
      'expert_1',
      'expert_2',
  ]
  labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
  assert (
      labels[0]
      == 'layer3_0/bn1 (cv'
      f' {reporting.spread(scales["expert_1/layer3_0/bn1"]):.2f})'
  )
  assert len(labels) == 10


def test_a_ride_ensembles_alphas_per_layer_have_a_panel_per_expert():
  epochs = np.linspace(0, 200, 50)
  curves = {
      f'{reporting.ALPHA_TAG}/{site}': (epochs, np.cos(epochs / (i + 1)))
      for i, site in enumerate(_ride_resnet32_sites())
  }
  fig = reporting.alpha_figure(curves, 'RIDEResNet32')
  _assert_readable(fig)
  assert len(fig.axes) == 3


def test_too_many_sites_for_a_legend_are_drawn_as_a_band_and_its_median():
  rng = np.random.default_rng(0)
  scales = {
      f'layer{s}_{b}/bn{k}': rng.gamma(2, size=64 * s)
      for s in (1, 2, 3, 4)
      for b in range(3)
      for k in (1, 2, 3)
  }
  fig = reporting.scale_spread_figure(scales, 'every BN of a ResNet')
  _assert_readable(fig)
  [ax] = fig.axes
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
      'each of 36',
      'median',
  ]


def test_a_short_runs_alphas_are_drawn_as_markers():
  """A 5-step run logs each alpha once: a line of one point shows nothing."""
  one_point = (np.array([0.6]), np.array([0.97]))
  fig = _drawn(
      reporting.alpha_figure(
          {f'{reporting.ALPHA_TAG}/expert_{e}': one_point for e in range(3)},
          'RIDE, 5 steps',
      )
  )
  [ax] = fig.axes
  for line in ax.get_lines():
    assert line.get_marker() not in (None, '', ' ', 'None')
    assert line.get_markersize() > 0
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
      'expert_0',
      'expert_1',
      'expert_2',
  ]
  assert ax.get_xlabel() == 'epoch' and ax.get_ylabel() == 'alpha'


def _config_models() -> dict[str, tuple[int, ...]]:
  """{model: its images' shape (small)} of every model a config names."""
  shapes = {
      'digits': (8, 8, 1),
      'cifar10': (32, 32, 3),
      'cifar100': (32, 32, 3),
  }
  models = {}
  for path in sorted(pathlib.Path(configs.__file__).parent.glob('*.py')):
    module = importlib.import_module(f'configs.{path.stem}')
    if path.stem in ('__init__', 'crt'):  # crt: a config of the others
      continue
    config = module.get_config()
    models[config.model] = shapes.get(config.dataset, (64, 64, 3))
  return models


@pytest.mark.slow
@pytest.mark.parametrize('model', sorted(_config_models()))
def test_every_configured_models_plots_are_readable(model):
  """The scale spread of the model's NBN sites and its alphas over 5 steps
  and over a whole run, each alpha from a layer of its own too."""
  sites = plan.nbn_sites(models.MODELS[model](10), _config_models()[model])
  rng = np.random.default_rng(0)
  scales = {site: rng.gamma(2, size=64) for site in sites.paths}
  _assert_readable(reporting.scale_spread_figure(scales, model))
  for epochs in (np.array([0.5]), np.linspace(0, 200, 200)):
    for owners in (
        sites.alpha_paths,
        [f'{site}/nbn_alpha' for site in sites.paths],
    ):
      curves = {
          tag: (epochs, np.ones_like(epochs))
          for tag in reporting.alpha_scalars(dict.fromkeys(owners, 1.0))
      }
      _assert_readable(reporting.alpha_figure(curves, model))


def test_alpha_curves_read_each_alpha_over_epochs_from_the_rows():
  rows = [
      {
          'step': 1,
          'train/loss': 2.0,
          'train/epoch': 0.5,
          'nbn/alpha/expert_0': 1.0,
          'nbn/alpha/expert_1': 0.9,
      },
      {'step': 1, 'eval/test/top1': 0.1},  # an evaluation row: no alpha
      {
          'step': 2,
          'train/loss': 1.0,
          'train/epoch': 1.0,
          'nbn/alpha/expert_0': 0.8,
          'nbn/alpha/expert_1': None,
      },
  ]
  curves = reporting.alpha_curves(rows)
  assert list(curves) == ['nbn/alpha/expert_0', 'nbn/alpha/expert_1']
  np.testing.assert_array_equal(curves['nbn/alpha/expert_0'][0], [0.5, 1.0])
  np.testing.assert_array_equal(curves['nbn/alpha/expert_0'][1], [1.0, 0.8])
  np.testing.assert_array_equal(curves['nbn/alpha/expert_1'][1], [0.9])
  assert reporting.alpha_curves([{'step': 1, 'train/epoch': 0.1}]) == {}


def test_alpha_plot_is_written(tmp_path):
  path = str(tmp_path / 'alpha.png')
  epochs = np.linspace(0, 2, 5)
  reporting.plot_alphas(
      path,
      {'nbn/alpha': (epochs, epochs), 'nbn/alpha/expert_0': (epochs, -epochs)},
      't',
  )
  assert Image.open(path).size == (720, 480)


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


@pytest.mark.slow
def test_the_plots_of_a_5_step_ride_run_are_readable(tmp_path, monkeypatch):
  """The figures a run saves, caught before they are: RIDE ResNet-32's 30
  NBN sites in a panel per expert, its three alphas (logged once) as
  markers, the classes named head to tail by the dataset's names."""
  names = ('zero', 'one', 'two', 'three', 'four')
  names += ('five', 'six', 'seven', 'eight', 'nine')
  digits = dataclasses.replace(ip.DATASETS['digits'], class_names=names)
  monkeypatch.setitem(ip.DATASETS, 'digits', digits)
  figures = {}
  monkeypatch.setattr(
      reporting,
      '_save',
      lambda fig, path: figures.setdefault(os.path.basename(path), fig),
  )
  config = quickstart.get_config()
  config.update(model='RIDEResNet32', num_train_steps=5, steps_per_dispatch=1)
  loop.train_and_evaluate(config, str(tmp_path / 'ride'))
  assert set(figures) == {
      'per_class_accuracy.png',
      'scale_spread.png',
      'alpha.png',
  }
  _assert_readable(figures['scale_spread.png'])
  assert len(figures['scale_spread.png'].axes) == 3
  _assert_readable(figures['alpha.png'])
  [alphas] = figures['alpha.png'].axes
  assert [len(line.get_xdata()) for line in alphas.get_lines()] == [1, 1, 1]
  assert all(line.get_marker() == 'o' for line in alphas.get_lines())
  ax = _drawn(figures['per_class_accuracy.png']).axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == list(names)
