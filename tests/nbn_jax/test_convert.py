"""nbn_jax.convert: PyTorch checkpoints of the reference's networks.

Each PyTorch model (tests/torch_models.py, and the trainer's PyTorch
ResNet-32 oracle) gets random values in every tensor; the converted flax
model must give the same evaluation logits to 1e-4 relative (max |diff| /
max |logit|).
"""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from bench import torch_resnet32
from configs import cifar10_lt
from input_pipeline.datasets import CIFAR_MEAN, CIFAR_STD
from nbn_jax import models
from nbn_jax.convert import (
    CheckpointMismatchError,
    from_torch_state_dict,
    load_torch_state_dict,
    torch_name,
    write_checkpoint,
)
from nbn_jax.training import loop
from nbn_jax.training.checkpoints import latest_params
from tests import torch_models
from tests.fake_data import mock_tfds_cifar

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


def test_without_pytorch_the_error_says_what_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails
  with pytest.raises(CheckpointMismatchError, match='pip install torch'):
    load_torch_state_dict(str(tmp_path / 'model.pth'))


def _cifar_config(**overrides):
  config = cifar10_lt.get_config()
  config.model = 'ResNet32'
  config.imbalance_factor = 10.0
  config.batch_size = 16
  config.lr_batch_size = 16
  config.eval_batch_size = 16
  config.half_precision = False
  for field, value in overrides.items():
    config[field] = value
  return config


def _mock_images(count):
  """The images `mock_tfds_cifar` serves for official indices 0..count-1."""
  images = np.zeros((count, 32, 32, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(count) % 256
  images[:, 0, 0, 1] = np.arange(count) // 256
  return images


@pytest.mark.slow
def test_converted_checkpoint_evaluates_with_train_py_eval_only(tmp_path):
  """torch.save -> convert -> eval_only: PyTorch's test accuracy, our run."""
  torch.manual_seed(0)
  torch_model = torch_models.randomize(torch_resnet32.ResNet32(10, 'nbn'))
  checkpoint = tmp_path / 'resnet32_nbn.pth'
  torch.save(
      {
          'epoch': 200,
          'state_dict': {
              f'module.{k}': v for k, v in torch_model.state_dict().items()
          },
      },
      checkpoint,
  )
  config = _cifar_config()
  state_dict = load_torch_state_dict(str(checkpoint))
  write_checkpoint(config, state_dict, str(tmp_path / 'workdir'))

  rng = np.random.default_rng(0)
  test_labels = rng.permutation(np.repeat(np.arange(10), 4))
  splits = {
      'train': (np.repeat(np.arange(10), 40), np.arange(400)),
      'test': (test_labels, rng.permutation(40)),
  }
  config.eval_only = True
  with mock_tfds_cifar(splits):
    results = loop.train_and_evaluate(config, str(tmp_path / 'workdir'))

  restored = latest_params(str(tmp_path / 'workdir'))
  expected = from_torch_state_dict(models.ResNet32(10), state_dict)['params']
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
  with torch.no_grad():
    predictions = (
        torch_model(
            torch_resnet32.torch_inputs(_mock_images(40), CIFAR_MEAN, CIFAR_STD)
        )
        .argmax(1)
        .numpy()
    )
  torch_top1 = float(np.mean(predictions == test_labels))
  assert results['last']['test']['top1'] == pytest.approx(torch_top1)


@pytest.mark.slow
def test_command_refuses_a_mismatched_checkpoint_in_one_line(tmp_path):
  checkpoint = tmp_path / 'resnet50.pth'
  torch.save(
      torch_models.ResNet(num_classes=10, nbn=True).state_dict(), checkpoint
  )
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'nbn_jax.convert',
          f'--checkpoint={checkpoint}',
          f'--config={ROOT / "configs" / "cifar10_lt.py"}',
          f'--workdir={tmp_path / "workdir"}',
      ],
      cwd=ROOT,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: checkpoint key '), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'workdir' / 'checkpoints').exists()
