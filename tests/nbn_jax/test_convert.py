"""nbn_jax.convert: the reference's PyTorch state dicts as flax variables.

Each PyTorch model (tests/torch_models.py, tests/torch_ride.py and the
trainer's PyTorch ResNet-32 oracle) gets random values in every tensor; the
converted flax model must give the same evaluation logits to 1e-4 relative
(max |diff| / max |logit|; RIDE and torchvision's ImageNet ResNets, also
converted into NBN: 1e-5, the mean and every expert's). The command line is
tests/nbn_jax/training/test_conversion.py.
"""

import pathlib

import jax
import numpy as np
import pytest
import torch
import torchvision

from nbn_jax import models
from nbn_jax.convert import (
    CheckpointMismatchError,
    from_torch_bn_state_dict,
    from_torch_state_dict,
    looks_like,
    strip_prefix,
    torch_name,
)
from tests import torch_models, torch_resnet32, torch_ride

ROOT = pathlib.Path(__file__).parents[2]
NUM_CLASSES = 10


def _state_dict(torch_model) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in torch_model.state_dict().items()}


def _images(size=32, batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3))


def _relative(ours, theirs) -> float:
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _eval_outputs(flax_model, variables, images):
  return jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(
      variables, images.astype(np.float32)
  )


def _torch_nchw(images):
  return torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)


def _relative_logit_difference(torch_model, flax_model, variables, images):
  with torch.no_grad():
    expected = torch_model(_torch_nchw(images)).numpy()
  logits = _eval_outputs(flax_model, variables, images)
  return _relative(logits, expected)


def ride_logit_differences(torch_model, flax_model, variables, images):
  """Relative differences of (mean logits, each expert's logits)."""
  with torch.no_grad():
    mean, experts = torch_model.expert_logits(_torch_nchw(images))
  outputs = _eval_outputs(flax_model, variables, images)
  return (
      _relative(outputs['logits'], mean.numpy()),
      _relative(outputs['expert_logits'], experts.numpy()),
  )


ARCHITECTURES = {
    'resnet50_nbn': (
        lambda: torch_models.ResNet(num_classes=NUM_CLASSES, nbn=True),
        lambda: models.ResNet50(NUM_CLASSES),
    ),
    'resnext50_nbn': (
        lambda: torch_models.ResNet(
            num_classes=NUM_CLASSES, groups=32, width_per_group=4, nbn=True
        ),
        lambda: models.ResNeXt50(NUM_CLASSES),
    ),
    'torchvision_resnet50_bn': (
        lambda: torch_models.ResNet(num_classes=NUM_CLASSES, nbn=False),
        lambda: models.ResNet50(NUM_CLASSES, norm='bn'),
    ),
    'resnet32_nbn': (
        lambda: torch_resnet32.ResNet32(NUM_CLASSES, 'nbn'),
        lambda: models.ResNet32(NUM_CLASSES),
    ),
}


class TestAgainstPyTorch:

  @pytest.mark.slow
  @pytest.mark.parametrize('name', sorted(ARCHITECTURES))
  def test_eval_logits_equal(self, name):
    make_torch, make_flax = ARCHITECTURES[name]
    torch.manual_seed(0)
    torch_model = torch_models.randomize(make_torch())
    flax_model = make_flax()
    variables = from_torch_state_dict(flax_model, _state_dict(torch_model))
    difference = _relative_logit_difference(
        torch_model, flax_model, variables, _images()
    )
    print(f'{name}: max |logit difference| / max |logit| = {difference:.2e}')
    assert difference < 1e-4

  def test_reads_entry_0_of_scale_factor_and_drops_module_prefix(self):
    torch_model = torch_models.ResNet(
        layers=(1, 1, 1, 1), num_classes=NUM_CLASSES, nbn=True
    )
    torch_models.randomize(torch_model)
    state = {f'module.{k}': v for k, v in _state_dict(torch_model).items()}
    assert state['module.scale_factor'].shape == (8,)  # one per NBN module
    flax_model = models.ResNet14(NUM_CLASSES)
    variables = from_torch_state_dict(flax_model, state)
    assert variables['params']['nbn_alpha'] == state['module.scale_factor'][0]
    assert (
        _relative_logit_difference(
            torch_model, flax_model, variables, _images()
        )
        < 1e-4
    )


RIDE_ARCHITECTURES = {
    # The reference's ride_nbn_lr: NBN, logit rectification, full widths.
    'ride_resnet50_nbn_lr': (
        lambda: torch_ride.RIDEResNet(
            num_classes=NUM_CLASSES, head='linear_bn'
        ),
        lambda: models.RIDEResNet50(NUM_CLASSES, logit_norm=True),
    ),
    # The reference's ride (its BN baseline).
    'ride_resnet50_bn': (
        lambda: torch_ride.RIDEResNet(num_classes=NUM_CLASSES, nbn=False),
        lambda: models.RIDEResNet50(NUM_CLASSES, norm='bn'),
    ),
    # RIDE's own: reduced widths, cosine head.
    'ride_resnext50_reduced_cosine': (
        lambda: torch_ride.RIDEResNet(
            num_classes=NUM_CLASSES,
            groups=32,
            width_per_group=4,
            reduce_dimension=True,
            head='cosine',
        ),
        lambda: models.RIDEResNeXt50(
            NUM_CLASSES, reduce_dimension=True, classifier='cosine'
        ),
    ),
    'ride_resnet32_nbn': (
        lambda: torch_ride.RIDECifarResNet(num_classes=NUM_CLASSES),
        lambda: models.RIDEResNet32(NUM_CLASSES),
    ),
}


def _ride_tiny(**fields):
  """The torch RIDE ResNet with one block per stage, and our RIDEResNet14."""
  torch.manual_seed(0)
  torch_model = torch_models.randomize(
      torch_ride.RIDEResNet(
          layers=(1, 1, 1, 1), num_classes=NUM_CLASSES, **fields
      )
  )
  return torch_model, _state_dict(torch_model)


class TestRIDE:
  """The reference's resnet50_ride_NBN and RIDE's ensembles."""

  @pytest.mark.slow
  @pytest.mark.parametrize('name', sorted(RIDE_ARCHITECTURES))
  def test_eval_logits_equal(self, name):
    make_torch, make_flax = RIDE_ARCHITECTURES[name]
    torch.manual_seed(0)
    torch_model = torch_models.randomize(make_torch())
    flax_model = make_flax()
    variables = from_torch_state_dict(flax_model, _state_dict(torch_model))
    mean, experts = ride_logit_differences(
        torch_model, flax_model, variables, _images()
    )
    print(
        f'{name}: relative logit difference {mean:.2e}, experts {experts:.2e}'
    )
    assert mean < 1e-5 and experts < 1e-5

  def test_each_expert_reads_its_entry_of_scale_factor(self):
    torch_model, state = _ride_tiny(head='linear_bn')
    assert state['scale_factor'].shape == (33,)  # 9 shared + 8 per expert BNs
    state = {f'module.{k}': v for k, v in state.items()}
    flax_model = models.RIDEResNet14(NUM_CLASSES, logit_norm=True)
    variables = from_torch_state_dict(flax_model, state)
    for e in range(3):
      assert (
          variables['params'][f'expert_{e}']['nbn_alpha']
          == state['module.scale_factor'][e]
      )
      np.testing.assert_array_equal(
          variables['batch_stats'][f'expert_{e}']['logit_norm']['var'],
          state[f'module.linears.{e}.bn.running_var'],
      )
    mean, experts = ride_logit_differences(
        torch_model, flax_model, variables, _images()
    )
    assert mean < 1e-5 and experts < 1e-5

  def test_cifar_ensemble_with_cosine_heads(self):
    torch.manual_seed(0)
    torch_model = torch_models.randomize(
        torch_ride.RIDECifarResNet(
            layers=(1, 1, 1), num_classes=NUM_CLASSES, reduce_dimension=True
        )
    )
    flax_model = models.RIDEResNet8(NUM_CLASSES, reduce_dimension=True)
    variables = from_torch_state_dict(flax_model, _state_dict(torch_model))
    # NormedLinear keeps (in, out): taken as it is, not transposed.
    np.testing.assert_array_equal(
        variables['params']['expert_2']['fc']['kernel'],
        torch_model.linears[2].weight.detach().numpy(),
    )
    mean, experts = ride_logit_differences(
        torch_model, flax_model, variables, _images()
    )
    assert mean < 1e-5 and experts < 1e-5

  def test_too_few_scale_factor_entries_name_the_key(self):
    torch.manual_seed(0)
    torch_model = torch_ride.RIDECifarResNet(
        layers=(1, 1, 1), num_classes=NUM_CLASSES
    )
    state = _state_dict(torch_model)
    state['scale_factor'] = state['scale_factor'][:2]
    with pytest.raises(
        CheckpointMismatchError,
        match=r"'scale_factor' has 2 entries, the model reads entry 2",
    ):
      from_torch_state_dict(models.RIDEResNet8(NUM_CLASSES), state)


def torchvision_resnet(name: str, num_classes: int = 1000) -> torch.nn.Module:
  """torchvision's network as its package initialises it, in eval mode, with
  BN scales, biases and running statistics of varied sizes (a trained
  network's are far from init's 1, 0, 0 and 1; in layer4 the four NBN
  sites' scale and bias vectors all have different lengths)."""
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(num_classes=num_classes)
  generator = torch.Generator().manual_seed(1)
  random = lambda *shape: torch.randn(shape, generator=generator)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        channels = module.num_features
        length = 0.5 + 3 * torch.rand((), generator=generator)
        module.weight.copy_(length * (0.5 + random(channels)) / channels**0.5)
        module.bias.copy_(0.1 * random(channels))
        module.running_mean.copy_(0.1 * random(channels))
        module.running_var.copy_(0.5 + random(channels).abs())
  return model.eval()


class TestTorchvision:
  """torchvision's ImageNet ResNets (the file a user downloads), into plain
  BN and into the reference's NBN placement, which computes the same."""

  @pytest.mark.slow
  @pytest.mark.parametrize(
      'name, network',
      [('resnet50', models.ResNet50), ('resnet152', models.ResNet152)],
  )
  def test_eval_logits_equal_in_bn_and_in_nbn(self, name, network):
    torch_model = torchvision_resnet(name)
    state = _state_dict(torch_model)
    images = _images()
    bn = network(1000, norm='bn')
    bn_difference = _relative_logit_difference(
        torch_model, bn, from_torch_state_dict(bn, state), images
    )
    nbn = network(1000)
    variables = from_torch_bn_state_dict(nbn, state)
    nbn_difference = _relative_logit_difference(
        torch_model, nbn, variables, images
    )
    print(f'{name}: BN {bn_difference:.2e}, NBN {nbn_difference:.2e}')
    assert bn_difference < 1e-5 and nbn_difference < 1e-5
    # NBN's raw vectors, not the BN ones: the longest of the four layer4
    # sites' vectors sets the shared alpha.
    lengths = [
        np.linalg.norm(state[f'layer4.{site}.{vector}'])
        for site in ('0.bn3', '0.downsample.1', '1.bn3', '2.bn3')
        for vector in ('weight', 'bias')
    ]
    assert max(lengths) < variables['params']['nbn_alpha'] < max(lengths) + 1e-5

  def test_into_a_bn_model_nbn_is_plain_conversion(self):
    torch_model = torch_models.randomize(
        torch_models.ResNet(layers=(1, 1, 1, 1), num_classes=10, nbn=False)
    )
    state = _state_dict(torch_model)
    bn = models.ResNet14(10, norm='bn')
    jax.tree.map(
        np.testing.assert_array_equal,
        from_torch_bn_state_dict(bn, state),
        from_torch_state_dict(bn, state),
    )

  def test_an_nbn_checkpoint_is_refused_in_one_line(self):
    state = _state_dict(
        torch_models.ResNet(layers=(1, 1, 1, 1), num_classes=10, nbn=True)
    )
    with pytest.raises(CheckpointMismatchError) as error:
      from_torch_bn_state_dict(models.ResNet14(10), state)
    message = str(error.value)
    assert "'scale_factor' is unexpected" in message and '\n' not in message


class TestMismatch:
  """One line naming the first differing key."""

  @staticmethod
  def _resnet14_state(nbn=True):
    torch_model = torch_models.ResNet(
        layers=(1, 1, 1, 1), num_classes=NUM_CLASSES, nbn=nbn
    )
    return _state_dict(torch_model)

  def test_an_nbn_checkpoint_for_a_bn_model(self):
    with pytest.raises(CheckpointMismatchError) as error:
      from_torch_state_dict(
          models.ResNet14(NUM_CLASSES, norm='bn'), self._resnet14_state()
      )
    message = str(error.value)
    assert "'scale_factor' is unexpected" in message and '\n' not in message

  def test_a_missing_key(self):
    state = self._resnet14_state()
    del state['layer2.0.bn1.running_var']
    with pytest.raises(
        CheckpointMismatchError,
        match="'layer2.0.bn1.running_var' is missing from the checkpoint",
    ):
      from_torch_state_dict(models.ResNet14(NUM_CLASSES), state)

  def test_a_shape_mismatch_names_the_key(self):
    with pytest.raises(CheckpointMismatchError, match="'fc.bias' has shape"):
      from_torch_state_dict(models.ResNet14(100), self._resnet14_state())

  def test_a_prefix_on_only_some_keys_is_left_for_the_check(self):
    """DataParallel prefixes every key; a checkpoint where only some carry
    `module.` is not one of its, and no key is cut short."""
    state = {f'module.{k}': v for k, v in self._resnet14_state().items()}
    state['scale_factor'] = state.pop('module.scale_factor')
    assert strip_prefix(state) == state
    with pytest.raises(CheckpointMismatchError) as error:
      from_torch_state_dict(models.ResNet14(NUM_CLASSES), state)
    assert "'bn1.bias' is missing from the checkpoint" in str(error.value)

  def test_a_ride_checkpoint_for_a_plain_resnet_says_ride(self):
    """The authors' resnet50_ride_NBN with ride_nbn_lr's head."""
    state = _state_dict(torch_ride.RIDEResNet(head='linear_bn'))
    with pytest.raises(CheckpointMismatchError) as error:
      from_torch_state_dict(models.ResNet50(1000), state)
    message = str(error.value)
    print(message)
    assert "'fc.bias' is missing from the checkpoint" in message
    assert (
        'looks like --config.model=RIDEResNet50 --config.num_experts=3 '
        '--config.logit_norm=True (norm nbn, 1000 classes)'
    ) in message
    assert '\n' not in message

  def test_a_plain_checkpoint_for_a_ride_model(self):
    with pytest.raises(
        CheckpointMismatchError,
        match=r'looks like --config.model=ResNet14 \(norm nbn, 10 classes\)',
    ):
      from_torch_state_dict(
          models.RIDEResNet14(NUM_CLASSES), self._resnet14_state()
      )

  def test_another_number_of_experts(self):
    _, state = _ride_tiny(num_experts=4, nbn=False)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"'layer3s.3.0.bn1.bias' is unexpected .* "
        r'--config.model=RIDEResNet14 --config.num_experts=4 \(norm bn',
    ):
      from_torch_state_dict(models.RIDEResNet14(NUM_CLASSES, norm='bn'), state)


class TestLooksLike:
  """The network a checkpoint seems to hold, from its keys and shapes."""

  @pytest.mark.parametrize(
      'make, expected',
      [
          (
              lambda: torch_ride.RIDEResNet(
                  groups=32,
                  width_per_group=4,
                  reduce_dimension=True,
                  head='cosine',
                  num_classes=100,
              ),
              (
                  '--config.model=RIDEResNeXt50 --config.num_experts=3 '
                  '--config.reduce_dimension=True --config.classifier=cosine '
                  '(norm nbn)'
              ),
          ),
          (
              lambda: torch_ride.RIDECifarResNet(
                  num_experts=2, reduce_dimension=True, nbn=False
              ),
              (
                  '--config.model=RIDEResNet32 --config.num_experts=2 '
                  '--config.reduce_dimension=True --config.classifier=cosine '
                  '(norm bn)'
              ),
          ),
          (
              lambda: torch_resnet32.ResNet32(100, 'nbn'),
              '--config.model=ResNet32 (norm nbn, 100 classes)',
          ),
          (
              lambda: torch_models.ResNet(
                  num_classes=7, groups=32, width_per_group=4, nbn=False
              ),
              '--config.model=ResNeXt50 (norm bn, 7 classes)',
          ),
          (
              torchvision.models.resnet152,
              '--config.model=ResNet152 (norm bn, 1000 classes)',
          ),
          (
              lambda: torch_models.ResNet(layers=(3, 4, 23, 3), nbn=False),
              '--config.model=ResNet101 (norm bn, 1000 classes)',
          ),
          (  # ResNeXt-101: no such model here
              lambda: torch_models.ResNet(
                  layers=(3, 4, 23, 3), groups=32, width_per_group=4
              ),
              (
                  'a ResNeXt with (3, 4, 23, 3) blocks per stage, none of the '
                  'models here'
              ),
          ),
      ],
  )
  def test_the_networks_here(self, make, expected):
    assert looks_like(_state_dict(make())) == expected

  def test_something_else(self):
    assert looks_like({'encoder.weight': np.zeros(3)}) == (
        'none of the ResNets or RIDE ensembles here'
    )


def test_torch_names_of_the_three_layouts():
  assert (
      torch_name('params', ('layer4_0', 'downsample_bn', 'scale'), False)
      == 'layer4.0.downsample.1.weight'
  )
  assert (
      torch_name('batch_stats', ('layer3_4', 'bn2', 'var'), True)
      == 'layer3.4.bn2.running_var'
  )
  assert torch_name('params', ('fc', 'kernel'), True) == 'linear.weight'
  assert torch_name('params', ('fc', 'kernel'), False) == 'fc.weight'
  assert torch_name('params', ('nbn_alpha',), False) == 'scale_factor'


def test_torch_names_of_ride_experts():
  assert (
      torch_name(
          'params', ('expert_2', 'layer4_0', 'downsample_bn', 'scale'), False
      )
      == 'layer4s.2.0.downsample.1.weight'
  )
  assert (
      torch_name('params', ('expert_1', 'layer2_3', 'conv1', 'kernel'), True)
      == 'layer2s.1.3.conv1.weight'
  )
  assert torch_name('params', ('expert_1', 'fc', 'bias'), False) == (
      'linears.1.bias'
  )
  assert (
      torch_name('batch_stats', ('expert_0', 'logit_norm', 'mean'), False)
      == 'linears.0.bn.running_mean'
  )
  assert (
      torch_name('batch_stats', ('logit_norm', 'var'), False)
      == 'fc.bn.running_var'
  )
  assert torch_name('params', ('expert_1', 'nbn_alpha'), False) == (
      'scale_factor'
  )
  assert torch_name('params', ('layer1_0', 'conv1', 'kernel'), False) == (
      'layer1.0.conv1.weight'
  )
