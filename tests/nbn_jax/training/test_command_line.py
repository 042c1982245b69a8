"""command_line: config files checked as the command line's overrides are."""

import pathlib

import pytest

from configs import default
from nbn_jax.training import command_line

ROOT = pathlib.Path(__file__).parents[3]


@pytest.mark.parametrize(
    'name', sorted(p.stem for p in (ROOT / 'configs').glob('[!_]*.py'))
)
def test_every_shipped_config_passes(name):
  argument = ':quickstart' if name == 'crt' else ''
  command_line.load_config_file(f'{ROOT / "configs" / name}.py{argument}')


def test_the_second_stage_config_takes_its_benchmark_after_a_colon():
  config = command_line.load_config_file(
      f'{ROOT / "configs" / "crt.py"}:quickstart'
  )
  assert (config.dataset, config.trainable, config.sampler) == (
      'digits',
      'classifier',
      'class',
  )
  assert config.finetune_from == ''  # the user names the first stage


def test_a_misspelt_field_in_a_file_is_named_with_the_closest():
  config = default.get_config()
  config.lerning_rate = 0.1
  with pytest.raises(command_line.UsageError) as error:
    command_line.check_config_fields('c.py', config)
  assert str(error.value) == (
      '--config=c.py sets an unknown field config.lerning_rate; did you mean '
      'config.learning_rate?'
  )


def test_a_config_lacking_fields_names_five_of_them():
  config = default.get_config()
  for field in (
      'deterministic',
      'seed',
      'num_runs',
      'run_axis',
      'sampler',
      'eval_only',
  ):
    del config[field]
  with pytest.raises(command_line.UsageError) as error:
    command_line.check_config_fields('c.py', config)
  assert str(error.value) == (
      '--config=c.py: its get_config() returns no config.deterministic, '
      'config.eval_only, config.num_runs, config.run_axis, config.sampler '
      'and 1 more; start it from configs/default.py (config = '
      'default.get_config()) as the shipped configs do.'
  )


def test_an_override_of_a_field_the_config_lacks_is_refused():
  with pytest.raises(
      command_line.UsageError,
      match=r'^unknown field config.seeds; did you mean config.seed\?$',
  ):
    command_line.check_override_names(
        ['train.py', '--config.seeds=3'], default.get_config()
    )
