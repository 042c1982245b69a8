"""configs/places_lt.py, and the path docs/places_lt.md takes: ImageNet
weights in torchvision's layout converted into a workdir, then Places-LT
fine-tuned from it with a new 365-way classifier.

End to end with ResNet-14 (torchvision's layout, one block per stage) in
place of ResNet-152, whose conversion alone compiles for about 2.5 minutes
on a CPU; the ResNet-152 conversion itself is tested against torchvision in
tests/nbn_jax/test_convert.py.
"""

import json
import pathlib

import numpy as np
import pytest
import torch

import input_pipeline as ip
import train
from configs import places_lt
from nbn_jax.training import checks, conversion
from nbn_jax.training import plan as plan_lib
from nbn_jax.training.checkpoints import latest_params
from tests import torch_models
from tests.fake_data import write_jpeg_dataset
from tests.test_readme import command_lines

ROOT = pathlib.Path(__file__).parents[1]
CONFIGS = ROOT / 'configs'
GUIDE = ROOT / 'docs' / 'places_lt.md'
PLACES_LT_TRAIN_SIZE = 62_500


def test_the_guides_commands_are_valid_command_lines():
  """docs/places_lt.md's convert and train.py commands parse and pass the
  config checks on 8 devices (their data is not here)."""
  converts = command_lines('python -m nbn_jax.convert', GUIDE)
  trains = command_lines('python train.py', GUIDE)
  assert (len(converts), len(trains)) == (1, 3)
  values = conversion.parse_flags(converts[0])
  assert (values.source, values.config.model) == ('plain_bn', 'ResNet152')
  for argv in trains:
    checks.check_config(
        train.parse_flags(argv).config, device_count=8, process_count=1
    )


def test_the_schedule_is_oltrs_thirty_epochs_at_batch_128():
  """Places-LT's 62,500 training images: 488.3 steps an epoch, 14,649 in
  all; the classifier at 0.1, the backbone at 0.001, both x0.1 at epochs 10
  and 20."""
  config = places_lt.get_config()
  config.model = 'ResNet14'  # the schedule is the model's to ignore
  counts = np.full(365, PLACES_LT_TRAIN_SIZE // 365)
  counts[0] += PLACES_LT_TRAIN_SIZE - counts.sum()
  core = plan_lib.build_step_plan(
      config, ip.DATASETS['places_lt'], counts, (32, 32, 3)
  )
  assert core.length.steps_per_epoch == pytest.approx(62_500 / 128)
  assert core.length.total_steps == 14_649
  rate = lambda epoch: float(core.learning_rate(int(epoch * 62_500 / 128)))
  assert [rate(0), rate(9.9), rate(10.01), rate(20.01), rate(29.9)] == (
      pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])
  )
  assert config.backbone_lr_factor * config.learning_rate == 0.001
  assert (config.sampler, config.reinit_classifier) == ('instance', True)


def _places_lt_lists(tmp_path) -> list[str]:
  """Flags for a Places-LT-shaped list dataset: 365 classes, one Many
  (120 images), one Medium (50) and 363 Few (1) classes; val and test with
  two images of each kind of class."""
  root = str(tmp_path / 'images')
  lists = {}
  for split, counts in (
      ('train', [120, 50] + [1] * 363),
      ('val', [2, 2, 2]),
      ('test', [2, 2, 2]),
  ):
    lists[split] = str(tmp_path / f'{split}.txt')
    write_jpeg_dataset(root, lists[split], counts, split=split, size=(40, 36))
  return [
      f'--config.image_root={root}',
      *(f'--config.{split}_list={path}' for split, path in lists.items()),
  ]


@pytest.mark.slow
def test_places_lt_fine_tunes_converted_imagenet_weights(tmp_path):
  torch.manual_seed(0)
  torch_model = torch_models.randomize(
      torch_models.ResNet(layers=(1, 1, 1, 1), num_classes=1000, nbn=False)
  )
  checkpoint = tmp_path / 'resnet14-imagenet.pth'
  torch.save(torch_model.state_dict(), checkpoint)
  imagenet = tmp_path / 'imagenet'
  converted = conversion.main([
      'nbn_jax.convert',
      f'--checkpoint={checkpoint}',
      '--source=plain_bn',
      f'--config={CONFIGS / "imagenet_lt.py"}',
      '--config.model=ResNet14',
      f'--workdir={imagenet}',
  ])
  assert converted == 0

  places = tmp_path / 'places'
  status = train.main([
      'train.py',
      f'--workdir={places}',
      f'--config={CONFIGS / "places_lt.py"}',
      f'--config.finetune_from={imagenet}',
      '--config.model=ResNet14',
      *_places_lt_lists(tmp_path),
      '--config.image_size=32',
      '--config.resize_size=36',
      '--config.batch_size=8',  # one image on each of the 8 test devices
      '--config.eval_batch_size=8',
      '--config.half_precision=False',
      f'--config.num_epochs={2 * 8 / (120 + 50 + 363)}',  # 2 steps
  ])
  assert status == 0

  results = json.loads((places / 'results.json').read_text())
  assert results['first_stage'] == {
      'workdir': str(imagenet),
      'step': 0,  # the converted checkpoint's
      'converted_from': {'checkpoint': str(checkpoint), 'source': 'plain_bn'},
  }
  assert results['dataset'] == 'places_lt:train'
  assert results['last']['step'] == 2
  assert set(results['best_on_val']['test']) == {
      'top1',
      'top5',
      'many',
      'medium',
      'few',
  }
  # ImageNet's 1,000-way classifier gave way to a new 365-way one; the rest
  # started from the converted weights, moved only by two steps at the
  # backbone's small rate.
  first, second = latest_params(str(imagenet)), latest_params(str(places))
  assert first['fc']['kernel'].shape == (2048, 1000)
  assert second['fc']['kernel'].shape == (2048, 365)
  kernel = first['layer2_0']['conv2']['kernel']
  np.testing.assert_allclose(
      second['layer2_0']['conv2']['kernel'],
      kernel,
      atol=1e-3 * np.abs(kernel).max(),
  )
  assert float(second['nbn_alpha']) == pytest.approx(
      float(first['nbn_alpha']), rel=1e-3
  )
