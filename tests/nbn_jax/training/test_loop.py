"""train_and_evaluate end to end: every benchmark config for a couple of
steps on mock or generated data, and resumption after a kill."""

import json
import math
import os
import pathlib
import signal

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)

import input_pipeline as ip
from configs import cifar10_lt, cifar10_lt_ldam_drw, cifar10_lt_ride
from configs import cifar100_lt, cifar100_lt_ldam_drw, cifar100_lt_ride
from configs import imagenet_lt, imagenet_lt_ride, imagenet_lt_ride_nbn_lr
from configs import inat2018, quickstart
from nbn_jax.training import CheckpointError, ConfigError, NonFiniteLossError
from nbn_jax.training import loop, plots, preemption, reporting
from nbn_jax.training import plan as plan_lib
from nbn_jax.training import runs as runs_lib
from nbn_jax.training.checkpoints import latest_params
from tests.fake_data import mock_tfds_cifar, write_jpeg_dataset


def _tiny(config, **overrides):
  """Fast settings: small batches, log and checkpoint often."""
  config.batch_size = 16
  config.lr_batch_size = 16
  config.eval_batch_size = 32
  config.log_every_steps = 1
  config.steps_per_dispatch = 2
  config.warmup_epochs = 0.0
  config.half_precision = False
  for field, value in overrides.items():
    config[field] = value
  return config


def _epochs_for(steps, train_size, batch=16):
  """num_epochs giving exactly `steps` steps."""
  return steps * batch / train_size


def _mock_cifar(num_classes, train_per_class, test_per_class):
  rng = np.random.default_rng(0)

  def split(per_class):
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    return labels, rng.permutation(len(labels))

  return mock_tfds_cifar(
      {'train': split(train_per_class), 'test': split(test_per_class)}
  )


def _list_dataset(tmp_path, num_classes, test_size, distinct=12):
  """Train list with every class (a few images repeated), val and test."""
  root = str(tmp_path / 'images')
  write_jpeg_dataset(
      root, str(tmp_path / 'pool.txt'), [distinct], size=(40, 36)
  )
  pool = [f'train/class0/{i:04d}.jpg' for i in range(distinct)]
  rng = np.random.default_rng(0)

  def write(name, labels):
    with open(tmp_path / name, 'w') as f:
      f.writelines(f'{pool[i % distinct]} {l}\n' for i, l in enumerate(labels))
    return str(tmp_path / name)

  train_labels = np.concatenate([np.arange(num_classes), np.zeros(40, int)])
  eval_labels = rng.integers(0, num_classes, test_size)
  return dict(
      image_root=root,
      train_list=write('train.txt', train_labels),
      val_list=write('val.txt', eval_labels),
      test_list=write('test.txt', eval_labels),
  )


def _latest_checkpoint_step(workdir) -> int | None:
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as manager:
    return manager.latest_step()


def _check_outputs(workdir, results, steps, checkpoints=True):
  assert 0.0 <= results['last']['test']['top1'] <= 1.0
  assert results['last']['step'] == steps
  for name in (
      'results.json',
      'per_class_accuracy.png',
      'scale_spread.png',
  ):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert os.listdir(os.path.join(workdir, 'metrics'))
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  if checkpoints:
    assert _latest_checkpoint_step(workdir) == steps
  records = reporting.read_metrics(str(workdir))
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert losses and all(math.isfinite(l) for l in losses)
  assert any('train/images_per_second' in r for r in records)


@pytest.mark.slow
class TestEveryBenchmarkConfig:

  def test_quickstart_then_eval_only(self, tmp_path):
    config = _tiny(quickstart.get_config(), num_epochs=_epochs_for(2, 503))
    results = loop.train_and_evaluate(config, str(tmp_path))
    _check_outputs(str(tmp_path), results, steps=2)
    assert 'best_test_during_training' in results  # no val: labelled
    assert 'best_on_val' not in results
    scalars = (
        EventAccumulator(os.path.join(tmp_path, 'tensorboard'))
        .Reload()
        .Tags()['scalars']
    )
    assert {
        'train/loss',
        'train/learning_rate',
        'nbn/alpha',
        'eval/test/top1',
        'eval/test/few',
    } <= set(scalars)

    config.eval_only = True
    evaluated = loop.train_and_evaluate(config, str(tmp_path))
    assert evaluated['last']['test'] == results['last']['test']
    assert os.path.exists(os.path.join(tmp_path, 'results_eval.json'))

  def test_cifar10_lt_on_device(self, tmp_path):
    config = _tiny(
        cifar10_lt.get_config(),
        model='ResNet8',
        imbalance_factor=10.0,
        num_epochs=_epochs_for(2, ip.long_tail_counts(40, 10, 10).sum()),
    )
    with _mock_cifar(10, 40, 4):
      results = loop.train_and_evaluate(config, str(tmp_path))
    _check_outputs(str(tmp_path), results, steps=2)
    assert results['train_counts'][0] == 40 and results['train_counts'][-1] == 4

  def test_cifar100_lt_through_tf_data(self, tmp_path):
    config = _tiny(
        cifar100_lt.get_config(),
        model='ResNet8',
        input_path='tf_data',
        imbalance_factor=10.0,
        sampler='class_aware',
        # A class-aware epoch is max count x classes draws.
        num_epochs=_epochs_for(2, 10 * 100),
    )
    with _mock_cifar(100, 10, 1):
      results = loop.train_and_evaluate(config, str(tmp_path))
    _check_outputs(str(tmp_path), results, steps=2)

  # The ImageNet family end to end on ImageNet-LT; iNaturalist's 8,142
  # classes on a CIFAR-sized model (ResNet-14's 2048-d classifier over them
  # is a 190 MB train state, whose checkpoint alone took 8 s).
  @pytest.mark.parametrize(
      'config_module, num_classes, model',
      [(imagenet_lt, 1000, 'ResNet14'), (inat2018, 8142, 'ResNet8')],
  )
  def test_list_file_benchmarks(
      self, tmp_path, config_module, num_classes, model
  ):
    data = _list_dataset(tmp_path, num_classes, test_size=40)
    if config_module is inat2018:
      data['val_list'] = ''
    config = _tiny(
        config_module.get_config(),
        model=model,
        image_size=32,
        resize_size=36,
        num_epochs=_epochs_for(2, num_classes + 40),
        **data,
    )
    results = loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
    _check_outputs(str(tmp_path / 'workdir'), results, steps=2)
    if config_module is imagenet_lt:  # selected on val, reported on test
      assert results['best_on_val']['step'] == 2
      assert 'val' in results['last']
    else:
      assert 'best_on_val' not in results
    # The ImageNet-scale benchmarks report top-5 too.
    test = results['last']['test']
    assert test['top1'] <= test['top5'] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    'config_module, model',
    [
        (cifar10_lt_ride, 'RIDEResNet8'),
        (cifar100_lt_ride, 'RIDEResNet8'),
        (cifar10_lt_ldam_drw, 'ResNet8'),
        (cifar100_lt_ldam_drw, 'ResNet8'),
        (imagenet_lt_ride_nbn_lr, 'RIDEResNet14'),
    ],
)
def test_each_method_config_trains_end_to_end(
    tmp_path, caplog, config_module, model
):
  """RIDE (+ NBN) and LDAM-DRW, their losses re-weighting from the
  second step (the update from step 1's state), which the log marks."""
  config = config_module.get_config()
  overrides = dict(model=model, num_epochs=None, drw_epoch=None)
  if config.dataset == 'imagenet_lt':
    data = _list_dataset(tmp_path, 1000, test_size=40)
    train_size = 1000 + 40
    overrides |= dict(image_size=32, resize_size=36, num_experts=2, **data)
  else:
    classes = 10 if config.dataset == 'cifar10' else 100
    train_size = ip.long_tail_counts(20, classes, 10).sum()
    overrides |= dict(imbalance_factor=10.0)
  overrides['num_epochs'] = _epochs_for(2, train_size)
  overrides['drw_epoch'] = _epochs_for(1, train_size)  # from step 1 on
  config = _tiny(config, **overrides)
  with caplog.at_level('INFO'):
    if config.dataset == 'imagenet_lt':
      results = loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
    else:
      with _mock_cifar(classes, 20, 2):
        results = loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  _check_outputs(str(tmp_path / 'workdir'), results, steps=2)
  switches = [
      r.getMessage() for r in caplog.records if 'switches' in r.getMessage()
  ]
  if config.loss in ('ldam_drw', 'ride'):  # DRW: once, at its step
    assert switches == [
        f'step 2 (epoch {1 / (2 / config.num_epochs):.2f}): loss '
        f'{config.loss} switches to its re-weighting from this step on '
        f'(config.drw_epoch={config.drw_epoch}).'
    ]
  else:
    assert switches == []
  if model.startswith('RIDE'):  # each expert's NBN reads its own alpha
    alphas = set(results['nbn_site_alphas'].values())
    expected = {f'expert_{e}/nbn_alpha' for e in range(config.num_experts)}
    assert alphas == (expected if config.norm == 'nbn' else {None})


def test_the_ride_baseline_is_ride_nbn_lr_with_plain_bn_heads():
  """configs/imagenet_lt_ride.py (the reference's ride.yaml) differs from
  the end-to-end tested ride_nbn_lr only where the reference's two differ."""
  nbn_lr = imagenet_lt_ride_nbn_lr.get_config().to_dict()
  baseline = imagenet_lt_ride.get_config().to_dict()
  assert {k for k in nbn_lr if nbn_lr[k] != baseline[k]} == {
      'norm',
      'logit_norm',
  }
  assert (baseline['norm'], baseline['logit_norm']) == ('bn', False)


@pytest.fixture(scope='module')
def trained_list_workdir(tmp_path_factory):
  """(workdir, its config, its results): two steps on an ImageNet-LT-shaped
  list dataset (1,000 classes, each in the train list), from a classifier
  whose bias makes it answer class 0 (half of the test list: 20 images of
  class 0, one of each class 1..20)."""
  folder = tmp_path_factory.mktemp('imagenet_lt')
  data = _list_dataset(folder, 1000, test_size=40)
  test_lines = open(data['test_list']).read().splitlines()
  with open(data['test_list'], 'w') as f:
    f.writelines(
        f'{line.split()[0]} {label}\n'
        for line, label in zip(test_lines, [0] * 20 + list(range(1, 21)))
    )
  config = _tiny(
      imagenet_lt.get_config(),
      model='ResNet8',
      image_size=32,
      resize_size=36,
      num_epochs=_epochs_for(2, 1000 + 40),
      **data,
  )
  init_state = runs_lib.SingleRun.init_state

  def answering_class_0(strategy):
    state = init_state(strategy)
    fc = state.params['fc']
    bias = fc['bias'].at[0].set(100.0)
    return state.replace(params={**state.params, 'fc': {**fc, 'bias': bias}})

  workdir = str(folder / 'workdir')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(runs_lib.SingleRun, 'init_state', answering_class_0)
    results = loop.train_and_evaluate(config, workdir)
  assert results['last']['test']['top1'] == 0.5
  return workdir, config, results


def _evaluate_only(trained, caplog, **overrides):
  """eval_only on the trained workdir: (results_eval.json, warning lines)."""
  workdir, config, _ = trained
  config = ml_collections.ConfigDict(config.to_dict())
  config.update(eval_only=True, val_list='', **overrides)
  with caplog.at_level('WARNING'):
    results = loop.train_and_evaluate(config, workdir)
  assert results['last']['step'] == 2
  written = json.loads(
      (pathlib.Path(workdir) / 'results_eval.json').read_text()
  )
  return written, [r.getMessage() for r in caplog.records]


@pytest.mark.slow
@pytest.mark.xdist_group('trained_list_workdir')  # trained once
class TestEvalOnlyNeedsTheTrainListOnlyForTheShotGroups:
  """ImageNet-LT-style evaluation of a checkpoint (a converted one, say)."""

  def test_with_a_test_list_only(self, trained_list_workdir, caplog):
    results, warnings = _evaluate_only(
        trained_list_workdir, caplog, train_list=''
    )
    assert results['last']['test']['top1'] == 0.5
    for group in ('many', 'medium', 'few'):
      assert results['last']['test'][group] is None  # NaN, 'n/a' in the table
      assert results['shot_groups'][group] == []
    assert results['train_counts'] == [0] * 1000
    [line] = [w for w in warnings if 'train_list' in w]
    assert 'no class has a training count' in line and 'n/a' in line

  def test_with_a_train_list_missing_classes_and_images(
      self, trained_list_workdir, tmp_path, caplog
  ):
    """Classes 0, 1 and 2 listed with 150, 50 and 5 images (many, medium,
    few), none of those images on disk."""
    partial = tmp_path / 'partial_train.txt'
    partial.write_text(
        ''.join(
            f'absent/{c}_{i}.jpg {c}\n'
            for c, n in ((0, 150), (1, 50), (2, 5))
            for i in range(n)
        )
    )
    results, warnings = _evaluate_only(
        trained_list_workdir, caplog, train_list=str(partial)
    )
    assert results['shot_groups'] == {'many': [0], 'medium': [1], 'few': [2]}
    test = results['last']['test']
    assert 0.5 <= test.pop('top5') <= 1.0  # class 0, and others below it
    assert test == {
        'top1': 0.5,  # over every test image
        'many': 1.0,  # class 0's 20 images
        'medium': 0.0,  # class 1's one
        'few': 0.0,
    }
    [line] = [w for w in warnings if 'train_list' in w]
    assert '997 of 1000 classes (3, 4, 5, 6, 7, ...)' in line
    assert 'over the 3 classes it has (1 many / 1 medium / 1 few)' in line


def test_eval_only_without_a_checkpoint_is_a_clear_error(tmp_path):
  config = _tiny(quickstart.get_config(), eval_only=True)
  with pytest.raises(ConfigError, match='holds no checkpoint to evaluate'):
    loop.train_and_evaluate(config, str(tmp_path))


def _kill_after(monkeypatch, kill_step):
  """Makes the training input die (like a preemption) after `kill_step`."""
  make = plan_lib.Plan.training_input

  def dying(plan):
    training_input = make(plan)
    run = training_input.run

    def run_then_die(state, first_step, num_steps):
      result = run(state, first_step, num_steps)
      if first_step + num_steps >= kill_step:
        raise KeyboardInterrupt('killed')
      return result

    training_input.run = run_then_die
    return training_input

  monkeypatch.setattr(plan_lib.Plan, 'training_input', dying)


def _signal_after(monkeypatch, signal_step):
  """Sends this process SIGTERM (a preemption) after step `signal_step`."""
  make = plan_lib.Plan.training_input

  def signalled(plan):
    training_input = make(plan)
    run = training_input.run

    def run_then_signal(state, first_step, num_steps):
      result = run(state, first_step, num_steps)
      if first_step + num_steps == signal_step:
        os.kill(os.getpid(), signal.SIGTERM)  # handled before it returns
      return result

    training_input.run = run_then_signal
    return training_input

  monkeypatch.setattr(plan_lib.Plan, 'training_input', signalled)


@pytest.mark.slow
def test_a_signal_checkpoints_the_step_it_arrived_after(tmp_path, monkeypatch):
  config = _tiny(
      quickstart.get_config(),
      num_epochs=_epochs_for(8, 503),
      checkpoint_every_epochs=_epochs_for(4, 503),
      steps_per_dispatch=1,
  )
  _signal_after(monkeypatch, 3)
  with pytest.raises(preemption.Preempted) as stopped:
    loop.train_and_evaluate(config, str(tmp_path))
  assert stopped.value.step == 3
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']


def _poison_classifier(monkeypatch, strategy, row):
  """`strategy`'s initial state has NaN in row `row` of the classifier's
  kernel (of one run: its first input feature; of K: run `row`'s kernel)."""
  init_state = strategy.init_state

  def poisoned(self):
    state = init_state(self)
    fc = state.params['fc']
    kernel = fc['kernel'].at[row].set(np.nan)
    return state.replace(
        params={**state.params, 'fc': {**fc, 'kernel': kernel}}
    )

  monkeypatch.setattr(strategy, 'init_state', poisoned)


@pytest.mark.slow
def test_a_signal_between_progress_lines_still_catches_a_diverged_run(
    tmp_path, monkeypatch
):
  """Diverged at step 1, signalled after step 2, the next progress line at
  step 100: the pending losses are checked before the stop's checkpoint."""
  _poison_classifier(monkeypatch, runs_lib.SingleRun, 0)
  config = _tiny(
      quickstart.get_config(),
      num_epochs=_epochs_for(8, 503),
      checkpoint_every_epochs=_epochs_for(8, 503),
      log_every_steps=100,
      steps_per_dispatch=1,
  )
  _signal_after(monkeypatch, 2)
  with pytest.raises(
      NonFiniteLossError, match='training loss is nan at step 1'
  ):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()  # no diverged checkpoint


@pytest.mark.slow
@pytest.mark.parametrize(
    'input_path, kill_step, num_runs',
    [
        ('on_device', 5, 1),  # between checkpoints: steps 5..6 are redone
        ('tf_data', 4, 1),  # right at a checkpoint
        ('on_device', 5, 2),  # two runs in one program
    ],
)
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(
    tmp_path, monkeypatch, input_path, kill_step, num_runs
):
  def config():
    return _tiny(
        quickstart.get_config(),
        input_path=input_path,
        num_runs=num_runs,
        num_epochs=_epochs_for(8, 503),
        checkpoint_every_epochs=_epochs_for(4, 503),
        eval_every_epochs=_epochs_for(4, 503),
        steps_per_dispatch=1,
    )

  whole = loop.train_and_evaluate(config(), str(tmp_path / 'whole'))
  with monkeypatch.context() as patch:
    _kill_after(patch, kill_step)
    with pytest.raises(KeyboardInterrupt):
      loop.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  resumed = loop.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      latest_params(str(tmp_path / 'resumed')),
      latest_params(str(tmp_path / 'whole')),
  )
  if num_runs > 1:
    assert resumed['summary'] == whole['summary']
    resumed = resumed['runs'][1]
  else:
    whole = {'runs': [whole]}
  assert resumed['last']['test'] == pytest.approx(
      whole['runs'][-1]['last']['test']
  )
  assert [h['step'] for h in resumed['history']] == [4, 8]
  # Each step's row once: the steps after the checkpoint, logged before the
  # kill, are dropped on resuming and logged again.
  run_dir = tmp_path / 'resumed' / ('run_1' if num_runs > 1 else '')
  logged = [
      row['step']
      for row in reporting.read_metrics(str(run_dir))
      if 'train/loss' in row
  ]
  assert logged == list(range(1, 9))


@pytest.mark.slow
def test_runs_side_by_side_write_each_runs_outputs_and_a_summary(tmp_path):
  config = _tiny(
      quickstart.get_config(), num_runs=2, num_epochs=_epochs_for(2, 503)
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  for k, run in enumerate(results['runs']):
    _check_outputs(str(tmp_path / f'run_{k}'), run, steps=2, checkpoints=False)
    assert run['seed'] == k
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['seeds'] == [0, 1]
  top1 = [run['last']['test']['top1'] for run in results['runs']]
  assert summary['last']['top1']['runs'] == pytest.approx(top1)
  assert summary['last']['top1']['mean'] == pytest.approx(np.mean(top1))
  assert summary['last']['top1']['std'] == pytest.approx(np.std(top1, ddof=1))
  assert _latest_checkpoint_step(tmp_path) == 2


@pytest.mark.parametrize(
    'input_path',
    ['on_device', pytest.param('tf_data', marks=pytest.mark.slow)],
)
def test_group_scope_trains_end_to_end_on_both_input_paths(
    tmp_path, input_path
):
  """8 devices, BN statistics over groups of 2 (the fast tier's run)."""
  config = _tiny(
      quickstart.get_config(),
      bn_scope='group',
      bn_group_size=2,
      input_path=input_path,
      num_epochs=_epochs_for(2, 503),
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  _check_outputs(str(tmp_path), results, steps=2)
  assert results['nbn_sites'] == ['layer3_0/bn2']


def _tensorboard_scalars(folder):
  return set(
      EventAccumulator(os.path.join(folder, 'tensorboard'))
      .Reload()
      .Tags()['scalars']
  )


def test_a_model_with_two_alphas_logs_and_reports_both(tmp_path):
  """Two NBN layers with an alpha each (ResNet-8's last two stages, alphas
  not shared): the code that logs and reports one shared alpha does both."""
  config = _tiny(
      quickstart.get_config(),
      nbn_stages=(1, 2),
      nbn_shared_alpha=False,
      num_epochs=_epochs_for(2, 503),
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  sites = ['layer2_0/bn2', 'layer3_0/bn2']
  assert results['nbn_sites'] == sites
  assert results['nbn_site_alphas'] == {s: f'{s}/alpha' for s in sites}
  assert {'nbn/alpha/layer2_0/bn2', 'nbn/alpha/layer3_0/bn2'} <= (
      _tensorboard_scalars(tmp_path)
  )
  assert 'nbn/alpha' not in _tensorboard_scalars(tmp_path)
  assert set(results['scale_spread']) == set(sites)
  params = latest_params(str(tmp_path))
  for site in sites:
    layer = params[site.split('/')[0]]['bn2']
    scales = reporting.site_scales(params, {site: f'{site}/alpha'})
    assert np.linalg.norm(scales[site]) == pytest.approx(
        float(layer['alpha']), rel=1e-5
    )


@pytest.mark.slow
def test_a_step_limit_stops_early_and_a_later_run_continues(
    tmp_path, caplog, capsys
):
  config = _tiny(
      quickstart.get_config(), num_train_steps=2, num_epochs=_epochs_for(4, 503)
  )
  with caplog.at_level('INFO'):
    first = loop.train_and_evaluate(config, str(tmp_path))
  assert first['last']['step'] == 2
  # Not finished: in results.json and under its table.
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written['status'] == first['status'] == 'stopped_early'
  assert written['stopped_early'] == {'step': 2, 'planned_steps': 4}
  assert written['accuracy_unit'] == 'fraction'  # the tables: percent
  assert (
      'stopped early at step 2 of the 4 planned: not a finished run'
      in capsys.readouterr().out
  )
  # The shot groups are said at the start (the quickstart's thresholds).
  assert any(
      'Many (> 60 train images): 3 classes, Medium (20 to 60): 5, Few (< 20): 2'
      in r.getMessage()
      for r in caplog.records
  )
  config.num_train_steps = -1
  resumed = loop.train_and_evaluate(config, str(tmp_path))
  assert resumed['last']['step'] == 4
  assert resumed['status'] == 'finished' and 'stopped_early' not in resumed
  assert 'not a finished run' not in capsys.readouterr().out
  logged = [
      row['step']
      for row in reporting.read_metrics(str(tmp_path))
      if 'train/loss' in row
  ]
  assert logged == [1, 2, 3, 4]  # the schedule and the log run on
  # An evaluation with other neutral settings keeps the recorded config.
  config.update(eval_only=True, eval_batch_size=64)
  loop.train_and_evaluate(config, str(tmp_path))
  recorded = json.loads((tmp_path / 'config.json').read_text())
  assert (recorded['eval_only'], recorded['eval_batch_size']) == (False, 32)


@pytest.mark.slow
def test_a_diverging_run_of_three_is_marked_and_left_out_of_the_summary(
    tmp_path, monkeypatch, capsys
):
  """Run 1's classifier is poisoned at the start: it stops at step 1, is
  marked so in its results.json and summary.json, and the mean and std are
  over runs 0 and 2."""
  _poison_classifier(monkeypatch, runs_lib.StackedRuns, 1)
  config = _tiny(
      quickstart.get_config(), num_runs=3, num_epochs=_epochs_for(3, 503)
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  stopped = json.loads((tmp_path / 'run_1' / 'results.json').read_text())
  assert stopped['status'] == 'stopped'
  assert stopped['stopped'] == {'step': 1, 'reason': 'the training loss is nan'}
  assert stopped['last']['step'] == 0  # its last finite state
  assert stopped['history'] == []  # no evaluation after it stopped
  for k in (0, 2):
    assert results['runs'][k]['status'] == 'finished'
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['counted_seeds'] == [0, 2]
  assert summary['stopped'] == [
      {'run': 1, 'seed': 1, 'step': 1, 'reason': 'the training loss is nan'}
  ]
  top1 = [results['runs'][k]['last']['test']['top1'] for k in (0, 2)]
  assert summary['last']['top1']['runs'] == pytest.approx(top1)
  assert summary['last']['top1']['mean'] == pytest.approx(np.mean(top1))
  printed = capsys.readouterr().out
  assert (
      'last (step 0) test' in printed  # run 1's table, then what it means
      and 'stopped at step 1: the training loss is nan; "last" is its last finite state'
      in printed
  )
  assert printed.rstrip().endswith(
      '(accuracy in %, mean +- std over 2 of 3 runs; run 1 (seed 1) stopped '
      'at step 1: the training loss is nan)'
  )


# --- RIDE ensembles ------------------------------------------------------------

RIDE_ALPHAS = {f'nbn/alpha/expert_{e}' for e in range(3)}


def test_a_ride_ensemble_trains_logs_each_experts_alpha_and_plots_them(
    tmp_path,
):
  """RIDEResNet8 on the quickstart's digits, cross-entropy on the mean
  logits."""
  config = _tiny(
      quickstart.get_config(),
      model='RIDEResNet8',
      num_epochs=_epochs_for(2, 503),
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  _check_outputs(str(tmp_path), results, steps=2)
  assert set(results['nbn_site_alphas'].values()) == {
      f'expert_{e}/nbn_alpha' for e in range(3)
  }
  assert len(results['nbn_sites']) == 6  # bn1, bn2 of each layer3_0
  assert set(results['scale_spread']) == set(results['nbn_sites'])
  assert RIDE_ALPHAS <= _tensorboard_scalars(tmp_path)
  assert 'nbn/alpha' not in _tensorboard_scalars(tmp_path)
  curves = plots.alpha_curves(reporting.read_metrics(str(tmp_path)))
  assert set(curves) == RIDE_ALPHAS
  assert all(len(epochs) == 2 for epochs, _ in curves.values())  # 2 steps
  assert os.path.getsize(tmp_path / 'alpha.png') > 0
  params = latest_params(str(tmp_path))
  for e in range(3):  # what was logged last is the checkpoint's alpha
    assert curves[f'nbn/alpha/expert_{e}'][1][-1] == pytest.approx(
        float(params[f'expert_{e}']['nbn_alpha'])
    )


@pytest.mark.slow
def test_each_collapsed_expert_alpha_is_warned_of_once(
    tmp_path, monkeypatch, caplog
):
  """Experts 1 and 2 of RIDE start with alpha 1e-6 (a rate too small to
  move it): one warning each over two progress lines; expert 0's alpha,
  at 1, none."""
  init_state = runs_lib.SingleRun.init_state

  def collapsed(strategy):
    state = init_state(strategy)
    params = dict(state.params)
    for e in (1, 2):
      params[f'expert_{e}'] = {
          **params[f'expert_{e}'],
          'nbn_alpha': jax.numpy.float32(1e-6),
      }
    return state.replace(params=params)

  monkeypatch.setattr(runs_lib.SingleRun, 'init_state', collapsed)
  config = _tiny(
      quickstart.get_config(),
      model='RIDEResNet8',
      learning_rate=1e-9,
      num_epochs=_epochs_for(2, 503),
  )
  with caplog.at_level('WARNING'):
    loop.train_and_evaluate(config, str(tmp_path))
  warnings = [r.getMessage() for r in caplog.records]
  assert [w.split(' is ')[0] for w in warnings] == [
      'NBN alpha expert_1/nbn_alpha',
      'NBN alpha expert_2/nbn_alpha',
  ]
  assert warnings[0].endswith(
      'at step 1, below 0.001 (it starts at 1): the NBN layers that read it '
      'now pass almost nothing on.'
  )


@pytest.mark.slow
def test_a_stopped_ride_run_continues_then_evaluates_its_checkpoint(tmp_path):
  config = _tiny(
      quickstart.get_config(),
      model='RIDEResNet8',
      num_train_steps=1,
      num_epochs=_epochs_for(2, 503),
  )
  assert loop.train_and_evaluate(config, str(tmp_path))['last']['step'] == 1
  config.num_train_steps = -1
  results = loop.train_and_evaluate(config, str(tmp_path))
  _check_outputs(str(tmp_path), results, steps=2)
  curves = plots.alpha_curves(reporting.read_metrics(str(tmp_path)))
  assert [len(epochs) for epochs, _ in curves.values()] == [2, 2, 2]
  config.eval_only = True
  evaluated = loop.train_and_evaluate(config, str(tmp_path))
  assert evaluated['last']['test'] == results['last']['test']
  assert os.path.getsize(tmp_path / 'alpha_eval.png') > 0


@pytest.mark.slow
def test_ride_runs_side_by_side_through_tf_data_in_bf16(tmp_path):
  """K=2 RIDE runs in one program, BN statistics per group of 2 devices,
  bfloat16, the tf.data path: each run's outputs and alpha plot."""
  config = _tiny(
      quickstart.get_config(),
      model='RIDEResNet8',
      num_runs=2,
      bn_scope='group',
      bn_group_size=2,
      half_precision=True,
      input_path='tf_data',
      num_epochs=_epochs_for(2, 503),
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  for k, run in enumerate(results['runs']):
    run_dir = tmp_path / f'run_{k}'
    _check_outputs(str(run_dir), run, steps=2, checkpoints=False)
    curves = plots.alpha_curves(reporting.read_metrics(str(run_dir)))
    assert set(curves) == RIDE_ALPHAS
    assert os.path.getsize(run_dir / 'alpha.png') > 0
  # The runs differ (their own seeds), also in the experts' alphas.
  first, second = (
      plots.alpha_curves(reporting.read_metrics(str(tmp_path / f'run_{k}')))[
          'nbn/alpha/expert_0'
      ][1]
      for k in range(2)
  )
  assert not np.allclose(first, second)
  assert json.loads((tmp_path / 'summary.json').read_text())['seeds'] == [0, 1]


@pytest.mark.slow
def test_a_changed_network_is_refused_on_resuming_with_the_right_advice(
    tmp_path,
):
  config = _tiny(quickstart.get_config(), num_epochs=_epochs_for(1, 503))
  loop.train_and_evaluate(config, str(tmp_path))
  config.norm = 'bn'  # as --allow_config_change lets through
  with pytest.raises(CheckpointError) as error:
    loop.train_and_evaluate(config, str(tmp_path))
  assert str(error.value).startswith(
      f'the checkpoints in {tmp_path}/checkpoints hold another network or '
      'run layout than this config: params/nbn_alpha is in the checkpoints '
      'but not in the run (1 more entry differs).'
  )
  assert 'use a new --workdir' in str(error.value)
  assert os.listdir(tmp_path / 'checkpoints') == ['1']  # nothing moved aside
