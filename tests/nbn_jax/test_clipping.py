"""Clipping by global norm outside NBN's raw vectors (the 1e6 first step)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nbn_jax import models
from nbn_jax.clipping import (
    clip_by_global_norm_outside_nbn,
    global_norm_outside_nbn,
    nbn_raw_vector_mask,
)
from nbn_jax.inspection import nbn_layer_paths

IMAGES = (8, 16, 16, 3)


def _first_gradients(model):
  """Cross-entropy gradients at init on a fixed batch."""
  x = jax.random.normal(jax.random.key(0), IMAGES)
  labels = jnp.arange(IMAGES[0]) % 10
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(
      x
  )

  @jax.jit
  def grads(params):
    def loss(params):
      logits, _ = model.apply(
          {**variables, 'params': params}, x, mutable=['batch_stats']
      )
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels
      ).mean()

    return jax.grad(loss)(params)

  return variables['params'], grads(variables['params'])


@pytest.fixture(scope='module')
def nbn_and_bn_gradients():
  return (
      _first_gradients(models.ResNet8(10)),
      _first_gradients(models.ResNet8(10, norm='bn')),
  )


def test_mask_marks_exactly_the_raw_nbn_vectors():
  model = models.ResNet32(10)
  paths = nbn_layer_paths(model, (1, 32, 32, 3))
  params = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
  )['params']
  marked = {
      jax.tree_util.keystr(path)
      for path, m in jax.tree_util.tree_flatten_with_path(
          nbn_raw_vector_mask(params, paths)
      )[0]
      if m
  }
  assert marked == {
      f"['layer3_{b}']['bn2']['{v}']"
      for b in range(5)
      for v in ('scale', 'bias')
  }


@pytest.mark.slow
def test_the_first_global_norm_is_the_nbn_bias_and_the_way_out_removes_it(
    nbn_and_bn_gradients,
):
  (_, nbn_grads), (_, bn_grads) = nbn_and_bn_gradients
  paths = ('layer3_0/bn2',)
  total = float(optax.tree.norm(nbn_grads))
  outside = float(global_norm_outside_nbn(nbn_grads, paths))
  bn_total = float(optax.tree.norm(bn_grads))
  assert total > 1e3 * bn_total  # the raw bias gradient dominates
  assert outside < 10 * bn_total  # what is left is a plain network's size
  raw_bias = float(jnp.linalg.norm(nbn_grads['layer3_0']['bn2']['bias']))
  assert raw_bias == pytest.approx(total, rel=1e-3)


@pytest.mark.slow
def test_clipping_outside_nbn_leaves_the_other_updates_at_their_size(
    nbn_and_bn_gradients,
):
  (params, grads), _ = nbn_and_bn_gradients
  paths = ('layer3_0/bn2',)
  max_norm = 1e-3  # below the gradient norm outside NBN: clipping acts

  def update(tx):
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates

  plain = update(optax.clip_by_global_norm(max_norm))
  spared = update(clip_by_global_norm_outside_nbn(max_norm, paths))
  kernel = lambda u: float(jnp.linalg.norm(u['fc']['kernel']))
  outside = float(global_norm_outside_nbn(grads, paths))
  # Plain clipping shrinks the classifier's update by the bias's 1e6 factor.
  assert kernel(plain) < 1e-4 * kernel(spared)
  # Outside NBN: clipped to max_norm as a network without NBN vectors would.
  assert float(global_norm_outside_nbn(spared, paths)) == pytest.approx(
      max_norm, rel=1e-4
  )
  np.testing.assert_allclose(
      kernel(spared), kernel(grads) * max_norm / outside, rtol=1e-4
  )
  # The raw NBN vectors pass through as without clipping (the reference).
  for name in ('scale', 'bias'):
    np.testing.assert_array_equal(
        spared['layer3_0']['bn2'][name], grads['layer3_0']['bn2'][name]
    )
