"""Config checks name the field; the model follows the config."""

import jax
import pytest

from configs import default, imagenet_lt
from nbn_jax import NormalizedBatchNorm
from nbn_jax.training import experiment


@pytest.mark.parametrize(
    'field, value, message',
    [
        ('dataset', 'cifar1000', "config.dataset='cifar1000' is not one of"),
        ('norm', 'batchnorm', "config.norm='batchnorm' is not one of"),
        ('sampler', 'balanced', "config.sampler='balanced' is not one of"),
        ('bn_scope', 'host', "config.bn_scope='host' is not one of"),
        ('batch_size', 0, 'config.batch_size=0 must be > 0'),
        (
            'batch_size',
            100,
            'config.batch_size=100 is not divisible by the 8 devices',
        ),
        ('eval_batch_size', 12, 'config.eval_batch_size=12 is not divisible'),
    ],
)
def test_bad_values_name_the_field(field, value, message):
  config = default.get_config()
  config[field] = value
  with pytest.raises(experiment.ConfigError, match=message):
    experiment.check_config(config, device_count=8)


def test_on_device_input_needs_in_memory_data():
  config = imagenet_lt.get_config()
  config.input_path = 'on_device'
  with pytest.raises(
      experiment.ConfigError,
      match='input_path=on_device needs data held in memory',
  ):
    experiment.check_config(config, device_count=8)


def test_bn_groups_must_divide_the_devices():
  config = default.get_config()
  config.bn_scope, config.bn_group_size = 'group', 3
  with pytest.raises(
      experiment.ConfigError, match='bn_group_size=3 must divide the 8 devices'
  ):
    experiment.check_config(config, device_count=8)


def test_default_configs_pass():
  experiment.check_config(default.get_config(), device_count=8)
  experiment.check_config(imagenet_lt.get_config(), device_count=8)


def test_model_follows_norm_placement_and_scope():
  config = default.get_config()
  config.nbn_stages, config.nbn_block_norms = (1, 2), ('bn1',)
  config.bn_scope, config.bn_group_size = 'group', 2
  model = experiment.build_model(
      config, num_classes=10, dtype=jax.numpy.float32
  )
  assert model.bn_axis_name == 'bn_group'
  assert model.nbn_placement.stages == (1, 2)
  assert model.nbn_placement.block_norms == ('bn1',)
  config.norm = 'bn'
  assert experiment.build_model(config, 10, jax.numpy.float32).norm == 'bn'
