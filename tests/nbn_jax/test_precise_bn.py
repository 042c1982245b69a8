"""Precise BN: running statistics re-estimated as the average of batch
statistics, checked by hand on a model whose running statistics are stale."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nbn_jax import models, precise_bn
from nbn_jax.inspection import nbn_layer_paths
from nbn_jax import nnx as nbn_nnx
from nbn_jax.normalization import NormalizedBatchNorm, effective_affine

EPS = 1e-5
FEATURES = 4


class Net(nn.Module):
  """Dense -> BN -> relu -> Dense -> NBN: small enough to check by hand."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(6, name='fc1')(x)
    x = nn.BatchNorm(not train, momentum=0.9, epsilon=EPS, name='bn')(x)
    x = nn.Dense(5, name='fc2')(nn.relu(x))
    return NormalizedBatchNorm(
        not train, momentum=0.9, epsilon=EPS, name='nbn'
    )(x)


def _stale_variables():
  """Params moved away from init; running statistics left at (0, 1)."""
  variables = Net().init(
      jax.random.key(0), jnp.zeros((2, FEATURES)), train=False
  )
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape) + 1.0, p.dtype),
      variables['params'],
  )
  return {'params': params, 'batch_stats': variables['batch_stats']}


def _batches(count, size=16):
  rng = np.random.default_rng(1)
  # Far from the (0, 1) statistics the running averages start at.
  return [
      jnp.asarray(3.0 + 5.0 * rng.normal(size=(size, FEATURES)), jnp.float32)
      for _ in range(count)
  ]


def _normalize(h, scale, bias):
  mean, var = h.mean(0), h.var(0)
  return (h - mean) / np.sqrt(var + EPS) * scale + bias, (mean, var)


def _hand_statistics(params, x):
  """Each layer's batch mean and variance in a train-mode forward."""
  p = jax.tree.map(np.asarray, params)
  x = np.asarray(x, np.float64)
  h = x @ p['fc1']['kernel'] + p['fc1']['bias']
  y, bn = _normalize(h, p['bn']['scale'], p['bn']['bias'])
  h = np.maximum(y, 0) @ p['fc2']['kernel'] + p['fc2']['bias']
  scale, bias = effective_affine(
      p['nbn']['scale'], p['nbn']['bias'], p['nbn']['alpha']
  )
  _, nbn = _normalize(h, np.asarray(scale), np.asarray(bias))
  return {'bn': bn, 'nbn': nbn}


def _hand_check(estimate):
  """`estimate(model, variables, batches)` -> batch_stats: checked by hand.

  Raises AssertionError unless, on stale running statistics, (1) the
  estimate from one batch makes the eval-mode output equal the train-mode
  output on that batch, and (2) from three batches it is the average of
  the hand-computed batch means and variances.
  """
  model, variables = Net(), _stale_variables()
  (x,) = _batches(1)
  train_out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  stale_out = model.apply(variables, x, train=False)
  # The running statistics are stale: eval differs from train.
  assert np.abs(np.asarray(stale_out - train_out)).max() > 0.1
  stats = estimate(model, variables, [x])
  eval_out = model.apply({**variables, 'batch_stats': stats}, x, train=False)
  np.testing.assert_allclose(eval_out, train_out, rtol=1e-4, atol=1e-4)

  batches = _batches(3)
  stats = estimate(model, variables, batches)
  hand = [_hand_statistics(variables['params'], b) for b in batches]
  for layer in ('bn', 'nbn'):
    for i, name in enumerate(('mean', 'var')):
      expected = np.mean([h[layer][i] for h in hand], axis=0)
      np.testing.assert_allclose(
          stats[layer][name], expected, rtol=1e-4, atol=1e-4
      )


def _precise(model, variables, batches):
  return precise_bn.precise_batch_stats(model, variables, batches, train=True)


def test_precise_statistics_are_the_average_of_batch_statistics():
  _hand_check(_precise)


def _running_averages(model, variables, batches):
  """Broken: the layers' own running averages over the batches."""
  stats = variables['batch_stats']
  for x in batches:
    _, updates = model.apply(
        {**variables, 'batch_stats': stats},
        x,
        train=True,
        mutable=['batch_stats'],
    )
    stats = updates['batch_stats']
  return stats


def _last_batch(model, variables, batches):
  """Broken: the statistics of the last batch only."""
  return precise_bn.precise_batch_stats(
      model, variables, batches[-1:], train=True
  )


def _eval_mode(model, variables, batches):
  """Broken: statistics of an eval-mode pass (none are updated)."""
  return precise_bn.precise_batch_stats(model, variables, batches, train=False)


@pytest.mark.parametrize('broken', [_running_averages, _last_batch])
def test_the_hand_check_catches_broken_estimates(broken):
  with pytest.raises(AssertionError):
    _hand_check(broken)


def test_an_eval_mode_pass_is_refused():
  with pytest.raises(ValueError, match='train mode'):
    _hand_check(_eval_mode)


def test_a_resnet_gets_what_momentum_zero_gives():
  """Our models: what passes with `bn_momentum=0.0` give (to rounding)."""
  model = models.ResNet8(num_classes=3, widths=(4, 8, 8))
  x = jax.random.normal(jax.random.key(1), (2, 6, 8, 8, 3)) * 2 + 1
  variables = model.init(jax.random.key(0), x[0], train=False)
  stats = precise_bn.precise_batch_stats(model, variables, x, train=True)
  zero = model.clone(bn_momentum=0.0)
  per_batch = [
      zero.apply(variables, b, train=True, mutable=['batch_stats'])[1][
          'batch_stats'
      ]
      for b in x
  ]
  expected = jax.tree.map(lambda a, b: (a + b) / 2, *per_batch)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      stats,
      expected,
  )
  # NBN layers (the last stage's bn2) are among them.
  nbn_paths = nbn_layer_paths(model, x[0].shape)
  assert nbn_paths
  for path in nbn_paths:
    layer = functools.reduce(lambda tree, k: tree[k], path.split('/'), stats)
    assert not np.allclose(layer['mean'], 0)


class _OwnStatistics(nn.Module):
  """A layer that keeps batch_stats of its own (not a BN)."""

  @nn.compact
  def __call__(self, x):
    count = self.variable('batch_stats', 'count', jnp.zeros, ())
    if not self.is_initializing():
      count.value += 1
    return x


class _WithOwnStatistics(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.BatchNorm(not train, name='bn')(x)
    return _OwnStatistics(name='counter')(x)


def test_statistics_of_other_layers_are_refused_by_name():
  model = _WithOwnStatistics()
  x = jnp.ones((4, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match='counter'):
    precise_bn.precise_batch_stats(model, variables, [x], train=True)


def test_no_batch_is_refused():
  with pytest.raises(ValueError, match='at least one batch'):
    _precise(Net(), _stale_variables(), [])


class NnxNet(nnx.Module):
  """`Net` in NNX, with nnx.BatchNorm and nbn_jax.nnx's NBN."""

  def __init__(self, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(FEATURES, 6, rngs=rngs)
    self.bn = nnx.BatchNorm(6, momentum=0.9, epsilon=EPS, rngs=rngs)
    self.fc2 = nnx.Linear(6, 5, rngs=rngs)
    self.nbn = nbn_nnx.NormalizedBatchNorm(
        5, momentum=0.9, epsilon=EPS, rngs=rngs
    )

  def __call__(self, x):
    x = self.fc2(nnx.relu(self.bn(self.fc1(x))))
    return self.nbn(x)


def _nnx_net():
  """An NnxNet with the linen Net's stale variables."""
  variables = _stale_variables()
  net = NnxNet(nnx.Rngs(0))
  for name in ('fc1', 'fc2', 'bn', 'nbn'):
    for param, value in variables['params'][name].items():
      getattr(net, name).__getattribute__(param)[...] = value
  return net, variables


def test_nnx_precise_statistics_pass_the_hand_check():
  def estimate(model, variables, batches):
    del model
    net, _ = _nnx_net()
    assert precise_bn.update_bn_stats_nnx(net, batches) == 2
    return {
        name: {'mean': layer.mean[...], 'var': layer.var[...]}
        for name, layer in (('bn', net.bn), ('nbn', net.nbn))
    }

  _hand_check(estimate)


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_nnx_estimate_from_either_mode_leaves_the_mode_as_it_was(mode):
  """The statistics are train-mode ones; the layers' mode and momentum
  are restored."""
  net, variables = _nnx_net()
  getattr(net, mode)()
  (x,) = _batches(1)
  precise_bn.update_bn_stats_nnx(net, [x])
  in_eval_mode = mode == 'eval'
  for name, layer in (('bn', net.bn), ('nbn', net.nbn)):
    assert layer.use_running_average is in_eval_mode, name
    assert layer.momentum == 0.9, name
    mean, var = _hand_statistics(variables['params'], x)[name]
    np.testing.assert_allclose(layer.mean[...], mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.var[...], var, rtol=1e-4, atol=1e-4)


def test_nnx_eval_mode_equals_train_mode_on_the_batch():
  net, _ = _nnx_net()
  (x,) = _batches(1)
  net.eval()
  stale = net(x)
  net.train()
  train_out = nnx.clone(net)(x)
  precise_bn.update_bn_stats_nnx(net, [x])
  net.eval()
  assert np.abs(np.asarray(stale - train_out)).max() > 0.1
  np.testing.assert_allclose(net(x), train_out, rtol=1e-4, atol=1e-4)


def test_nnx_failure_leaves_the_model_as_it_was():
  net, _ = _nnx_net()
  before = jax.tree.map(np.asarray, nnx.state(net, nnx.BatchStat))

  def batches():
    yield from _batches(1)
    raise RuntimeError('input failed')

  with pytest.raises(RuntimeError, match='input failed'):
    precise_bn.update_bn_stats_nnx(net, batches())
  jax.tree.map(
      np.testing.assert_array_equal,
      before,
      jax.tree.map(np.asarray, nnx.state(net, nnx.BatchStat)),
  )
  assert net.bn.momentum == 0.9


def test_later_estimates_reuse_the_compilation():
  model, variables = Net(), _stale_variables()
  _precise(model, variables, _batches(2))
  compiled = precise_bn._jitted_batch_statistics._cache_size()
  moved = jax.tree.map(lambda v: v * 2, variables)
  _precise(Net(), moved, _batches(3))
  assert precise_bn._jitted_batch_statistics._cache_size() == compiled
