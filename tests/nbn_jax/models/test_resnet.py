"""ResNet-50/101/152 and ResNeXt-50 32x4d: torchvision layout, the
reference's NBN."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.nbn_jax.models.inspection import (
    abstract_variables,
    assert_alpha_changes_only_from,
    nbn_calls,
    param_count,
)

from nbn_jax import models

IMAGENET = (1, 224, 224, 3)
LAYER4_NBN_LAYERS = {
    'layer4_0/bn3',
    'layer4_0/downsample_bn',
    'layer4_1/bn3',
    'layer4_2/bn3',
}


class TestParameterCounts:
  """torchvision's figures at 1000 classes; NBN adds one shared alpha."""

  def test_resnet50(self):
    bn = abstract_variables(
        models.ResNet50(num_classes=1000, norm='bn'), IMAGENET
    )
    nbn = abstract_variables(models.ResNet50(num_classes=1000), IMAGENET)
    assert param_count(bn) == 25_557_032
    assert param_count(nbn) == 25_557_032 + 1
    assert nbn['params']['nbn_alpha'].shape == ()

  @pytest.mark.parametrize(
      'model_def, torchvision_count',
      [(models.ResNet101, 44_549_160), (models.ResNet152, 60_192_808)],
  )
  def test_resnet101_and_resnet152(self, model_def, torchvision_count):
    bn = abstract_variables(model_def(num_classes=1000, norm='bn'), IMAGENET)
    nbn = abstract_variables(model_def(num_classes=1000), IMAGENET)
    assert param_count(bn) == torchvision_count
    assert param_count(nbn) == torchvision_count + 1

  def test_resnext50_32x4d(self):
    bn = abstract_variables(
        models.ResNeXt50(num_classes=1000, norm='bn'), IMAGENET
    )
    nbn = abstract_variables(models.ResNeXt50(num_classes=1000), IMAGENET)
    assert param_count(bn) == 25_028_904
    assert param_count(nbn) == 25_028_904 + 1

  def test_per_layer_alpha_adds_one_per_nbn_layer(self):
    placement = models.NBNPlacement(
        stages=(3,), block_norms=('bn3',), shared_alpha=False
    )
    nbn = abstract_variables(
        models.ResNet50(num_classes=1000, nbn_placement=placement), IMAGENET
    )
    assert param_count(nbn) == 25_557_032 + 4
    assert 'nbn_alpha' not in nbn['params']
    assert nbn['params']['layer4_1']['bn3']['alpha'].shape == ()


class TestNBNPlacement:

  @pytest.mark.parametrize(
      'model_def',
      [models.ResNet50, models.ResNeXt50, models.ResNet101, models.ResNet152],
  )
  def test_exactly_the_four_layer4_bns_read_the_shared_alpha(self, model_def):
    every, with_alpha = nbn_calls(model_def(num_classes=10), (2, 64, 64, 3))
    assert every == with_alpha == LAYER4_NBN_LAYERS

  def test_plain_bn_has_no_nbn_layer_and_no_alpha(self):
    model = models.ResNet50(num_classes=10, norm='bn')
    assert nbn_calls(model, (2, 64, 64, 3)) == (set(), set())
    assert (
        'nbn_alpha' not in abstract_variables(model, (2, 64, 64, 3))['params']
    )

  def test_placement_is_configurable(self):
    placement = models.NBNPlacement(
        stages=(2, 3), block_norms=('bn1', 'bn2'), shortcut=False
    )
    every, with_alpha = nbn_calls(
        models.ResNet50(num_classes=10, nbn_placement=placement), (2, 64, 64, 3)
    )
    expected = {
        f'layer{s}_{b}/bn{i}'
        for s, blocks in ((3, 6), (4, 3))
        for b in range(blocks)
        for i in (1, 2)
    }
    assert every == with_alpha == expected

  @pytest.mark.slow
  def test_changing_alpha_changes_only_what_follows_the_first_nbn(self, images):
    assert_alpha_changes_only_from(
        models.ResNet50(num_classes=10), images((2, 32, 32, 3)), 'layer4_0/bn3'
    )

  @pytest.mark.slow
  def test_nbn_scales_start_at_one(self, images):
    variables = models.ResNet50(num_classes=10).init(
        jax.random.key(0), images((1, 32, 32, 3)), train=False
    )
    for name in LAYER4_NBN_LAYERS:
      block, layer = name.split('/')
      np.testing.assert_array_equal(
          variables['params'][block][layer]['scale'], 1.0
      )


class TestLayout:

  @pytest.mark.slow
  def test_stride_is_on_the_three_by_three_convolution(self, images):
    model = models.ResNet50(num_classes=10, norm='bn')
    _, state = model.apply(
        model.init(jax.random.key(0), images((1, 64, 64, 3)), train=False),
        images((1, 64, 64, 3)),
        train=False,
        capture_intermediates=True,
        mutable=['intermediates'],
    )
    out = state['intermediates']
    spatial = lambda *path: functools.reduce(dict.get, path, out)['__call__'][
        0
    ].shape[1]
    assert spatial('conv1') == 32  # 7x7/2 stem, then 3x3/2 max pool -> 16
    assert spatial('layer2_0', 'conv1') == 16
    assert spatial('layer2_0', 'conv2') == 8
    assert spatial('layer2_0', 'downsample_conv') == 8
    assert out['__call__'][0].shape == (1, 10)

  @pytest.mark.parametrize(
      'model_def, blocks',
      [
          (models.ResNet50, (3, 4, 6, 3)),
          (models.ResNet101, (3, 4, 23, 3)),
          (models.ResNet152, (3, 8, 36, 3)),
      ],
  )
  def test_blocks_per_stage_are_torchvisions(self, model_def, blocks):
    params = abstract_variables(model_def(num_classes=10), (1, 32, 32, 3))[
        'params'
    ]
    for stage, count in enumerate(blocks, start=1):
      assert f'layer{stage}_{count - 1}' in params
      assert f'layer{stage}_{count}' not in params

  def test_resnext_grouped_convolution_widths(self):
    params = abstract_variables(
        models.ResNeXt50(num_classes=10), (1, 64, 64, 3)
    )['params']
    # width = int(filters * 4 / 64) * 32: 128 in layer1, 1024 in layer4.
    assert params['layer1_0']['conv2']['kernel'].shape == (3, 3, 4, 128)
    assert params['layer4_0']['conv2']['kernel'].shape == (3, 3, 32, 1024)
    assert params['layer4_0']['conv3']['kernel'].shape == (1, 1, 1024, 2048)

  @pytest.mark.slow
  def test_convolutions_use_he_normal_fan_out_init(self):
    variables = jax.jit(
        lambda: models.ResNet50(num_classes=10).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )
    )()
    kernel = variables['params']['layer4_0']['conv2']['kernel']  # 3x3, 512->512
    assert float(jnp.std(kernel)) == pytest.approx(
        (2 / (9 * 512)) ** 0.5, rel=0.02
    )
    fc_bias = variables['params']['fc']['bias']
    assert float(jnp.abs(fc_bias).max()) <= 2048**-0.5


class TestOptions:

  def test_unknown_norm_is_a_clear_error(self):
    with pytest.raises(ValueError, match="norm='batchnorm'"):
      abstract_variables(
          models.ResNet50(num_classes=10, norm='batchnorm'), (1, 32, 32, 3)
      )

  def test_placement_outside_the_network_is_a_clear_error(self):
    bad = models.NBNPlacement(stages=(4,), block_norms=('bn3',))
    with pytest.raises(ValueError, match=r'stages \[4\] do not exist'):
      abstract_variables(
          models.ResNet50(num_classes=10, nbn_placement=bad), (1, 32, 32, 3)
      )

  @pytest.mark.slow
  def test_logit_rectification_standardises_each_logit_over_the_batch(
      self, images
  ):
    x = images((8, 32, 32, 3))
    model = models.ResNet50(num_classes=10, logit_norm=True)
    variables = model.init(jax.random.key(0), x, train=False)
    assert variables['batch_stats']['logit_norm']['mean'].shape == (10,)
    assert 'logit_norm' not in variables['params']
    logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])

    plain = models.ResNet50(num_classes=10)  # same parameters, no head BN
    raw, _ = plain.apply(
        {
            'params': variables['params'],
            'batch_stats': {
                k: v
                for k, v in variables['batch_stats'].items()
                if k != 'logit_norm'
            },
        },
        x,
        train=True,
        mutable=['batch_stats'],
    )
    expected = (raw - raw.mean(0)) / jnp.sqrt(raw.var(0) + 1e-5)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)

  @pytest.mark.slow
  def test_bfloat16_compute_keeps_float32_parameters_and_logits(self, images):
    model = models.ResNet50(num_classes=10, dtype=jnp.bfloat16)
    x = images((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {
        jnp.dtype('float32')
    }
    assert model.apply(variables, x, train=False).dtype == jnp.float32
