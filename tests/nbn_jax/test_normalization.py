"""NormalizedBatchNorm: the contract of docs/method.md, one test per clause."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nbn_jax import NormalizedBatchNorm, effective_affine, safe_l2_norm

FEATURES = 6
NORM_EPS = 1e-6
BN_KWARGS = dict(momentum=0.9, epsilon=1e-5)


def _batch(seed=0, shape=(8, 5, 5, FEATURES)):
  return jax.random.normal(jax.random.key(seed), shape) * 3.0 + 1.5


def _raw_params(seed=1, alpha=1.0, bias_zero=False):
  """Raw NBN parameters: random scale and bias, scalar alpha."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  scale = jax.random.uniform(k1, (FEATURES,), minval=0.2, maxval=2.0)
  bias = (
      jnp.zeros(FEATURES) if bias_zero else jax.random.normal(k2, (FEATURES,))
  )
  return {'scale': scale, 'bias': bias, 'alpha': jnp.asarray(alpha)}


def _nbn_variables(params, mean=None, var=None):
  return {
      'params': params,
      'batch_stats': {
          'mean': jnp.zeros(FEATURES) if mean is None else mean,
          'var': jnp.ones(FEATURES) if var is None else var,
      },
  }


def _bn_variables(scale, bias, batch_stats):
  return {'params': {'scale': scale, 'bias': bias}, 'batch_stats': batch_stats}


def _apply(layer, variables, x, train):
  """Returns (output, new batch_stats) in train mode, (output, None) in eval."""
  if train:
    y, updates = layer.apply(
        variables, x, use_running_average=False, mutable=['batch_stats']
    )
    return y, updates['batch_stats']
  return layer.apply(variables, x, use_running_average=True), None


def _random_running_stats(seed=7):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return (
      jax.random.normal(k1, (FEATURES,)),
      jax.random.uniform(k2, (FEATURES,), minval=0.5, maxval=2.0),
  )


class TestSafeNorm:

  def test_value_is_the_l2_norm(self):
    assert safe_l2_norm(jnp.array([3.0, 4.0])) == pytest.approx(5.0)
    assert safe_l2_norm(jnp.array([[1.0, 2.0], [2.0, 4.0]])) == pytest.approx(
        5.0
    )

  def test_value_and_gradient_are_zero_at_zero(self):
    value, grad = jax.value_and_grad(safe_l2_norm)(jnp.zeros(4))
    assert value == 0.0
    np.testing.assert_array_equal(grad, np.zeros(4))

  def test_gradient_away_from_zero_is_the_unit_vector(self):
    x = jnp.array([3.0, 0.0, -4.0])
    np.testing.assert_allclose(jax.grad(safe_l2_norm)(x), x / 5.0, rtol=1e-6)


class TestVariables:

  def test_parameters_and_statistics_follow_nn_batchnorm(self):
    variables = NormalizedBatchNorm(use_running_average=False).init(
        jax.random.key(0), _batch()
    )
    shapes = jax.tree.map(jnp.shape, variables)
    assert shapes == {
        'params': {'scale': (FEATURES,), 'bias': (FEATURES,), 'alpha': ()},
        'batch_stats': {'mean': (FEATURES,), 'var': (FEATURES,)},
    }
    params, stats = variables['params'], variables['batch_stats']
    np.testing.assert_array_equal(params['scale'], np.ones(FEATURES))
    np.testing.assert_array_equal(params['bias'], np.zeros(FEATURES))
    assert params['alpha'] == 1.0
    np.testing.assert_array_equal(stats['mean'], np.zeros(FEATURES))
    np.testing.assert_array_equal(stats['var'], np.ones(FEATURES))

  def test_defaults_are_those_of_nn_batchnorm(self):
    shared = [
        'use_running_average',
        'axis',
        'momentum',
        'epsilon',
        'dtype',
        'param_dtype',
        'axis_name',
        'axis_index_groups',
        'use_fast_variance',
        'force_float32_reductions',
    ]
    nbn, bn = NormalizedBatchNorm(), nn.BatchNorm()
    assert {f: getattr(nbn, f) for f in shared} == {
        f: getattr(bn, f) for f in shared
    }
    assert nbn.norm_epsilon == NORM_EPS

  def test_at_init_the_effective_scale_is_one_over_sqrt_channels(self):
    x = _batch()
    layer = NormalizedBatchNorm(**BN_KWARGS)
    variables = layer.init(jax.random.key(0), x, use_running_average=False)
    y, _ = _apply(layer, variables, x, train=True)
    standardised = (x - x.mean((0, 1, 2))) / jnp.sqrt(x.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(
        y, standardised / (np.sqrt(FEATURES) + NORM_EPS), atol=1e-5
    )

  def test_a_passed_alpha_replaces_the_parameter(self):
    layer = NormalizedBatchNorm(use_running_average=True)
    variables = layer.init(jax.random.key(0), _batch(), alpha=jnp.array(2.0))
    assert 'alpha' not in variables['params']

  def test_two_layers_share_one_alpha(self):

    class TwoLayers(nn.Module):

      @nn.compact
      def __call__(self, x):
        alpha = self.param('alpha', nn.initializers.ones, ())
        y = NormalizedBatchNorm(use_running_average=False)(x, alpha=alpha)
        return NormalizedBatchNorm(use_running_average=False)(y, alpha=alpha)

    variables = TwoLayers().init(jax.random.key(0), _batch())
    alphas = [
        path
        for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]
        if 'alpha' in jax.tree_util.keystr(path)
    ]
    assert len(alphas) == 1


class TestContract:
  """The numbered clauses of "What a faithful port must satisfy"."""

  def test_1_effective_norm_is_alpha_norm_over_norm_plus_eps(self):
    w, b = jnp.array([3.0, 4.0]), jnp.array([0.0, 0.5])
    w_eff, b_eff = effective_affine(w, b, jnp.array(2.0))
    # Hand-computed: ||w|| = 5, ||b|| = 0.5.
    assert float(jnp.linalg.norm(w_eff)) == pytest.approx(2 * 5 / (5 + 1e-6))
    assert float(jnp.linalg.norm(b_eff)) == pytest.approx(
        2 * 0.5 / (0.5 + 1e-6)
    )
    np.testing.assert_allclose(w_eff, [1.2, 1.6], rtol=1e-6)

  @pytest.mark.parametrize('train', [True, False])
  @pytest.mark.parametrize('name', ['scale', 'bias'])
  @pytest.mark.parametrize('c', [0.5, 3.0, 250.0])
  def test_2_output_is_invariant_to_rescaling_raw_vectors(self, train, name, c):
    """Exact up to norm_epsilon / ||c v||, below 1e-6 for these c."""
    layer = NormalizedBatchNorm(**BN_KWARGS)
    params = _raw_params()
    x, stats = _batch(), _random_running_stats()
    y, _ = _apply(layer, _nbn_variables(params, *stats), x, train)
    params[name] = params[name] * c
    y_scaled, _ = _apply(layer, _nbn_variables(params, *stats), x, train)
    np.testing.assert_allclose(y_scaled, y, rtol=1e-5, atol=1e-5)

  @pytest.mark.parametrize('train', [True, False])
  def test_3_equals_batchnorm_with_the_effective_affine(self, train):
    params = _raw_params(alpha=0.7)
    mean, var = _random_running_stats()
    x = _batch()
    y, nbn_stats = _apply(
        NormalizedBatchNorm(**BN_KWARGS),
        _nbn_variables(params, mean, var),
        x,
        train,
    )
    w_eff, b_eff = effective_affine(
        params['scale'], params['bias'], params['alpha']
    )
    y_bn, bn_stats = _apply(
        nn.BatchNorm(**BN_KWARGS),
        _bn_variables(w_eff, b_eff, {'mean': mean, 'var': var}),
        x,
        train,
    )
    np.testing.assert_allclose(y, y_bn, rtol=1e-6, atol=1e-6)
    if train:
      jax.tree.map(np.testing.assert_array_equal, nbn_stats, bn_stats)

  @pytest.mark.parametrize('train', [True, False])
  def test_3_equals_batchnorm_with_raw_affine_only_in_degenerate_case(
      self, train
  ):
    """||scale|| = ||bias|| = alpha: NBN and nn.BatchNorm agree on (w, b)."""
    alpha = 1.7
    params = _raw_params()
    for name in ('scale', 'bias'):
      params[name] = params[name] * alpha / jnp.linalg.norm(params[name])
    x, (mean, var) = _batch(), _random_running_stats()
    bn = nn.BatchNorm(**BN_KWARGS)
    bn_vars = _bn_variables(
        params['scale'], params['bias'], {'mean': mean, 'var': var}
    )
    y_bn, bn_stats = _apply(bn, bn_vars, x, train)

    nbn = NormalizedBatchNorm(**BN_KWARGS)
    params['alpha'] = jnp.asarray(alpha)
    y, nbn_stats = _apply(nbn, _nbn_variables(params, mean, var), x, train)
    np.testing.assert_allclose(y, y_bn, rtol=2e-6, atol=2e-6)
    if train:
      jax.tree.map(np.testing.assert_array_equal, nbn_stats, bn_stats)

    params['alpha'] = jnp.asarray(alpha * 1.5)  # now ||scale|| != alpha
    y_off, _ = _apply(nbn, _nbn_variables(params, mean, var), x, train)
    assert np.abs(np.asarray(y_off - y_bn)).max() > 0.1

  def test_4_alpha_gradient_is_the_projection_of_effective_gradients(self):
    """d/d alpha = sum over layers of w/||w|| . g_w_eff + b/||b|| . g_b_eff.

    The effective-parameter gradients come from an independent path: the same
    two-layer network built from nn.BatchNorm with (w_eff, b_eff).
    """
    x = _batch()
    target = _batch(seed=5)
    p1, p2 = _raw_params(seed=1), _raw_params(seed=2)
    alpha = jnp.asarray(0.8)

    def nbn_loss(alpha, p1, p2):
      layer = NormalizedBatchNorm(use_running_average=False)
      y = layer.apply({'params': p1}, x, alpha=alpha, mutable=['batch_stats'])[
          0
      ]
      y = jnp.tanh(y)
      y = layer.apply({'params': p2}, y, alpha=alpha, mutable=['batch_stats'])[
          0
      ]
      return jnp.mean((y - target) ** 2)

    def bn_loss(eff1, eff2):
      layer = nn.BatchNorm(use_running_average=False)
      y = layer.apply({'params': eff1}, x, mutable=['batch_stats'])[0]
      y = jnp.tanh(y)
      y = layer.apply({'params': eff2}, y, mutable=['batch_stats'])[0]
      return jnp.mean((y - target) ** 2)

    def effective(p):
      w, b = effective_affine(p['scale'], p['bias'], alpha)
      return {'scale': w, 'bias': b}

    g_alpha = jax.grad(nbn_loss)(alpha, p1, p2)
    g_eff1, g_eff2 = jax.grad(bn_loss, argnums=(0, 1))(
        effective(p1), effective(p2)
    )
    expected = sum(
        jnp.dot(p[n] / (jnp.linalg.norm(p[n]) + NORM_EPS), g[n])
        for p, g in ((p1, g_eff1), (p2, g_eff2))
        for n in ('scale', 'bias')
    )
    assert abs(float(g_alpha)) > 1e-3  # non-zero from the first step
    assert float(g_alpha) == pytest.approx(float(expected), rel=1e-4)

  def test_4_alpha_gradient_matches_finite_differences(self):
    with jax.enable_x64(True):
      x = _batch().astype(jnp.float64)
      params = jax.tree.map(lambda p: p.astype(jnp.float64), _raw_params())
      layer = NormalizedBatchNorm(
          use_running_average=False, param_dtype=jnp.float64
      )

      def loss(alpha):
        y = layer.apply(
            {'params': {**params, 'alpha': alpha}}, x, mutable=['batch_stats']
        )[0]
        return jnp.sum(jnp.sin(y))

      alpha, h = jnp.float64(1.3), 1e-6
      numeric = (loss(alpha + h) - loss(alpha - h)) / (2 * h)
      assert float(jax.grad(loss)(alpha)) == pytest.approx(
          float(numeric), rel=1e-7
      )

  @pytest.mark.parametrize('alpha', [1.0, 0.25])
  def test_5_zero_bias_gets_one_over_eps_times_effective_gradient(self, alpha):
    """PyTorch parity at step 0: raw-bias grad = alpha / 1e-6 * g_b_eff."""
    x, target = _batch(), _batch(seed=9)
    params = _raw_params(alpha=alpha, bias_zero=True)

    def nbn_loss(params):
      y = NormalizedBatchNorm(use_running_average=False).apply(
          {'params': params}, x, mutable=['batch_stats']
      )[0]
      return jnp.mean((y - target) ** 2)

    def bn_loss(bias_eff):
      w_eff, _ = effective_affine(params['scale'], params['bias'], alpha)
      y = nn.BatchNorm(use_running_average=False).apply(
          {'params': {'scale': w_eff, 'bias': bias_eff}},
          x,
          mutable=['batch_stats'],
      )[0]
      return jnp.mean((y - target) ** 2)

    loss, grads = jax.value_and_grad(nbn_loss)(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves((loss, grads)))
    g_bias_eff = jax.grad(bn_loss)(jnp.zeros(FEATURES))
    assert np.abs(g_bias_eff).min() > 0
    np.testing.assert_allclose(
        grads['bias'], alpha / NORM_EPS * g_bias_eff, rtol=1e-5
    )

  def test_6_running_statistics_equal_batchnorm_after_a_train_step(self):
    x = _batch()
    nbn_vars = NormalizedBatchNorm(**BN_KWARGS).init(
        jax.random.key(0), x, use_running_average=False
    )
    bn_vars = nn.BatchNorm(**BN_KWARGS).init(
        jax.random.key(0), x, use_running_average=False
    )
    _, nbn_stats = _apply(NormalizedBatchNorm(**BN_KWARGS), nbn_vars, x, True)
    _, bn_stats = _apply(nn.BatchNorm(**BN_KWARGS), bn_vars, x, True)
    jax.tree.map(np.testing.assert_array_equal, nbn_stats, bn_stats)
    # Hand-computed: 0.9 * init + 0.1 * biased batch statistic.
    np.testing.assert_allclose(
        nbn_stats['mean'], 0.1 * x.mean((0, 1, 2)), rtol=1e-5
    )
    np.testing.assert_allclose(
        nbn_stats['var'], 0.9 + 0.1 * x.var((0, 1, 2)), rtol=1e-5
    )


class TestOptions:

  def test_feature_axis_one_equals_channels_last(self):
    x = _batch()
    params = _raw_params()
    y_last, stats_last = _apply(
        NormalizedBatchNorm(), _nbn_variables(params), x, True
    )
    y_first, stats_first = _apply(
        NormalizedBatchNorm(axis=1),
        _nbn_variables(params),
        jnp.moveaxis(x, -1, 1),
        True,
    )
    np.testing.assert_allclose(jnp.moveaxis(y_first, 1, -1), y_last, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
        stats_first,
        stats_last,
    )

  def test_mask_restricts_statistics_like_batchnorm(self):
    x = _batch()
    mask = jnp.arange(x.shape[0])[:, None, None, None] < 5
    params = _raw_params()
    w_eff, b_eff = effective_affine(params['scale'], params['bias'], 1.0)
    y, updates = NormalizedBatchNorm(use_running_average=False).apply(
        _nbn_variables(params), x, mask=mask, mutable=['batch_stats']
    )
    y_bn, bn_updates = nn.BatchNorm(use_running_average=False).apply(
        _bn_variables(w_eff, b_eff, _nbn_variables(params)['batch_stats']),
        x,
        mask=mask,
        mutable=['batch_stats'],
    )
    np.testing.assert_allclose(y, y_bn, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, updates, bn_updates)

  def test_bfloat16_compute_keeps_float32_parameters_and_statistics(self):
    x = _batch().astype(jnp.bfloat16)
    layer = NormalizedBatchNorm(dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x, use_running_average=False)
    y, stats = _apply(layer, variables, x, True)
    assert y.dtype == jnp.bfloat16
    assert {v.dtype for v in jax.tree.leaves(variables)} == {
        jnp.dtype('float32')
    }
    assert {v.dtype for v in jax.tree.leaves(stats)} == {jnp.dtype('float32')}
    y32, _ = _apply(
        NormalizedBatchNorm(), variables, x.astype(jnp.float32), True
    )
    np.testing.assert_allclose(y.astype(jnp.float32), y32, atol=0.02)


class TestFlaxBatchNormFields:
  """Every field of nn.BatchNorm, with NBN semantics (see the docstring)."""

  def test_every_nn_batchnorm_field_exists_with_its_default(self):
    bn_fields = {
        f.name: getattr(nn.BatchNorm(), f.name)
        for f in dataclasses.fields(nn.BatchNorm)
        if f.name not in ('parent', 'name')
    }
    nbn = NormalizedBatchNorm()
    assert {f: getattr(nbn, f) for f in bn_fields} == bn_fields

  @pytest.mark.parametrize('train', [True, False])
  @pytest.mark.parametrize(
      'use_scale, use_bias',
      [(True, True), (True, False), (False, True), (False, False)],
  )
  def test_equals_batchnorm_in_the_degenerate_case(
      self, use_scale, use_bias, train
  ):
    """||scale|| = ||bias|| = alpha: same outputs and statistics as BN."""
    alpha = 1.7
    raw = _raw_params()
    for name in ('scale', 'bias'):
      raw[name] = raw[name] * alpha / jnp.linalg.norm(raw[name])
    fields = dict(use_scale=use_scale, use_bias=use_bias, **BN_KWARGS)
    kept = {
        n: raw[n]
        for n, used in (('scale', use_scale), ('bias', use_bias))
        if used
    }
    x, (mean, var) = _batch(), _random_running_stats()
    stats = {'mean': mean, 'var': var}
    y_bn, bn_stats = _apply(
        nn.BatchNorm(**fields),
        {'params': kept, 'batch_stats': stats},
        x,
        train,
    )
    nbn_params = {**kept, 'alpha': jnp.asarray(alpha)} if kept else {}
    y, nbn_stats = _apply(
        NormalizedBatchNorm(**fields),
        {'params': nbn_params, 'batch_stats': stats},
        x,
        train,
    )
    np.testing.assert_allclose(y, y_bn, rtol=2e-6, atol=2e-6)
    if train:
      jax.tree.map(np.testing.assert_array_equal, nbn_stats, bn_stats)

  @pytest.mark.parametrize(
      'use_scale, use_bias, names',
      [
          (True, True, {'scale', 'bias', 'alpha'}),
          (True, False, {'scale', 'alpha'}),
          (False, True, {'bias', 'alpha'}),
          (False, False, set()),
      ],
  )
  def test_use_scale_and_use_bias_decide_the_parameters(
      self, use_scale, use_bias, names
  ):
    layer = NormalizedBatchNorm(use_scale=use_scale, use_bias=use_bias)
    variables = layer.init(jax.random.key(0), _batch(), True)
    assert set(variables.get('params', {})) == names

  def test_without_scale_alpha_scales_only_the_normalised_bias(self):
    x, params = _batch(), _raw_params(alpha=0.6)
    del params['scale']
    y = NormalizedBatchNorm(use_scale=False, use_running_average=True).apply(
        {'params': params, 'batch_stats': _nbn_variables({})['batch_stats']},
        x,
    )
    bias_eff = 0.6 * params['bias'] / jnp.linalg.norm(params['bias'])
    standardised = x / jnp.sqrt(1 + 1e-5)
    np.testing.assert_allclose(y, standardised + bias_eff, atol=1e-5)

  def test_without_scale_alpha_gradient_is_the_bias_projection(self):
    """Clause 4 with no scale: d/d alpha = b / ||b|| . g_b_eff."""
    x, target = _batch(), _batch(seed=3)
    params = _raw_params(alpha=0.6)
    del params['scale']
    layer = NormalizedBatchNorm(use_scale=False, use_running_average=False)

    def loss(params):
      y = layer.apply({'params': params}, x, mutable=['batch_stats'])[0]
      return jnp.mean((y - target) ** 2)

    def bn_loss(bias_eff):
      y = nn.BatchNorm(use_scale=False, use_running_average=False).apply(
          {'params': {'bias': bias_eff}}, x, mutable=['batch_stats']
      )[0]
      return jnp.mean((y - target) ** 2)

    bias = params['bias']
    g_eff = jax.grad(bn_loss)(0.6 * bias / (jnp.linalg.norm(bias) + NORM_EPS))
    expected = jnp.dot(bias / (jnp.linalg.norm(bias) + NORM_EPS), g_eff)
    assert float(jax.grad(loss)(params)['alpha']) == pytest.approx(
        float(expected), rel=1e-4
    )

  def test_scale_init_sets_the_initial_direction(self):
    init = lambda key, shape, dtype: jnp.arange(1.0, shape[0] + 1, dtype=dtype)
    layer = NormalizedBatchNorm(scale_init=init)
    params = layer.init(jax.random.key(0), _batch(), True)['params']
    np.testing.assert_array_equal(params['scale'], np.arange(1.0, 7.0))
    assert params['alpha'] == 1.0

  def test_bias_init_sets_a_non_singular_initial_direction(self):
    layer = NormalizedBatchNorm(bias_init=nn.initializers.ones)
    x, target = _batch(), _batch(seed=4)
    variables = layer.init(jax.random.key(0), x, True)
    bias = variables['params']['bias']
    np.testing.assert_array_equal(bias, np.ones(FEATURES))

    def loss(params):
      y = layer.apply({'params': params}, x, False, mutable=['batch_stats'])[0]
      return jnp.mean((y - target) ** 2)

    grads = jax.grad(loss)(variables['params'])
    # The unit bias direction has no 1/norm_epsilon blow-up: the gradient is
    # the effective one projected off the direction, times alpha / ||b||.
    assert np.abs(grads['bias']).max() < 1.0
    np.testing.assert_allclose(grads['bias'].sum(), 0.0, atol=1e-6)

  def test_zero_scale_init_starts_at_zero_output_with_alpha_zero(self):
    layer = NormalizedBatchNorm(scale_init=nn.initializers.zeros, **BN_KWARGS)
    x = _batch()
    variables = layer.init(jax.random.key(0), x, use_running_average=False)
    params = variables['params']
    np.testing.assert_array_equal(params['scale'], np.ones(FEATURES))
    assert params['alpha'] == 0.0
    y, _ = _apply(layer, variables, x, train=True)
    np.testing.assert_array_equal(y, np.zeros_like(y))

  def test_zero_scale_init_grows_smoothly_from_alpha(self):
    """Only alpha moves at step 0; one SGD step gives a small branch.

    A raw zero scale would instead jump to full length (||scale_eff|| =
    alpha = 1) after one step; that is what the zero start avoids.
    """
    layer = NormalizedBatchNorm(scale_init=nn.initializers.zeros, **BN_KWARGS)
    x, target = _batch(), _batch(seed=6)
    params = layer.init(jax.random.key(0), x, True)['params']

    def loss(params):
      y = layer.apply({'params': params}, x, False, mutable=['batch_stats'])[0]
      return jnp.mean((y - target) ** 2)

    grads = jax.grad(loss)(params)
    assert abs(float(grads['alpha'])) > 1e-3
    np.testing.assert_array_equal(grads['scale'], np.zeros(FEATURES))
    np.testing.assert_array_equal(grads['bias'], np.zeros(FEATURES))
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    scale_eff, _ = effective_affine(
        stepped['scale'], stepped['bias'], stepped['alpha']
    )
    assert 0 < float(jnp.linalg.norm(scale_eff)) < 0.1

    destructive = {**params, 'scale': jnp.zeros(FEATURES), 'alpha': 1.0}
    stepped = jax.tree.map(
        lambda p, g: p - 0.1 * g, destructive, jax.grad(loss)(destructive)
    )
    scale_eff, _ = effective_affine(
        stepped['scale'], stepped['bias'], stepped['alpha']
    )
    assert float(jnp.linalg.norm(scale_eff)) == pytest.approx(1.0, rel=1e-3)

  def test_zero_scale_init_with_a_shared_alpha_starts_at_ones(self):
    layer = NormalizedBatchNorm(scale_init=nn.initializers.zeros)
    params = layer.init(
        jax.random.key(0), _batch(), True, alpha=jnp.asarray(1.0)
    )['params']
    assert set(params) == {'scale', 'bias'}
    np.testing.assert_array_equal(params['scale'], np.ones(FEATURES))

  def test_param_dtype_applies_to_every_parameter(self):
    with jax.enable_x64(True):
      layer = NormalizedBatchNorm(param_dtype=jnp.float64)
      params = layer.init(jax.random.key(0), _batch(), True)['params']
      assert {p.dtype for p in jax.tree.leaves(params)} == {
          jnp.dtype('float64')
      }
