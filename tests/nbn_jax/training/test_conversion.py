"""The converter's command line: a PyTorch checkpoint file -> a workdir."""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import train
from configs import cifar10_lt
from input_pipeline.datasets import CIFAR_MEAN, CIFAR_STD
from nbn_jax import models
from nbn_jax.convert import CheckpointMismatchError, from_torch_state_dict
from nbn_jax.training import conversion, trained
from nbn_jax.training.checkpoints import latest_params
from nbn_jax.training import WorkdirError
from nbn_jax.training import workdir as workdir_lib
from nbn_jax.training.conversion import load_torch_state_dict, write_workdir
from tests import torch_models, torch_resnet32, torch_ride
from tests.fake_data import mock_tfds_cifar
from tests.nbn_jax.test_convert import ride_logit_differences

ROOT = pathlib.Path(__file__).parents[3]


def _convert(*flags):
  return subprocess.run(
      [sys.executable, '-m', 'nbn_jax.convert', *flags],
      cwd=ROOT,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_without_pytorch_the_error_says_what_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails
  with pytest.raises(CheckpointMismatchError, match='pip install torch'):
    load_torch_state_dict(str(tmp_path / 'model.pth'))


def _saved(path, obj, **kwargs) -> str:
  torch.save(obj, path, **kwargs)
  return str(path)


def _truncated(path) -> str:
  data = pathlib.Path(_saved(path, {'w': torch.ones(64)})).read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return str(path)


# {case: (makes the file at a path, words of its one line)}
UNREADABLE = {
    'random_bytes': (
        lambda p: _write_bytes(p, os.urandom(4096)),
        'is not a PyTorch checkpoint',
    ),
    'text': (
        lambda p: _write_bytes(p, b'hello\n'),
        'is not a PyTorch checkpoint',
    ),
    'a_folder': (
        lambda p: p.mkdir() or str(p),
        'cannot be read (Is a directory)',
    ),
    'truncated_zip': (
        _truncated,
        (
            'is a damaged PyTorch file (PytorchStreamReader failed reading zip '
            'archive: failed finding central directory). Copy or download it '
            'again.'
        ),
    ),
    'not_a_state_dict': (
        lambda p: _saved(p, [torch.ones(2)]),
        'holds an object of type list, not a state dict',
    ),
    'legacy_format_not_a_state_dict': (
        lambda p: _saved(p, 3, _use_new_zipfile_serialization=False),
        'holds an object of type int, not a state dict',
    ),
}


def _write_bytes(path, data: bytes) -> str:
  path.write_bytes(data)
  return str(path)


@pytest.mark.parametrize('trust', [False, True])
@pytest.mark.parametrize('make, words', UNREADABLE.values(), ids=UNREADABLE)
def test_a_file_that_is_not_a_readable_checkpoint_says_what_it_is(
    tmp_path, make, words, trust
):
  path = make(tmp_path / 'model.pth')
  with pytest.raises(CheckpointMismatchError) as error:
    load_torch_state_dict(path, trust=trust)
  message = str(error.value)
  assert message.startswith(f'--checkpoint={path} ') and '\n' not in message
  assert words in message
  assert 'trust' not in message  # trusting would not help


def test_a_trusted_file_needing_its_authors_code_says_where_to_run(tmp_path):
  # A pickled object whose class only the author's code defines.
  path = tmp_path / 'model.pth'
  torch.save({'model': _AuthorsModel()}, path)
  module, name = _AuthorsModel.__module__, _AuthorsModel.__qualname__
  del module
  with pytest.MonkeyPatch.context() as patch:
    patch.delattr(sys.modules[__name__], name)  # as without their code
    with pytest.raises(CheckpointMismatchError) as error:
      load_torch_state_dict(str(path), trust=True)
  message = str(error.value)
  assert message.startswith(
      f"--checkpoint={path} needs the code it was saved with (Can't get "
      "attribute '_AuthorsModel'"
  ), message
  assert message.endswith(
      "save the model's state dict alone there, torch.save("
      'model.state_dict(), path), and convert that.'
  )
  assert 'damaged' not in message


class _AuthorsModel:
  """Stands for a model class of the checkpoint author's own code."""


def test_objects_besides_tensors_need_trust_and_load_with_it(tmp_path):
  path = _saved(
      tmp_path / 'model.pth',
      {'state_dict': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=0.1)},
  )
  with pytest.raises(CheckpointMismatchError) as error:
    load_torch_state_dict(path)
  assert str(error.value) == (
      f'--checkpoint={path} holds Python objects besides tensors (e.g. '
      'argparse.Namespace), which are read only by running its pickle code; '
      'if the file comes from a source you trust, add --trust_checkpoint.'
  )
  loaded = load_torch_state_dict(path, trust=True)
  np.testing.assert_array_equal(loaded['w'], np.ones(2, np.float32))


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
  """torch.save -> convert -> train.py --workdir --config.eval_only=True,
  from the config the converter recorded: PyTorch's test accuracy."""
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
  write_workdir(config, state_dict, str(tmp_path / 'workdir'))

  rng = np.random.default_rng(0)
  test_labels = rng.permutation(np.repeat(np.arange(10), 4))
  splits = {
      'train': (np.repeat(np.arange(10), 40), np.arange(400)),
      'test': (test_labels, rng.permutation(40)),
  }
  with mock_tfds_cifar(splits):
    status = train.main([
        'train.py',
        f'--workdir={tmp_path / "workdir"}',
        '--config.eval_only=True',
        f'--config.data_dir={tmp_path / "tfds"}',  # where its data is now
    ])
  assert status == 0
  results = json.loads((tmp_path / 'workdir' / 'results_eval.json').read_text())
  assert results['status'] == 'converted'
  assert results['config']['data_dir'] == str(tmp_path / 'tfds')

  restored = latest_params(str(tmp_path / 'workdir'))
  expected = from_torch_state_dict(models.ResNet32(10), state_dict)['params']
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
  # Loaded for one's own apply: the trainer's evaluation, logit for logit.
  run = trained.load(str(tmp_path / 'workdir'))
  ours = run.logits(_mock_images(40))
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
  np.testing.assert_array_equal(ours.argmax(1), predictions)


@pytest.mark.slow
def test_command_refuses_a_mismatched_checkpoint_in_one_line(tmp_path):
  checkpoint = tmp_path / 'resnet50.pth'
  torch.save(
      torch_models.ResNet(num_classes=10, nbn=True).state_dict(), checkpoint
  )
  result = _convert(
      f'--checkpoint={checkpoint}',
      f'--config={ROOT / "configs" / "cifar10_lt.py"}',
      f'--workdir={tmp_path / "workdir"}',
  )
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: checkpoint key '), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'workdir' / 'checkpoints').exists()


def _tiny_ride_nbn_lr(num_classes=10):
  """The reference's ride_nbn_lr network with one block per stage."""
  torch.manual_seed(0)
  return torch_models.randomize(
      torch_ride.RIDEResNet(
          layers=(1, 1, 1, 1), num_classes=num_classes, head='linear_bn'
      )
  )


def _authors_checkpoint(torch_model):
  """What the reference's main.py saves: DDP keys inside 'state_dict'."""
  optimizer = torch.optim.SGD(torch_model.parameters(), 0.1, momentum=0.9)
  return {
      'epoch': 200,
      'arch': 'resnet50_ride_NBN',
      'state_dict': {
          f'module.{k}': v for k, v in torch_model.state_dict().items()
      },
      'best_acc1': torch.tensor(55.0),
      'optimizer': optimizer.state_dict(),
  }


@pytest.mark.parametrize('save_format', ['authors', 'bare'])
def test_both_save_formats_of_a_ride_checkpoint_give_its_logits(
    tmp_path, save_format
):
  torch_model = _tiny_ride_nbn_lr()
  checkpoint = tmp_path / 'ride.pth'
  torch.save(
      _authors_checkpoint(torch_model)
      if save_format == 'authors'
      else torch_model.state_dict(),
      checkpoint,
  )
  model = models.RIDEResNet14(10, logit_norm=True)
  variables = from_torch_state_dict(
      model, load_torch_state_dict(str(checkpoint))
  )
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3))
  mean, experts = ride_logit_differences(torch_model, model, variables, images)
  assert mean < 1e-5 and experts < 1e-5


@pytest.mark.slow
def test_command_converts_a_ride_checkpoint_and_refuses_it_for_resnet50(
    tmp_path,
):
  """ImageNet-LT's config: with the RIDE model the authors' logits come
  back from the workdir; with its ResNet-50 the one line says RIDE."""
  torch_model = _tiny_ride_nbn_lr(num_classes=1000)
  checkpoint = tmp_path / 'ride_nbn_lr.pth'
  torch.save(_authors_checkpoint(torch_model), checkpoint)
  config = ROOT / 'configs' / 'imagenet_lt.py'
  refused = _convert(
      f'--checkpoint={checkpoint}',
      f'--config={config}',
      f'--workdir={tmp_path / "refused"}',
  )
  assert refused.returncode == 1
  last = refused.stderr.strip().splitlines()[-1]
  assert last.startswith("error: checkpoint key 'fc.bias' is missing"), last
  assert '--config.model=RIDEResNet14 --config.num_experts=3' in last
  assert 'Traceback' not in refused.stderr
  assert not (tmp_path / 'refused' / 'checkpoints').exists()

  converted = _convert(
      f'--checkpoint={checkpoint}',
      f'--config={config}',
      '--config.model=RIDEResNet14',
      '--config.logit_norm=True',
      '--config.half_precision=False',
      f'--workdir={tmp_path / "workdir"}',
  )
  assert converted.returncode == 0, converted.stderr[-2000:]
  run = trained.load(str(tmp_path / 'workdir'))
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  with torch.no_grad():
    expected = torch_model(
        torch_resnet32.torch_inputs(images, run.spec.mean, run.spec.std)
    ).numpy()
  ours = run.logits(images)
  assert np.abs(ours - expected).max() / np.abs(expected).max() < 1e-5


def test_help_describes_the_command_and_exits_0():
  result = _convert('--help')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'python -m nbn_jax.convert --checkpoint=' in result.stdout
  assert '--[no]trust_checkpoint' in result.stdout
  assert '--source: <network|plain_bn>' in result.stdout


def test_an_unknown_source_is_one_line(tmp_path, capsys):
  status = conversion.main([
      'nbn_jax.convert',
      f'--checkpoint={tmp_path / "resnet152.pth"}',
      '--source=torchvision',
      f'--config={ROOT / "configs" / "imagenet_lt.py"}',
      f'--workdir={tmp_path / "workdir"}',
  ])
  error = capsys.readouterr().err.strip()
  assert status == 1 and '\n' not in error
  assert error.startswith('error: flag --source=torchvision: value should be')
  assert not (tmp_path / 'workdir').exists()


def _finished_run(workdir: pathlib.Path) -> dict:
  """Set-up: a workdir holding a run (its config and a checkpoint)."""
  workdir.mkdir(parents=True)
  (workdir / 'config.json').write_text('{"model": "ResNet32"}')
  (workdir / 'checkpoints' / '472').mkdir(parents=True)
  return _snapshot(workdir)


def _snapshot(folder: pathlib.Path) -> dict:
  return {
      str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
      for p in sorted(folder.rglob('*'))
  }


def test_a_workdir_holding_a_run_is_refused_and_left_as_it_was(tmp_path):
  workdir = tmp_path / 'workdir'
  before = _finished_run(workdir)
  with pytest.raises(WorkdirError) as error:
    write_workdir(_cifar_config(), {}, str(workdir))
  assert str(error.value) == (
      f'{workdir} holds a run already (config.json and checkpoints); a '
      'converted checkpoint goes into a new --workdir.'
  )
  assert _snapshot(workdir) == before


def test_a_workdir_in_use_by_a_run_is_refused(tmp_path):
  workdir = tmp_path / 'workdir'
  with workdir_lib.claim(str(workdir), _cifar_config().to_dict()):
    with pytest.raises(WorkdirError, match=f'is in use by pid {os.getpid()}'):
      write_workdir(_cifar_config(), {}, str(workdir))


def test_the_command_checks_the_config_as_train_py_does(tmp_path):
  result = _convert(
      f'--checkpoint={tmp_path / "x.pth"}',
      f'--config={ROOT / "configs" / "cifar10_lt.py"}',
      '--config.lerning_rate=0.1',
      f'--workdir={tmp_path / "workdir"}',
  )
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: unknown field config.lerning_rate; did you mean '
      'config.learning_rate?'
  )
  assert not (tmp_path / 'workdir').exists()
