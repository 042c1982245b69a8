"""The plots of a run: readable for any model the configs name (panels per
expert, a band for too many lines, markers for few points, class names),
and written as PNG files."""

import dataclasses
import importlib
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

import configs
import input_pipeline as ip
from configs import quickstart
from nbn_jax import models
from nbn_jax.training import loop, plan, plots, reporting


@pytest.fixture(autouse=True)
def _close_figures():
  """The figures a test builds and does not save, closed after it."""
  yield
  import matplotlib.pyplot as plt

  plt.close('all')


def test_running_mean_skips_classes_without_test_images():
  values = np.array([1.0, np.nan, 3.0, 5.0, np.nan, np.nan])
  np.testing.assert_allclose(
      plots.running_mean(values, 2), [1.0, 3.0, 4.0, 5.0, np.nan]
  )
  np.testing.assert_allclose(plots.running_mean(values, 6), [3.0])


@pytest.mark.parametrize('num_classes', [10, 8142])
def test_per_class_plot_stays_readable_for_any_class_count(
    tmp_path, num_classes
):
  rng = np.random.default_rng(0)
  counts = rng.integers(1, 1000, num_classes)
  accuracy = rng.uniform(0, 1, num_classes)
  accuracy[::7] = np.nan  # classes without test images
  path = str(tmp_path / 'per_class.png')
  plots.plot_per_class_accuracy(path, accuracy, counts, 'title')
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
  assert plots.count_ticks(low, high) == ticks


def test_per_class_plot_labels_its_count_axis_and_names_the_classes():
  """Classes by name, head to tail; the count axis labels several counts."""
  counts = np.array([50, 5000, 500, 2997, 1077, 645, 387, 232, 139, 83])
  names = ip.DATASETS['cifar10'].class_names
  fig = _drawn(
      plots.per_class_accuracy_figure(
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
      plots.per_class_accuracy_figure(
          np.zeros(10),
          DIGITS_COUNTS,
          'title',
          ip.DATASETS['digits'].class_names,
      )
  )
  counts_axis = small.axes[1]
  assert len(_labelled_ticks(counts_axis.yaxis, counts_axis.get_ylim())) >= 3


def test_without_class_names_the_class_axis_shows_ids():
  fig = plots.per_class_accuracy_figure(
      np.zeros(3), np.array([1, 30, 2]), 'title'
  )
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
      '1',
      '2',
      '0',
  ]


def _assert_readable(fig, max_entries=plots.MAX_LEGEND_LINES):
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
  fig = plots.scale_spread_figure(scales, 'RIDEResNet32')
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
  fig = plots.alpha_figure(curves, 'RIDEResNet32')
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
  fig = plots.scale_spread_figure(scales, 'every BN of a ResNet')
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
      plots.alpha_figure(
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
  _assert_readable(plots.scale_spread_figure(scales, model))
  for epochs in (np.array([0.5]), np.linspace(0, 200, 200)):
    for owners in (
        sites.alpha_paths,
        [f'{site}/nbn_alpha' for site in sites.paths],
    ):
      curves = {
          tag: (epochs, np.ones_like(epochs))
          for tag in reporting.alpha_scalars(dict.fromkeys(owners, 1.0))
      }
      _assert_readable(plots.alpha_figure(curves, model))


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
  curves = plots.alpha_curves(rows)
  assert list(curves) == ['nbn/alpha/expert_0', 'nbn/alpha/expert_1']
  np.testing.assert_array_equal(curves['nbn/alpha/expert_0'][0], [0.5, 1.0])
  np.testing.assert_array_equal(curves['nbn/alpha/expert_0'][1], [1.0, 0.8])
  np.testing.assert_array_equal(curves['nbn/alpha/expert_1'][1], [0.9])
  assert plots.alpha_curves([{'step': 1, 'train/epoch': 0.1}]) == {}


def test_alpha_plot_is_written(tmp_path):
  path = str(tmp_path / 'alpha.png')
  epochs = np.linspace(0, 2, 5)
  plots.plot_alphas(
      path,
      {'nbn/alpha': (epochs, epochs), 'nbn/alpha/expert_0': (epochs, -epochs)},
      't',
  )
  assert Image.open(path).size == (720, 480)


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
      plots,
      'save',
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
