"""ResNet-32 as in the LDAM protocol, with NBN on the last stage."""

import jax
import jax.numpy as jnp
import pytest
from tests.nbn_jax.models.inspection import (
    abstract_variables,
    assert_alpha_changes_only_from,
    nbn_calls,
    outputs_in_return_order,
    param_count,
)

from nbn_jax import models

CIFAR = (2, 32, 32, 3)
LAST_STAGE_BN2 = {f'layer3_{b}/bn2' for b in range(5)}
# Option-B projections at the two stage transitions: 1x1 convs 16->32 and
# 32->64 plus their BNs' scale and bias.
OPTION_B_EXTRA = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


class TestParameterCounts:

  def test_resnet32_at_ten_classes(self):
    assert (
        param_count(
            abstract_variables(
                models.ResNet32(num_classes=10, norm='bn'), CIFAR
            )
        )
        == 464_154
    )

  def test_nbn_adds_one_shared_alpha(self):
    assert (
        param_count(abstract_variables(models.ResNet32(num_classes=10), CIFAR))
        == 464_155
    )

  def test_option_b_adds_the_projection_shortcuts(self):
    model = models.ResNet32(num_classes=10, norm='bn', shortcut='B')
    assert (
        param_count(abstract_variables(model, CIFAR))
        == 464_154 + OPTION_B_EXTRA
    )

  def test_one_hundred_classes(self):
    model = models.ResNet32(num_classes=100, norm='bn')
    assert param_count(abstract_variables(model, CIFAR)) == 464_154 + 90 * 65


class TestNBNPlacement:

  def test_last_bn_of_each_last_stage_block_reads_the_shared_alpha(self):
    assert nbn_calls(models.ResNet32(num_classes=10), CIFAR) == (
        LAST_STAGE_BN2,
        LAST_STAGE_BN2,
    )

  def test_option_b_shortcut_bn_is_normalised_too(self):
    expected = LAST_STAGE_BN2 | {'layer3_0/downsample_bn'}
    assert nbn_calls(models.ResNet32(num_classes=10, shortcut='B'), CIFAR) == (
        expected,
        expected,
    )

  def test_per_layer_alpha(self):
    placement = models.NBNPlacement(
        stages=(1, 2), block_norms=('bn1',), shared_alpha=False
    )
    model = models.ResNet32(num_classes=10, nbn_placement=placement)
    every, with_alpha = nbn_calls(model, CIFAR)
    assert len(every) == 10 and not with_alpha
    assert param_count(abstract_variables(model, CIFAR)) == 464_154 + 10

  @pytest.mark.slow
  def test_changing_alpha_changes_only_what_follows_the_first_nbn(self, images):
    assert_alpha_changes_only_from(
        models.ResNet32(num_classes=10), images(CIFAR), 'layer3_0/bn2'
    )

  def test_invalid_block_norm_is_a_clear_error(self):
    bad = models.NBNPlacement(stages=(2,), block_norms=('bn3',))
    with pytest.raises(ValueError, match=r"\['bn3'\] are not BNs"):
      abstract_variables(
          models.ResNet32(num_classes=10, nbn_placement=bad), CIFAR
      )


class TestLayout:

  def test_stages_halve_the_resolution_and_double_the_width(self, images):
    model = models.ResNet32(num_classes=10, norm='bn')
    x = images(CIFAR)
    outputs = dict(
        outputs_in_return_order(
            model, model.init(jax.random.key(0), x, train=False), x, train=False
        )
    )
    assert outputs['layer1_4'].shape == (2, 32, 32, 16)
    assert outputs['layer2_0'].shape == (2, 16, 16, 32)
    assert outputs['layer3_4'].shape == (2, 8, 8, 64)
    assert outputs['fc'].shape == (2, 10)

  @pytest.mark.slow
  def test_he_normal_fan_in_init_of_convolutions_and_classifier(self):
    params = jax.jit(
        lambda: models.ResNet32(num_classes=100).init(
            jax.random.key(0), jnp.zeros(CIFAR), train=False
        )
    )()['params']
    conv = params['layer3_2']['conv1']['kernel']  # 3x3, 64 -> 64
    assert float(jnp.std(conv)) == pytest.approx(
        (2 / (9 * 64)) ** 0.5, rel=0.03
    )
    fc = params['fc']
    assert float(jnp.std(fc['kernel'])) == pytest.approx(
        (2 / 64) ** 0.5, rel=0.05
    )
    assert float(jnp.abs(fc['bias']).max()) <= 64**-0.5

  def test_unknown_shortcut_is_a_clear_error(self):
    with pytest.raises(ValueError, match="shortcut='C'"):
      abstract_variables(models.ResNet32(num_classes=10, shortcut='C'), CIFAR)
