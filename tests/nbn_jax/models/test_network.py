"""The network contract: what the trainer asks of a network, and no more.

A network that is not a ResNet (`TinyConvNet`, registered here and nowhere
else) trains, evaluates, re-trains its classifier and reports its
features through the trainer as it stands.
"""

import contextlib
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nbn_jax import models
from nbn_jax.analysis import features
from nbn_jax.normalization import NormalizedBatchNorm
from nbn_jax.training import checks, finetune, loop, plan, steps
from nbn_jax.training.checkpoints import latest_variables
from nbn_jax.training.errors import ConfigError
from tests.nbn_jax.training.builders import (
    DIGITS_TRAIN_SIZE,
    quickstart_steps,
    random_batches,
    tiny_config,
    tiny_step_plan,
)

TINY = 'TinyConvNet'


class TinyConvNet(nn.Module):
  """Not a ResNet: conv, BN or NBN (with its own alpha), pool, classifier.

  It has the contract's fields and `dtype`, none of the ResNets' others.
  """

  num_classes: int
  norm: str = 'nbn'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(4, (3, 3), use_bias=False, dtype=self.dtype, name='conv')(x)
    norm = NormalizedBatchNorm if self.norm == 'nbn' else nn.BatchNorm
    x = norm(use_running_average=not train, dtype=self.dtype, name='norm')(x)
    features = jnp.mean(nn.relu(x), axis=(1, 2))
    logits = nn.Dense(
        self.num_classes, dtype=self.dtype, name=models.CLASSIFIER
    )(features)
    return jnp.asarray(logits, jnp.float32)


@contextlib.contextmanager
def _registered(name, cls):
  """`cls` in `models.MODELS` as `name` inside the block."""
  models.named_network(name, cls, f'{cls.__name__}, for a test.')
  try:
    yield models.MODELS[name]
  finally:
    del models.MODELS[name]


@pytest.fixture
def tiny_network():
  """`TinyConvNet` in `models.MODELS` for the test, as `TINY`."""
  with _registered(TINY, TinyConvNet) as network:
    yield network


# --- The contract, as code ----------------------------------------------------


def test_a_class_without_the_required_fields_is_refused_at_registration():
  class NoNorm(nn.Module):
    num_classes: int

  with pytest.raises(TypeError, match='NoNorm has no field norm'):
    models.named_network('NoNorm', NoNorm, '')
  assert 'NoNorm' not in models.MODELS


def test_outputs_without_the_logits_are_refused_at_registration():
  class ExpertsOnly(TinyConvNet):
    OUTPUTS = (models.EXPERT_LOGITS,)

  with pytest.raises(TypeError, match="lacks 'logits'"):
    models.named_network('ExpertsOnly', ExpertsOnly, '')
  assert 'ExpertsOnly' not in models.MODELS


def test_a_network_says_which_outputs_it_returns():
  assert models.outputs_of(models.MODELS['ResNet8']) == (models.LOGITS,)
  assert models.outputs_of(models.MODELS['RIDEResNet8']) == (
      models.LOGITS,
      models.EXPERT_LOGITS,
  )
  model = models.RIDEResNet8(10)
  outputs = model.apply(
      model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False),
      jnp.zeros((2, 8, 8, 3)),
      train=False,
  )
  assert tuple(outputs) == models.outputs_of(models.MODELS['RIDEResNet8'])


def test_every_resnet_names_its_classifier_as_the_contract_says():
  for model in (models.ResNet8(10), models.RIDEResNet8(10, num_experts=2)):
    params = jax.eval_shape(
        lambda m=model: m.init(
            jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False
        )
    )['params']
    heads = [
        path
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
        if models.CLASSIFIER in [k.key for k in path]
    ]
    assert heads


# --- The plan gives a network only what it takes ------------------------------


def test_the_plan_passes_only_the_fields_a_network_has(tiny_network):
  config = tiny_config(model=TINY, half_precision=True)
  model = plan.build_model(config, 10, bn_axis_name='bn_group')
  assert model == TinyConvNet(10, norm='nbn', dtype=jnp.bfloat16)
  resnet = plan.build_model(tiny_config(half_precision=True), 10, 'bn_group')
  assert (resnet.dtype, resnet.bn_axis_name) == (jnp.bfloat16, 'bn_group')


def test_the_plan_sets_every_optional_field_a_resnet_has():
  config = tiny_config(
      model='RIDEResNet8',
      logit_norm=True,
      half_precision=True,
      nbn_stages=(1,),
      num_experts=2,
      reduce_dimension=True,
      classifier='linear',
      cosine_scale=16.0,
  )
  model = plan.build_model(config, 10, bn_axis_name='bn_group')
  expected = dict(
      logit_norm=True,
      bn_axis_name='bn_group',
      dtype=jnp.bfloat16,
      shortcut='A',
      num_experts=2,
      reduce_dimension=True,
      classifier='linear',
      cosine_scale=16.0,
  )
  assert set(expected) | {'nbn_placement'} == set(models.OPTIONAL_FIELDS)
  assert {f: getattr(model, f) for f in expected} == expected
  assert model.nbn_placement.stages == (1,)


@pytest.mark.parametrize(
    'field, value, message',
    [
        ('logit_norm', True, 'TinyConvNet has no logit_norm; set it to False'),
        ('nbn_stages', (1,), 'TinyConvNet has no nbn_placement; leave it'),
        ('bn_scope', 'group', "TinyConvNet has no bn_axis_name; use 'global'"),
        ('classifier', 'cosine', 'TinyConvNet has no classifier'),
    ],
)
def test_a_setting_the_network_has_no_field_for_is_one_line(
    tiny_network, field, value, message
):
  config = tiny_config(model=TINY, bn_group_size=2)
  config[field] = value
  with pytest.raises(ConfigError, match=message) as error:
    checks.check_config(config, 8, process_count=1)
  assert f'config.{field}=' in str(error.value)
  assert '\n' not in str(error.value)


def test_half_precision_needs_a_network_with_a_dtype():
  class Float32Only(nn.Module):
    num_classes: int
    norm: str = 'bn'

  with _registered('Float32Only', Float32Only):
    config = tiny_config(model='Float32Only', half_precision=True)
    with pytest.raises(
        ConfigError, match='Float32Only has no dtype; set it to False'
    ):
      checks.check_config(config, 8, process_count=1)


# --- A network that is not a ResNet, through the trainer ----------------------


def test_it_trains_and_evaluates_through_the_plans_steps(tiny_network):
  core = tiny_step_plan(tiny_config(model=TINY))
  assert core.nbn.alphas == {'norm': 'norm/alpha'}  # its own NBN, found
  state = core.runs.init_state()
  train_step = core.runs.train_step()
  sharding = core.topology.batch_sharding
  for step, (images, labels) in enumerate(random_batches(2)):
    state, metrics = train_step(
        state,
        jax.device_put(images, sharding),
        jax.device_put(labels, sharding),
        step,
    )
    assert np.isfinite(float(metrics['loss']))
  assert int(state.step) == 2
  correct, total, _ = core.runs.eval_step()(
      state, images, labels, np.ones(len(labels), bool)
  )
  assert int(total.sum()) == len(labels) and correct.shape == (10,)


@pytest.mark.slow
def test_it_trains_retrains_its_classifier_and_reports_features(
    tiny_network, tmp_path
):
  first, second = tmp_path / 'first', tmp_path / 'second'
  results = loop.train_and_evaluate(quickstart_steps(2, model=TINY), str(first))
  assert results['last']['step'] == 2
  assert results['nbn_sites'] == ['norm']
  assert json.loads((first / 'results.json').read_text())['status'] == (
      'finished'
  )
  # cRT: only the classifier and the alpha move.
  loop.train_and_evaluate(
      quickstart_steps(
          2, model=TINY, finetune_from=str(first), trainable='classifier'
      ),
      str(second),
  )
  before, after = (
      latest_variables(str(folder))['params'] for folder in (first, second)
  )
  moved = {
      '/'.join(k.key for k in path)
      for path, leaf in jax.tree_util.tree_flatten_with_path(after)[0]
      if not np.array_equal(leaf, _at(before, [k.key for k in path]))
  }
  assert moved == {'fc/kernel', 'fc/bias', 'norm/alpha'}
  # Its features are what its classifier reads.
  norm, counts, magnitudes = features.class_magnitudes(str(second))
  assert norm == 'nbn' and counts.sum() == DIGITS_TRAIN_SIZE
  assert magnitudes.shape == (10,) and (magnitudes > 0).all()


def _at(tree, keys):
  for key in keys:
    tree = tree[key]
  return tree


class Unnamed(TinyConvNet):
  """A classifier under another name than the contract's."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    return nn.Dense(self.num_classes, name='head')(x.mean(axis=(1, 2)))


def test_a_second_stage_needs_a_module_named_as_the_classifier(tmp_path):
  model = Unnamed(10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  fresh = steps.TrainState.create(
      apply_fn=model.apply, params=params, tx=optax.sgd(0.1), batch_stats={}
  )
  with pytest.raises(ConfigError, match="no module named 'fc'") as error:
    finetune.start_from(fresh, str(tmp_path), reinit_classifier=True)
  assert '\n' not in str(error.value)


def test_features_need_a_module_named_as_the_classifier():
  model = Unnamed(10)
  images = np.zeros((2, 8, 8, 3), np.uint8)
  prepare = lambda x: jnp.asarray(x, jnp.float32)
  variables = model.init(jax.random.key(0), prepare(images), train=False)
  with pytest.raises(ValueError, match="calls no module named 'fc'"):
    features.pooled_features(model, variables, prepare, images)
