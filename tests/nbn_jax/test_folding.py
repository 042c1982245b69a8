"""fold_nbn: a trained NBN model's variables -> the same model with plain BN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nbn_jax import models
from nbn_jax.folding import fold_nbn
from nbn_jax.models.common import NBNPlacement


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
