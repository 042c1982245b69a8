"""nbn_jax.convert: the reference's PyTorch state dicts as flax variables.

Each PyTorch model (tests/torch_models.py, and the trainer's PyTorch
ResNet-32 oracle) gets random values in every tensor; the converted flax
model must give the same evaluation logits to 1e-4 relative (max |diff| /
max |logit|). The command line is tests/nbn_jax/training/test_conversion.py.
"""

import pathlib

import jax
import numpy as np
import pytest
import torch

from tests import torch_resnet32
from nbn_jax import models
from nbn_jax.convert import (
    CheckpointMismatchError,
    from_torch_state_dict,
    torch_name,
)
from tests import torch_models

ROOT = pathlib.Path(__file__).parents[2]
NUM_CLASSES = 10


def _state_dict(torch_model) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in torch_model.state_dict().items()}


def _images(size=32, batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3))


def _relative_logit_difference(torch_model, flax_model, variables, images):
  with torch.no_grad():
    expected = torch_model(
        torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
    ).numpy()
  logits = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(
      variables, images.astype(np.float32)
  )
  return float(np.abs(logits - expected).max() / np.abs(expected).max())


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
