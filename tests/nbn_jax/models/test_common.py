"""What the model families share: constructors with a positional class
count, and the classifier heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nbn_jax import models
from nbn_jax.models import common
from tests.nbn_jax.models.inspection import abstract_variables, param_count


@pytest.mark.parametrize(
    'family, stage_sizes',
    [
        (models.ResNet50, (3, 4, 6, 3)),
        (models.ResNeXt50, (3, 4, 6, 3)),
        (models.ResNet14, (1, 1, 1, 1)),
        (models.ResNet32, (5, 5, 5)),
        (models.ResNet8, (1, 1, 1)),
    ],
)
def test_num_classes_is_positional_and_fields_are_keywords(family, stage_sizes):
  model = family(1000, norm='bn')
  assert (model.num_classes, model.norm, model.stage_sizes) == (
      1000,
      'bn',
      stage_sizes,
  )
  assert family(num_classes=7).num_classes == 7
  assert models.ResNeXt50(3).groups == 32


class TestCosineClassifier:
  """LDAM's and RIDE's NormedLinear, times RIDE's scale s."""

  def test_logits_are_s_times_the_cosines(self):
    features = np.random.default_rng(0).normal(size=(4, 6))
    head = common.CosineClassifier(num_classes=3, scale=30.0)
    variables = head.init(jax.random.key(0), features)
    kernel = np.asarray(variables['params']['kernel'])
    assert set(variables['params']) == {'kernel'}  # no bias
    expected = 30 * (
        features
        / np.linalg.norm(features, axis=1, keepdims=True)
        @ (kernel / np.linalg.norm(kernel, axis=0, keepdims=True))
    )
    np.testing.assert_allclose(
        head.apply(variables, features), expected, rtol=1e-5
    )
    # Scale-free in the features and in each class's weight vector.
    scaled = {'params': {'kernel': kernel * np.array([1.0, 7.0, 0.1])}}
    np.testing.assert_allclose(
        head.apply(scaled, 5 * features), expected, rtol=1e-5
    )

  def test_init_is_uniform_then_unit_columns(self):
    kernel = common.unit_columns_init(jax.random.key(0), (64, 10))
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)
    # Drawn from U(-1, 1) before the normalisation: both signs.
    assert float(jnp.min(kernel)) < 0 < float(jnp.max(kernel))

  def test_a_zero_feature_vector_has_finite_gradients(self):
    head = common.CosineClassifier(num_classes=3)
    x = jnp.zeros((2, 5))
    variables = head.init(jax.random.key(0), x)
    grads = jax.grad(lambda v, x: head.apply(v, x).sum(), argnums=(0, 1))(
        variables, x
    )
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))

  @pytest.mark.parametrize(
      'family, image', [(models.ResNet32, 32), (models.ResNet14, 32)]
  )
  def test_every_resnet_takes_the_cosine_head(self, family, image):
    shape = (1, image, image, 3)
    cosine = abstract_variables(family(10, classifier='cosine'), shape)
    linear = abstract_variables(family(10), shape)
    assert param_count(cosine) == param_count(linear) - 10  # no bias
    assert set(cosine['params']['fc']) == {'kernel'}
