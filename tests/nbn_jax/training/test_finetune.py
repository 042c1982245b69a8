"""A second stage from a first stage's workdir: classifier re-training, or
fine-tuning converted weights with a classifier for another class count."""

import dataclasses
import json
import os
import pathlib
import socket

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import input_pipeline as ip
from configs import crt
from input_pipeline import on_device
from nbn_jax.training import conversion, finetune, loop
from nbn_jax.training import plan as plan_lib
from nbn_jax.training import workdir as workdir_lib
from nbn_jax.training.checkpoints import latest_variables
from nbn_jax.training.errors import ConfigError
from tests.nbn_jax.training.builders import quickstart_steps


def test_train_only_moves_the_chosen_parameters_and_decays_nothing_else():
  params = {
      'conv': {'kernel': jnp.ones(3)},
      'fc': {'kernel': jnp.ones(3), 'bias': jnp.ones(2)},
      'nbn_alpha': jnp.float32(1.0),
  }
  tx = optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.1))
  trained = finetune.train_only(
      tx, finetune.classifier_and_alphas(['nbn_alpha'])
  )
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = trained.update(grads, trained.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new['conv']['kernel'], params['conv']['kernel'])
  np.testing.assert_allclose(new['fc']['kernel'], 1 - 0.1 * (1 + 0.5))
  np.testing.assert_allclose(new['nbn_alpha'], 1 - 0.1 * (1 + 0.5))


def test_the_classifier_is_every_module_named_fc():
  assert finetune.in_classifier(('fc', 'kernel'))
  assert finetune.in_classifier(('expert_2', 'fc', 'bias'))
  assert not finetune.in_classifier(('layer3_0', 'bn2', 'scale'))
  assert not finetune.in_classifier(('fc_like',))  # a parameter, no module


def _stage(workdir, steps, **overrides):
  return loop.train_and_evaluate(
      quickstart_steps(steps, **overrides), str(workdir)
  )


def _snapshot(path: pathlib.Path):
  return {
      str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
      for p in sorted(path.rglob('*'))
  }


@pytest.mark.slow
def test_a_second_stage_trains_only_the_classifier_and_the_alphas(
    tmp_path, monkeypatch
):
  first = tmp_path / 'first'
  _stage(first, 2)
  before = _snapshot(first)
  stage1 = latest_variables(str(first))
  config_2 = crt.get_config('quickstart')  # the second stage's settings
  samplers = []  # of the data the second stage puts on the devices
  put_on_devices = on_device.put_on_devices

  def recording_put_on_devices(split, spec, batch_sharding):
    samplers.append(spec.name)
    return put_on_devices(split, spec, batch_sharding)

  monkeypatch.setattr(on_device, 'put_on_devices', recording_put_on_devices)
  results = _stage(
      tmp_path / 'second',
      3,
      finetune_from=str(first),
      trainable=config_2.trainable,
      sampler=config_2.sampler,
      schedule=config_2.schedule,
      lr_decay_epochs=(),
  )
  stage2 = latest_variables(str(tmp_path / 'second'))
  assert _snapshot(first) == before  # the first stage is only read
  flat = lambda tree: {
      '/'.join(k.key for k in path): leaf
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  before_2, after_2 = flat(stage1['params']), flat(stage2['params'])
  changed = {p for p in before_2 if not np.array_equal(before_2[p], after_2[p])}
  assert changed == {'fc/kernel', 'fc/bias', 'nbn_alpha'}
  # Batch statistics still move, as in the reference (train mode).
  assert not np.array_equal(
      stage1['batch_stats']['bn1']['mean'], stage2['batch_stats']['bn1']['mean']
  )
  first_results = json.loads((first / 'results.json').read_text())
  assert results['first_stage'] == {
      'workdir': str(first),
      'step': 2,
      'status': 'finished',
      'last': first_results['last'],
  }
  assert results['last']['step'] == 3
  assert samplers == ['class']  # Decoupling's cRT: class-balanced sampling


@pytest.mark.slow
def test_a_second_stage_from_a_first_stage_stopped_early_says_so(
    tmp_path, caplog
):
  """The first stage stopped by config.num_train_steps at step 1 of 2: a
  warning, and its status in the second stage's results."""
  first = tmp_path / 'first'
  _stage(first, 2, num_train_steps=1)
  with caplog.at_level('WARNING'):
    results = _stage(
        tmp_path / 'second',
        1,
        finetune_from=str(first),
        trainable='classifier',
    )
  assert results['first_stage']['status'] == 'stopped_early'
  assert results['first_stage']['stopped_early'] == {
      'step': 1,
      'planned_steps': 2,
  }
  assert [r.getMessage() for r in caplog.records] == [
      f'The first stage {first} stopped early, at step 1 of the 2 planned '
      '(config.num_train_steps): this second stage starts from its '
      'checkpoint at step 1, not from a finished run.'
  ]


@pytest.mark.parametrize(
    'first, warning',
    [
        ({'status': 'finished'}, None),
        ({'converted_from': {'checkpoint': 'x.pth'}}, None),
        (
            {'status': 'stopped', 'stopped': {'step': 3, 'reason': 'nan'}},
            (
                'The first stage W stopped at step 3 (nan): this second stage '
                'starts from its checkpoint at step 2, not from a finished run.'
            ),
        ),
        (
            {},  # killed after its checkpoint: no results of it
            (
                'The first stage W has no results of that checkpoint (it ended'
                ' early): this second stage starts from its checkpoint at step'
                ' 2, not from a finished run.'
            ),
        ),
    ],
)
def test_only_a_finished_or_converted_first_stage_gives_no_warning(
    first, warning
):
  first = {'workdir': 'W', 'step': 2} | first
  assert finetune.unfinished_warning(first) == warning


@pytest.mark.parametrize('reinit', [True, False])
def test_the_second_stage_starts_from_the_first_stages_variables(
    tmp_path, reinit
):
  """Everything but the head (`fc` and the logit-rectification statistics,
  fresh with `reinit_classifier`) is the first stage's."""
  first = tmp_path / 'first'
  _stage(first, 1, logit_norm=True)
  stage1 = latest_variables(str(first))
  config = quickstart_steps(
      1,
      logit_norm=True,
      finetune_from=str(first),
      trainable='classifier',
      reinit_classifier=reinit,
  )
  plan = plan_lib.build_plan(config)
  variables = lambda state: jax.device_get(
      {'params': state.params, 'batch_stats': state.batch_stats}
  )
  fresh = variables(plan.runs.init_state())
  start = plan.start(plan.runs.init_state())
  # The first stage moved what the second stage may take or reinitialise.
  assert not np.array_equal(
      stage1['batch_stats']['logit_norm']['mean'],
      fresh['batch_stats']['logit_norm']['mean'],
  )
  head = fresh if reinit else stage1
  expected = {
      'params': {**stage1['params'], 'fc': head['params']['fc']},
      'batch_stats': {
          **stage1['batch_stats'],
          'logit_norm': head['batch_stats']['logit_norm'],
      },
  }
  jax.tree.map(np.testing.assert_array_equal, variables(start), expected)
  assert int(start.step) == 0


@pytest.fixture(scope='module')
def first_stage(tmp_path_factory):
  """A workdir after one quickstart step (digits: 10 classes)."""
  first = tmp_path_factory.mktemp('finetune') / 'first'
  _stage(first, 1)
  return first


def _second_stage_state(first, num_classes, reinit):
  """The state a second stage of `num_classes` classes starts from."""
  config = quickstart_steps(
      1, finetune_from=str(first), reinit_classifier=reinit
  )
  spec = dataclasses.replace(
      ip.DATASETS['digits'], num_classes=num_classes, class_names=()
  )
  core = plan_lib.build_step_plan(
      config, spec, np.full(num_classes, 50), (8, 8, 1)
  )
  fresh = core.runs.init_state()
  return fresh, finetune.start_from(fresh, str(first), reinit)


def test_a_new_classifier_may_have_another_class_count(first_stage):
  """Digits' 10 classes -> 7: the body as trained, a fresh 7-way head."""
  first = first_stage
  stage1 = latest_variables(str(first))
  fresh, start = jax.device_get(_second_stage_state(first, 7, reinit=True))
  assert stage1['params']['fc']['kernel'].shape[-1] == 10
  jax.tree.map(
      np.testing.assert_array_equal, start.params['fc'], fresh.params['fc']
  )
  assert start.params['fc']['kernel'].shape[-1] == 7
  body = lambda tree: {k: v for k, v in tree.items() if k != 'fc'}
  jax.tree.map(
      np.testing.assert_array_equal,
      body(start.params),
      body(stage1['params']),
  )
  jax.tree.map(
      np.testing.assert_array_equal,
      start.batch_stats,
      stage1['batch_stats'],
  )


def test_the_old_classifier_needs_the_old_class_count(first_stage):
  with pytest.raises(ConfigError) as error:
    _second_stage_state(first_stage, 7, reinit=False)
  message = str(error.value)
  assert 'params/fc/bias has shape (10,) there and (7,) here' in message
  assert 'set config.reinit_classifier=True' in message
  assert '\n' not in message


def test_the_first_stage_of_a_converted_workdir_names_its_file(tmp_path):
  conversion.record_source(str(tmp_path), 'weights/resnet152.pth', 'plain_bn')
  assert finetune.first_stage_results(str(tmp_path), str(tmp_path), 0) == {
      'workdir': str(tmp_path),
      'step': 0,
      'converted_from': {
          'checkpoint': os.path.abspath('weights/resnet152.pth'),
          'source': 'plain_bn',
      },
  }


def test_a_first_stage_of_another_network_is_one_line(tmp_path):
  first = tmp_path / 'first'
  _stage(first, 1)
  with pytest.raises(ConfigError, match='holds another network') as error:
    _stage(
        tmp_path / 'second',
        1,
        finetune_from=str(first),
        trainable='classifier',
        model='ResNet32',
    )
  assert '\n' not in str(error.value)


def test_training_only_the_classifier_needs_a_first_stage(tmp_path):
  with pytest.raises(ConfigError, match='set config.finetune_from'):
    _stage(tmp_path, 1, trainable='classifier')


class TestTheFirstStage:
  """A second stage reads a finished first stage, names the checkpoint it
  starts from, and never shares or races its workdir."""

  @pytest.mark.parametrize('spelling', ['{}', '{}/', '{}/../first'])
  def test_its_own_workdir_is_refused_however_spelt(self, tmp_path, spelling):
    first = tmp_path / 'first'
    first.mkdir()
    with pytest.raises(ConfigError) as error:
      finetune.check_own_workdir(spelling.format(first), str(first))
    assert str(error.value) == (
        f"config.finetune_from is this run's --workdir ({first}); a second "
        "stage needs a workdir of its own (the first stage's is only read): "
        'give another --workdir.'
    )
    finetune.check_own_workdir(str(first), str(tmp_path / 'second'))

  def test_a_folder_that_is_no_workdir_says_so(self, tmp_path):
    with pytest.raises(ConfigError) as error:
      finetune.first_stage_step(str(tmp_path / 'missing'))
    assert str(error.value) == (
        f'config.finetune_from={tmp_path / "missing"} is not a workdir that '
        'train.py or the converter wrote (it has no config.json); give the '
        "first stage's --workdir."
    )

  def test_a_first_stage_still_training_is_refused(self, tmp_path):
    config = quickstart_steps(1).to_dict()
    with workdir_lib.claim(str(tmp_path), config):
      workdir_lib.record_config(str(tmp_path), config)
      with pytest.raises(ConfigError) as error:
        finetune.first_stage_step(str(tmp_path))
    assert str(error.value) == (
        f'config.finetune_from={tmp_path} is still training (pid '
        f'{os.getpid()} on host {socket.gethostname()}); start the second '
        'stage once it has ended, from its last checkpoint.'
    )

  def test_a_first_stage_without_checkpoints_is_refused(self, tmp_path):
    workdir_lib.record_config(str(tmp_path), quickstart_steps(1).to_dict())
    with pytest.raises(ConfigError, match='holds no checkpoint yet'):
      finetune.first_stage_step(str(tmp_path))

  def test_the_step_is_its_newest_checkpoint_s(self, first_stage):
    assert finetune.first_stage_step(str(first_stage)) == 1

  def test_its_results_are_reported_only_for_that_checkpoint(self, first_stage):
    reported = finetune.first_stage_results(
        str(first_stage), str(first_stage), 1
    )
    assert (reported['step'], reported['status']) == (1, 'finished')
    assert reported['last']['step'] == 1
    # The first stage was continued after this stage started from step 1:
    # its results are another checkpoint's.
    later = finetune.first_stage_results(str(first_stage), str(first_stage), 0)
    assert later == {'workdir': str(first_stage), 'step': 0}
