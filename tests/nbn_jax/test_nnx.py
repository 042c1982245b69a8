"""nbn_jax.nnx.NormalizedBatchNorm: nnx.BatchNorm's behaviour, linen's math."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nbn_jax import NormalizedBatchNorm as LinenNBN
from nbn_jax.nnx import NormalizedBatchNorm

FEATURES = 6
FIELDS = dict(momentum=0.9, epsilon=1e-5)


def _batch(seed=0, shape=(8, 5, 5, FEATURES)):
  return jax.random.normal(jax.random.key(seed), shape) * 3.0 + 1.5


def _random_params(seed=1):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return {
      'scale': jax.random.uniform(k1, (FEATURES,), minval=0.2, maxval=2.0),
      'bias': jax.random.normal(k2, (FEATURES,)),
      'alpha': jax.random.uniform(k3, (), minval=0.5, maxval=2.0),
  }


def _random_stats(seed=7):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {
      'mean': jax.random.normal(k1, (FEATURES,)),
      'var': jax.random.uniform(k2, (FEATURES,), minval=0.5, maxval=2.0),
  }


def _nnx_layer(params, stats, **fields):
  layer = NormalizedBatchNorm(FEATURES, **FIELDS, **fields, rngs=nnx.Rngs(0))
  for name, value in {**params, **stats}.items():
    getattr(layer, name)[...] = value
  return layer


class TestEqualsTheLinenLayer:

  @pytest.mark.parametrize('train', [True, False])
  def test_outputs_statistics_and_gradients(self, train):
    params, stats = _random_params(), _random_stats()
    x, target = _batch(), _batch(seed=2)
    linen = LinenNBN(use_running_average=not train, **FIELDS)

    def linen_loss(params):
      y, updates = linen.apply(
          {'params': params, 'batch_stats': stats}, x, mutable=['batch_stats']
      )
      return jnp.mean((y - target) ** 2), (y, updates['batch_stats'])

    (_, (y_linen, stats_linen)), g_linen = jax.jit(
        jax.value_and_grad(linen_loss, has_aux=True)
    )(params)

    layer = _nnx_layer(params, stats, use_running_average=not train)

    def nnx_loss(layer):
      y = layer(x)
      return jnp.mean((y - target) ** 2), y

    (_, y_nnx), g_nnx = nnx.jit(nnx.value_and_grad(nnx_loss, has_aux=True))(
        layer
    )
    np.testing.assert_allclose(y_nnx, y_linen, rtol=1e-6, atol=1e-6)
    for name in ('mean', 'var'):
      np.testing.assert_allclose(
          getattr(layer, name)[...], stats_linen[name], rtol=1e-6, atol=1e-6
      )
    for name in ('scale', 'bias', 'alpha'):
      np.testing.assert_allclose(
          g_nnx[name][...], g_linen[name], rtol=1e-6, atol=1e-6
      )

  @pytest.mark.parametrize(
      'use_scale, use_bias', [(True, False), (False, True), (False, False)]
  )
  def test_without_scale_or_bias(self, use_scale, use_bias):
    fields = dict(use_scale=use_scale, use_bias=use_bias)
    x = _batch()
    linen_vars = LinenNBN(**FIELDS, **fields).init(jax.random.key(0), x, True)
    params = {
        k: v + 0.3 for k, v in linen_vars.get('params', {}).items()
    }  # away from the init
    y_linen = LinenNBN(**FIELDS, **fields).apply(
        {'params': params, 'batch_stats': _random_stats()}, x, True
    )
    layer = _nnx_layer(params, _random_stats(), **fields)
    assert set(nnx.state(layer, nnx.Param).keys()) == set(params)
    np.testing.assert_allclose(
        layer(x, use_running_average=True), y_linen, rtol=1e-6, atol=1e-6
    )

  def test_initial_variables(self):
    x = _batch()
    for scale_init in (nnx.initializers.ones_init(), nn.initializers.zeros):
      linen_params = LinenNBN(scale_init=scale_init).init(
          jax.random.key(0), x, True
      )['params']
      layer = NormalizedBatchNorm(
          FEATURES, scale_init=scale_init, rngs=nnx.Rngs(0)
      )
      for name, value in linen_params.items():
        np.testing.assert_array_equal(getattr(layer, name)[...], value)


class TestModes:

  def test_eval_stops_the_statistics_from_moving(self):
    layer = _nnx_layer(_random_params(), _random_stats())
    x = _batch()
    layer(x)
    moved = nnx.clone(nnx.state(layer, nnx.BatchStat))
    assert not np.allclose(moved['mean'][...], _random_stats()['mean'])
    layer.eval()
    y_eval = layer(x)
    for name in ('mean', 'var'):
      np.testing.assert_array_equal(getattr(layer, name)[...], moved[name][...])
    layer.train()
    assert not np.allclose(layer(x), y_eval)

  def test_view_and_call_argument_select_running_statistics(self):
    layer = _nnx_layer(_random_params(), _random_stats())
    x = _batch()
    before = nnx.clone(nnx.state(layer, nnx.BatchStat))
    y_view = nnx.view(layer, use_running_average=True)(x)
    y_call = layer(x, use_running_average=True)
    np.testing.assert_array_equal(y_view, y_call)
    for name in ('mean', 'var'):
      np.testing.assert_array_equal(
          getattr(layer, name)[...], before[name][...]
      )

  def test_bfloat16_compute_with_float32_parameters(self):
    layer = NormalizedBatchNorm(FEATURES, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    y = layer(_batch().astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    assert {v.dtype for v in jax.tree.leaves(nnx.state(layer))} == {
        jnp.dtype('float32')
    }

  def test_metadata_reaches_the_parameters(self):
    layer = NormalizedBatchNorm(
        FEATURES,
        scale_metadata={'tag': 's'},
        bias_metadata={'tag': 'b'},
        alpha_metadata={'tag': 'a'},
        rngs=nnx.Rngs(0),
    )
    assert (layer.scale.tag, layer.bias.tag, layer.alpha.tag) == ('s', 'b', 'a')


class SharedAlphaNet(nnx.Module):
  """Conv -> NBN -> relu -> conv -> NBN -> mean -> linear; one alpha."""

  def __init__(self, rngs: nnx.Rngs, shared: bool = True):
    self.alpha = nnx.Param(jnp.ones(())) if shared else None
    norm = lambda: NormalizedBatchNorm(
        8, momentum=0.9, shared_alpha=shared, rngs=rngs
    )
    self.conv1 = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = norm()
    self.conv2 = nnx.Conv(8, 8, (3, 3), use_bias=False, rngs=rngs)
    self.bn2 = norm()
    self.fc = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    kwargs = {} if self.alpha is None else {'alpha': self.alpha}
    x = nnx.relu(self.bn1(self.conv1(x), **kwargs))
    x = nnx.relu(self.bn2(self.conv2(x), **kwargs))
    return self.fc(x.mean(axis=(1, 2)))


class TestSharedAlpha:

  def test_shared_alpha_receives_the_sum_of_the_layers_gradients(self):
    x = _batch(shape=(4, 6, 6, 3))
    labels = jnp.arange(4) % 4
    shared = SharedAlphaNet(nnx.Rngs(0))
    own = SharedAlphaNet(nnx.Rngs(0), shared=False)
    assert 'alpha' not in nnx.state(shared.bn1)

    def loss(model):
      return optax.softmax_cross_entropy_with_integer_labels(
          model(x), labels
      ).mean()

    g_shared = nnx.jit(nnx.grad(loss))(shared)
    g_own = nnx.jit(nnx.grad(loss))(own)
    expected = g_own['bn1']['alpha'][...] + g_own['bn2']['alpha'][...]
    assert abs(float(expected)) > 1e-4
    np.testing.assert_allclose(g_shared['alpha'][...], expected, rtol=1e-5)

  def test_a_shared_layer_refuses_to_run_without_alpha(self):
    layer = NormalizedBatchNorm(FEATURES, shared_alpha=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match='needs alpha='):
      layer(_batch())

  def test_trains_with_nnx_optimizer_under_nnx_jit(self):
    model = SharedAlphaNet(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param
    )
    x = _batch(shape=(8, 6, 6, 3))
    labels = jnp.arange(8) % 4

    @nnx.jit
    def step(model, optimizer):
      def loss(model):
        return optax.softmax_cross_entropy_with_integer_labels(
            model(x), labels
        ).mean()

      value, grads = nnx.value_and_grad(loss)(model)
      optimizer.update(model, grads)
      return value

    alpha0 = float(model.alpha[...])
    mean0 = np.asarray(model.bn1.mean[...])
    losses = [float(step(model, optimizer)) for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05
    assert float(model.alpha[...]) != alpha0
    assert not np.allclose(model.bn1.mean[...], mean0)
