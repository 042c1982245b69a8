"""RIDE ensembles: the reference's resnet50_ride_NBN layout, RIDE's CIFAR
ensemble, NBN with one alpha per expert."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nbn_jax import inspection, models
from tests import torch_ride
from tests.nbn_jax.models.inspection import (
    abstract_variables,
    nbn_calls,
    param_count,
)

IMAGENET_STYLE = (1, 32, 32, 3)  # global pooling: any size traces the same
CIFAR = (1, 32, 32, 3)


def _init(model, x):
  return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)


class TestParameterCounts:
  """Against PyTorch builds of the same ensembles (tests/torch_ride.py)."""

  @pytest.mark.parametrize(
      'flax_model, torch_model',
      [
          pytest.param(
              lambda r: models.RIDEResNet50(
                  1000, norm='bn', reduce_dimension=r
              ),
              lambda r: torch_ride.RIDEResNet(reduce_dimension=r, nbn=False),
              id='resnet50',
          ),
          pytest.param(
              lambda r: models.RIDEResNeXt50(
                  1000, norm='bn', reduce_dimension=r
              ),
              lambda r: torch_ride.RIDEResNet(
                  groups=32, width_per_group=4, reduce_dimension=r, nbn=False
              ),
              id='resnext50',
          ),
          pytest.param(
              lambda r: models.RIDEResNet32(100, norm='bn', reduce_dimension=r),
              lambda r: torch_ride.RIDECifarResNet(
                  num_classes=100, reduce_dimension=r, nbn=False
              ),
              id='resnet32',
          ),
      ],
  )
  @pytest.mark.parametrize('reduce_dimension', [False, True])
  def test_three_experts_match_pytorch(
      self, flax_model, torch_model, reduce_dimension
  ):
    ours = param_count(
        abstract_variables(flax_model(reduce_dimension), IMAGENET_STYLE)
    )
    theirs = torch_ride.parameter_count(torch_model(reduce_dimension))
    print(f'reduce_dimension={reduce_dimension}: {ours:,} parameters')
    assert ours == theirs

  def test_one_expert_is_the_single_network(self):
    """torchvision's ResNet-50 and LDAM's ResNet-32 figures."""
    resnet50 = models.RIDEResNet50(1000, num_experts=1, norm='bn')
    assert param_count(abstract_variables(resnet50, IMAGENET_STYLE)) == (
        25_557_032
    )
    resnet32 = models.RIDEResNet32(
        10, num_experts=1, norm='bn', classifier='linear'
    )
    assert param_count(abstract_variables(resnet32, CIFAR)) == 464_154

  @pytest.mark.parametrize('num_experts', [1, 3, 4])
  def test_nbn_adds_one_alpha_per_expert(self, num_experts):
    """The reference's scale_factor holds 111 entries; 3 are read."""
    shapes = lambda norm: {
        jax.tree_util.keystr(path): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(
            abstract_variables(
                models.RIDEResNet14(10, norm=norm, num_experts=num_experts),
                IMAGENET_STYLE,
            )['params']
        )[0]
    }
    nbn, bn = shapes('nbn'), shapes('bn')
    added = {path: nbn[path] for path in nbn.keys() - bn.keys()}
    assert added == {
        f"['expert_{e}']['nbn_alpha']": () for e in range(num_experts)
    }
    assert bn.keys() <= nbn.keys()


def _reference_sites(stage, blocks, norms, shortcut, num_experts=3):
  return {
      f'expert_{e}/layer{stage}_{b}/{n}': f'expert_{e}/nbn_alpha'
      for e in range(num_experts)
      for b in range(blocks)
      for n in norms + (('downsample_bn',) if shortcut and b == 0 else ())
  }


class TestNBNPlacement:

  @pytest.mark.parametrize(
      'model, expected',
      [
          pytest.param(
              models.RIDEResNet50(10),
              _reference_sites(4, 3, ('bn1', 'bn2', 'bn3'), shortcut=True),
              id='resnet50',
          ),
          pytest.param(
              models.RIDEResNeXt50(10),
              _reference_sites(4, 3, ('bn1', 'bn2', 'bn3'), shortcut=True),
              id='resnext50',
          ),
          pytest.param(
              models.RIDEResNet32(10),
              _reference_sites(3, 5, ('bn1', 'bn2'), shortcut=False),
              id='resnet32',
          ),
      ],
  )
  def test_every_bn_of_each_experts_last_stage_reads_its_alpha(
      self, model, expected
  ):
    assert inspection.layer_alphas(model, IMAGENET_STYLE) == expected
    per_expert = len(expected) // 3
    assert per_expert == 10  # 3 blocks x 3 + shortcut; 5 blocks x 2
    every, _ = nbn_calls(model, IMAGENET_STYLE)
    assert every == set(expected)  # no other NBN layer
    params = abstract_variables(model, IMAGENET_STYLE)['params']
    assert 'nbn_alpha' not in params  # only the experts own one
    assert all(params[f'expert_{e}']['nbn_alpha'].shape == () for e in range(3))

  def test_bn_ensemble_has_no_nbn_layer_and_no_alpha(self):
    model = models.RIDEResNet14(10, norm='bn')
    assert nbn_calls(model, IMAGENET_STYLE) == (set(), set())
    params = abstract_variables(model, IMAGENET_STYLE)['params']
    assert not any('nbn_alpha' in params[f'expert_{e}'] for e in range(3))

  def test_a_shared_stage_reads_the_networks_alpha(self):
    placement = models.NBNPlacement(stages=(1, 3), block_norms=('bn3',))
    model = models.RIDEResNet14(10, nbn_placement=placement)
    alphas = inspection.layer_alphas(model, IMAGENET_STYLE)
    assert alphas == {
        'layer2_0/bn3': 'nbn_alpha',
        'layer2_0/downsample_bn': 'nbn_alpha',
        **{
            f'expert_{e}/layer4_0/{n}': f'expert_{e}/nbn_alpha'
            for e in range(3)
            for n in ('bn3', 'downsample_bn')
        },
    }

  def test_per_layer_alphas(self):
    placement = models.NBNPlacement(
        stages=(3,), block_norms=('bn2',), shortcut=False, shared_alpha=False
    )
    model = models.RIDEResNet14(10, nbn_placement=placement)
    assert inspection.layer_alphas(model, IMAGENET_STYLE) == {
        f'expert_{e}/layer4_0/bn2': f'expert_{e}/layer4_0/bn2/alpha'
        for e in range(3)
    }

  @pytest.mark.parametrize(
      'model',
      [
          pytest.param(models.RIDEResNet8(10), id='resnet8'),
          pytest.param(
              models.RIDEResNet14(10), id='resnet14', marks=pytest.mark.slow
          ),
          pytest.param(
              models.RIDEResNeXt50(10), id='resnext50', marks=pytest.mark.slow
          ),
      ],
  )
  @pytest.mark.parametrize('train', [True, False])
  def test_changing_one_experts_alpha_changes_only_its_logits(
      self, model, train, images
  ):
    x = images((4, 32, 32, 3))
    variables = _init(model, x)
    apply = jax.jit(
        lambda v: model.apply(v, x, train=train, mutable=['batch_stats'])[0]
    )
    changed = jax.tree.map(lambda a: a, variables)
    changed['params']['expert_1']['nbn_alpha'] = jnp.asarray(2.5)
    before, after = apply(variables), apply(changed)
    for e in (0, 2):
      np.testing.assert_array_equal(
          before['expert_logits'][e], after['expert_logits'][e]
      )
    assert not np.allclose(
        before['expert_logits'][1], after['expert_logits'][1]
    )
    assert not np.allclose(before['logits'], after['logits'])


class TestOutputs:

  @pytest.mark.parametrize('num_experts', [1, 4])
  def test_logits_are_the_plain_mean_of_the_experts(self, num_experts, images):
    x = images((4, 32, 32, 3))
    model = models.RIDEResNet8(7, num_experts=num_experts)
    variables = _init(model, x)
    for train in (True, False):
      outputs = model.apply(variables, x, train=train, mutable=['batch_stats'])[
          0
      ]
      assert set(outputs) == {models.LOGITS, models.EXPERT_LOGITS}
      assert outputs['expert_logits'].shape == (num_experts, 4, 7)
      np.testing.assert_allclose(
          outputs['logits'], outputs['expert_logits'].mean(0), rtol=1e-6
      )
      if num_experts > 1:  # experts are initialised independently
        assert not np.allclose(
            outputs['expert_logits'][0], outputs['expert_logits'][1]
        )

  def test_each_expert_owns_its_stages_and_head(self):
    params = abstract_variables(models.RIDEResNet14(10), IMAGENET_STYLE)[
        'params'
    ]
    assert set(params) == {
        'conv1',
        'bn1',
        'layer1_0',
        'layer2_0',
        'expert_0',
        'expert_1',
        'expert_2',
    }
    assert set(params['expert_1']) == {
        'layer3_0',
        'layer4_0',
        'fc',
        'nbn_alpha',
    }
    assert params['expert_1']['fc']['kernel'].shape == (2048, 10)
    assert 'bias' in params['expert_1']['fc']  # the reference's linear head

  def test_widths_full_and_reduced(self):
    def expert_kernels(model):
      return abstract_variables(model, IMAGENET_STYLE)['params']['expert_0']

    full = expert_kernels(models.RIDEResNet14(10))
    reduced = expert_kernels(models.RIDEResNet14(10, reduce_dimension=True))
    assert full['layer3_0']['conv3']['kernel'].shape == (1, 1, 256, 1024)
    assert full['layer4_0']['conv3']['kernel'].shape == (1, 1, 512, 2048)
    assert reduced['layer3_0']['conv3']['kernel'].shape == (1, 1, 192, 768)
    assert reduced['layer4_0']['conv3']['kernel'].shape == (1, 1, 384, 1536)
    resnext = expert_kernels(
        models.RIDEResNeXt50(10, reduce_dimension=True)
    )  # width int(384 * 4 / 64) * 32 = 768
    assert resnext['layer4_0']['conv2']['kernel'].shape == (3, 3, 24, 768)
    cifar = expert_kernels(models.RIDEResNet8(10, reduce_dimension=True))
    assert cifar['layer2_0']['conv1']['kernel'].shape == (3, 3, 16, 24)
    assert cifar['layer3_0']['conv1']['kernel'].shape == (3, 3, 24, 48)
    assert cifar['fc']['kernel'].shape == (48, 10)

  def test_cifar_ensemble_has_a_cosine_head_scaled_by_30(self, images):
    model = models.RIDEResNet8(10)
    assert model.classifier == 'cosine'
    assert models.RIDEResNet50(10).classifier == 'linear'
    x = images((4, 32, 32, 3))
    variables = _init(model, x)
    assert set(variables['params']['expert_0']['fc']) == {'kernel'}
    expert_logits = lambda m: m.apply(variables, x, train=False)[
        'expert_logits'
    ]
    cosines = expert_logits(model.clone(cosine_scale=1.0))
    assert float(jnp.abs(cosines).max()) <= 1.0 + 1e-6
    np.testing.assert_allclose(
        expert_logits(model), 30 * cosines, rtol=1e-5, atol=1e-5
    )

  def test_every_experts_cosine_head_takes_the_cosine_scale(self, images):
    """The head is the families' own (`classifier_head`): one ensemble."""
    model = models.RIDEResNet8(10, num_experts=2)
    x = images((2, 32, 32, 3))
    variables = _init(model, x)
    outputs = lambda scale: model.clone(cosine_scale=scale).apply(
        variables, x, train=False
    )
    scaled, cosines = outputs(16.0), outputs(1.0)
    for name in ('expert_logits', 'logits'):
      np.testing.assert_allclose(
          scaled[name], 16 * cosines[name], rtol=1e-5, atol=1e-5
      )

  def test_logit_rectification_per_expert(self, images):
    x = images((16, 32, 32, 3))
    model = models.RIDEResNet8(10, logit_norm=True, classifier='linear')
    variables = _init(model, x)
    for e in range(3):
      assert variables['batch_stats'][f'expert_{e}']['logit_norm'][
          'mean'
      ].shape == (10,)
      assert 'logit_norm' not in variables['params'][f'expert_{e}']
    outputs, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
    per_expert = outputs['expert_logits']  # standardised over the batch
    np.testing.assert_allclose(per_expert.mean(1), 0.0, atol=1e-4)
    np.testing.assert_allclose(per_expert.var(1), 1.0, atol=1e-2)

  def test_bfloat16_compute_keeps_float32_parameters_and_logits(self, images):
    model = models.RIDEResNet8(10, dtype=jnp.bfloat16)
    x = images((2, 32, 32, 3))
    variables = _init(model, x)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {
        jnp.dtype('float32')
    }
    outputs = model.apply(variables, x, train=False)
    assert {v.dtype for v in outputs.values()} == {jnp.dtype('float32')}

  @pytest.mark.parametrize(
      'fields, message',
      [
          ({'num_experts': 0}, r'num_experts=0 must be >= 1'),
          ({'expert_stages': 4}, r'expert_stages=4 must be 1 to 3'),
          ({'classifier': 'normed'}, r"classifier='normed' is not one of"),
      ],
  )
  def test_bad_fields_are_clear_errors(self, fields, message):
    with pytest.raises(ValueError, match=message):
      abstract_variables(models.RIDEResNet8(10, **fields), CIFAR)

  def test_names_register_and_take_the_ensemble_fields(self):
    for name in (
        'RIDEResNet50',
        'RIDEResNeXt50',
        'RIDEResNet32',
        'RIDEResNet14',
        'RIDEResNet8',
    ):
      network = models.MODELS[name]
      assert models.takes_field(network, 'num_experts')
      assert models.takes_field(network, 'reduce_dimension')
      assert network(5).num_experts == 3
    assert not models.takes_field(models.ResNet50, 'num_experts')
    assert models.RIDEResNeXt50(5).groups == 32
