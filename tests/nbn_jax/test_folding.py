"""fold_nbn: a trained NBN model's variables -> the same model with plain BN;
unfold_bn: a plain-BN model's variables -> its NBN version, the same function.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nbn_jax import models
from nbn_jax.folding import exact_alpha, fold_nbn, unfold_bn
from nbn_jax.models.common import NBNPlacement
from nbn_jax.normalization import effective_affine


def _trained_like(model, x):
  """Variables far from init: random NBN vectors and alpha, moved statistics.

  Random scale/bias/alpha at the NBN sites (so ||scale|| != alpha), then two
  train-mode passes to move every running statistic.
  """
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      x
  )
  keys = iter(jax.random.split(jax.random.key(1), 1000))

  def perturb(path, leaf):
    names = [k.key for k in path]
    if names[-1] in ('scale', 'bias'):
      return leaf + 0.5 * jax.random.normal(next(keys), leaf.shape)
    if names[-1] in ('alpha', 'nbn_alpha'):
      return jnp.asarray(1.7 + 0.1 * len(names), leaf.dtype)
    return leaf

  params = jax.tree_util.tree_map_with_path(perturb, variables['params'])
  variables = {**variables, 'params': params}
  train = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1]
  )
  for seed in (2, 3):
    variables = {**variables, **train(variables, x + seed)}
  return variables


def _eval(model, variables, x):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


def _assert_folds(model, image_shape):
  x = jax.random.normal(jax.random.key(4), image_shape)
  variables = _trained_like(model, x)
  folded = fold_nbn(model, variables, x, train=False)
  bn_model = model.clone(norm='bn')
  expected = jax.eval_shape(
      lambda x: bn_model.init(jax.random.key(0), x, train=False), x
  )
  assert jax.tree.structure(folded) == jax.tree.structure(expected)
  # Every output: the logits, and an ensemble's experts' logits too.
  outputs = _eval(model, variables, x)
  folded_outputs = _eval(bn_model, folded, x)
  assert jax.tree.structure(folded_outputs) == jax.tree.structure(outputs)
  for logits, folded_logits in zip(
      jax.tree.leaves(outputs), jax.tree.leaves(folded_outputs)
  ):
    scale = float(jnp.abs(logits).max())
    np.testing.assert_allclose(folded_logits, logits, atol=1e-5 * scale, rtol=0)
  # The fold is not a no-op: the raw NBN vectors in BN give other logits
  # (the alphas left in are not read by the BN model).
  logits = jax.tree.leaves(outputs)[0]
  raw_logits = jax.tree.leaves(_eval(bn_model, variables, x))[0]
  scale = float(jnp.abs(logits).max())
  assert not np.allclose(raw_logits, logits, atol=1e-3 * scale)


class TestFold:

  @pytest.mark.slow
  def test_resnet32(self):
    _assert_folds(models.ResNet32(10), (2, 32, 32, 3))

  @pytest.mark.slow
  def test_resnet50(self):
    _assert_folds(models.ResNet50(10), (2, 32, 32, 3))

  @pytest.mark.slow
  @pytest.mark.parametrize(
      'model',
      [
          pytest.param(models.RIDEResNet8(10), id='resnet8_cosine'),
          pytest.param(
              models.RIDEResNet14(10, logit_norm=True), id='resnet14_logit_bn'
          ),
      ],
  )
  def test_ride_ensembles_one_alpha_per_expert(self, model):
    _assert_folds(model, (4, 32, 32, 3))

  @pytest.mark.slow
  def test_per_layer_alphas_and_two_stages(self):
    placement = NBNPlacement(
        stages=(1, 2), block_norms=('bn1', 'bn2'), shared_alpha=False
    )
    model = models.ResNet8(10, nbn_placement=placement)
    x = jax.random.normal(jax.random.key(4), (2, 16, 16, 3))
    variables = _trained_like(model, x)
    folded = fold_nbn(model, variables, x, train=False)
    assert not any(
        'alpha' in jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(folded)[0]
    )
    np.testing.assert_allclose(
        _eval(model.clone(norm='bn'), folded, x),
        _eval(model, variables, x),
        rtol=1e-5,
        atol=1e-5,
    )


def _pretrained_like(bn_model, x):
  """Variables of a plain-BN model far from init: scales and biases of
  different lengths in every layer (the shortcut BNs' biases zero), moved
  statistics."""
  variables = jax.jit(
      lambda x: bn_model.init(jax.random.key(0), x, train=False)
  )(x)
  keys = iter(jax.random.split(jax.random.key(1), 1000))

  def perturb(path, leaf):
    name, where = path[-1].key, jax.tree_util.keystr(path)
    if name not in ('scale', 'bias') or 'fc' in where:
      return leaf
    if name == 'bias' and 'downsample_bn' in where:
      return jnp.zeros_like(leaf)  # no direction to keep
    length = jax.random.uniform(next(keys), (), minval=0.1, maxval=3.0)
    noise = jax.random.normal(next(keys), leaf.shape)
    return length * (0.5 + noise) / jnp.sqrt(leaf.size)

  params = jax.tree_util.tree_map_with_path(perturb, variables['params'])
  variables = {**variables, 'params': params}
  train = jax.jit(
      lambda v, x: bn_model.apply(v, x, train=True, mutable=['batch_stats'])[1]
  )
  for seed in (2, 3):
    variables = {**variables, **train(variables, x + seed)}
  return variables


def _outputs(model, variables, x, train):
  """Logits (and an ensemble's experts' logits): eval, or train-mode ones."""
  apply = lambda v, x: model.apply(
      v, x, train=train, mutable=['batch_stats'] if train else False
  )
  outputs = jax.jit(apply)(variables, x)
  return jax.tree.leaves(outputs[0] if train else outputs)


def _assert_unfolds(model, image_shape):
  """The unfolded NBN model computes the plain-BN model's outputs (eval and
  train mode), with raw vectors parallel to the BN ones."""
  x = jax.random.normal(jax.random.key(4), image_shape)
  bn_model = model.clone(norm='bn')
  bn_variables = _pretrained_like(bn_model, x)
  variables = unfold_bn(model, bn_variables, x, train=False)
  for train in (False, True):
    for ours, theirs in zip(
        _outputs(model, variables, x, train),
        _outputs(bn_model, bn_variables, x, train),
        strict=True,
    ):
      scale = float(jnp.abs(theirs).max())
      np.testing.assert_allclose(ours, theirs, atol=1e-5 * scale, rtol=0)
  # Not the BN vectors as they are: the same model with the BN scales and
  # biases as raw NBN vectors (alpha from the unfold) gives other logits.
  as_is = jax.tree_util.tree_map_with_path(
      lambda path, leaf: _nested(bn_variables, path, leaf), variables
  )
  scale = float(jnp.abs(_outputs(bn_model, bn_variables, x, False)[0]).max())
  assert not np.allclose(
      _outputs(model, as_is, x, False)[0],
      _outputs(bn_model, bn_variables, x, False)[0],
      atol=1e-3 * scale,
  )
  return bn_variables, variables


def _nested(tree, path, default):
  """The leaf of `tree` at `path`, or `default` where it has none."""
  for key in path:
    if key.key not in tree:
      return default
    tree = tree[key.key]
  return tree


class TestUnfold:

  def test_resnet8_shared_alpha(self):
    model = models.ResNet8(10, shortcut='B')  # NBN: bn2 and the shortcut BN
    bn_variables, variables = _assert_unfolds(model, (4, 16, 16, 3))
    block, bn_block = (
        v['params']['layer3_0'] for v in (variables, bn_variables)
    )
    pairs = [
        (block[layer][name], bn_block[layer][name])
        for layer in ('bn2', 'downsample_bn')
        for name in ('scale', 'bias')
    ]
    norms = [float(jnp.linalg.norm(bn)) for _, bn in pairs]
    # One alpha, just above the longest BN vector of the placement.
    alpha = float(variables['params']['nbn_alpha'])
    assert max(norms) < alpha <= max(norms) + 2e-6
    for raw, bn in pairs:  # raw vectors point the BN ones' way
      if float(jnp.linalg.norm(bn)) > 0:
        cosine = jnp.dot(raw, bn) / (jnp.linalg.norm(raw) * jnp.linalg.norm(bn))
        assert float(cosine) == pytest.approx(1.0, abs=1e-5)

  def test_per_layer_alphas_in_two_stages(self):
    placement = NBNPlacement(
        stages=(1, 2), block_norms=('bn1', 'bn2'), shared_alpha=False
    )
    model = models.ResNet8(10, nbn_placement=placement)
    bn_variables, variables = _assert_unfolds(model, (4, 16, 16, 3))
    layer = variables['params']['layer2_0']['bn1']
    bn_layer = bn_variables['params']['layer2_0']['bn1']
    # Its own alpha, above its own two vectors only: the longer one keeps
    # about its length.
    norms = [float(jnp.linalg.norm(bn_layer[k])) for k in ('scale', 'bias')]
    assert max(norms) < float(layer['alpha']) <= max(norms) + 2e-6
    longer = max(('scale', 'bias'), key=lambda k: jnp.linalg.norm(bn_layer[k]))
    assert float(jnp.linalg.norm(layer[longer])) == pytest.approx(
        max(norms), rel=0.7
    )

  @pytest.mark.slow
  def test_ride_ensemble_one_alpha_per_expert(self):
    _assert_unfolds(models.RIDEResNet8(10), (4, 16, 16, 3))

  @pytest.mark.slow
  def test_one_sgd_step_keeps_only_the_longest_vectors_direction(self):
    """What the docstring warns of: the other raw vectors are ~1e-6 long, so
    even a 1e-5 step of plain SGD turns them to their gradient's direction,
    where the same step leaves the plain-BN network's vectors in place."""
    model = models.ResNet8(10, shortcut='B')  # NBN: bn2 and the shortcut BN
    x = jax.random.normal(jax.random.key(4), (8, 16, 16, 3))
    labels = jnp.arange(8) % 10
    bn_model = model.clone(norm='bn')
    bn_variables = _pretrained_like(bn_model, x)
    variables = unfold_bn(model, bn_variables, x, train=False)

    @functools.partial(jax.jit, static_argnums=0)
    def sgd_step(model, variables):
      def loss(params):
        logits, _ = model.apply(
            {**variables, 'params': params},
            x,
            train=True,
            mutable=['batch_stats'],
        )
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, labels
        ).mean()

      grads = jax.grad(loss)(variables['params'])
      return jax.tree.map(lambda p, g: p - 1e-5 * g, variables['params'], grads)

    cosine = lambda a, b: float(
        jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    )
    bn_after, after = sgd_step(bn_model, bn_variables), sgd_step(
        model, variables
    )
    bn_block = bn_variables['params']['layer3_0']
    kept = {}
    for layer in ('bn2', 'downsample_bn'):
      raw = after['layer3_0'][layer]
      effective = effective_affine(
          raw['scale'], raw['bias'], after['nbn_alpha']
      )
      for name, vector in zip(('scale', 'bias'), effective):
        before = bn_block[layer][name]
        if float(jnp.linalg.norm(before)) == 0:
          continue  # a zero bias has no direction
        assert cosine(bn_after['layer3_0'][layer][name], before) > 0.999
        kept[float(jnp.linalg.norm(before))] = cosine(vector, before)
    longest = max(kept)
    assert kept.pop(longest) > 0.999
    assert len(kept) == 2 and all(abs(c) < 0.5 for c in kept.values())

  def test_folding_the_unfolded_model_gives_the_bn_variables_back(self):
    model = models.ResNet8(10)
    x = jax.random.normal(jax.random.key(4), (2, 16, 16, 3))
    bn_variables = _pretrained_like(model.clone(norm='bn'), x)
    folded = fold_nbn(
        model, unfold_bn(model, bn_variables, x, train=False), x, train=False
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        folded,
        bn_variables,
    )

  def test_alpha_is_strictly_above_a_norm_the_sum_would_round_to(self):
    # float32 spacing at 32 is 3.8e-6: 32 + 1e-6 rounds back to 32.
    assert float(jnp.float32(32.0) + jnp.float32(1e-6)) == 32.0
    alpha = exact_alpha(jnp.array([1.0, 32.0]), 1e-6)
    assert alpha.dtype == jnp.float32 and float(alpha) > 32.0
    assert float(exact_alpha(jnp.array([0.5]), 1e-6)) == pytest.approx(
        0.5 + 1e-6, abs=1e-7
    )

  def test_variables_of_another_network_are_refused(self):
    model = models.ResNet8(10)
    x = jnp.zeros((1, 16, 16, 3))
    other = models.ResNet8(5, norm='bn').init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match=r'plain-BN version \(model.clone'):
      unfold_bn(model, other, x, train=False)
    nbn_variables = model.init(jax.random.key(0), x, train=False)
    del nbn_variables['params']['layer3_0']
    with pytest.raises(ValueError, match='plain-BN version'):
      unfold_bn(model, nbn_variables, x, train=False)
