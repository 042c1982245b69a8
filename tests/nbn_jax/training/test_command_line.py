"""command_line: config files checked as the command line's overrides are."""

import pathlib

import pytest

from configs import default, quickstart
from nbn_jax.training import command_line
from nbn_jax.training import workdir as workdir_lib

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


def test_a_recorded_config_reads_back_with_new_fields_at_their_defaults():
  """config.json from before a field existed (ldam_max_m): its default;
  JSON's lists: the tuples of tuple fields."""
  recorded = quickstart.get_config().to_dict()
  del recorded['ldam_max_m']
  recorded['lr_decay_epochs'] = [45.0, 55.0]
  config = command_line.config_of_record(recorded, 'W/config.json')
  assert config.ldam_max_m == default.get_config().ldam_max_m
  assert config.lr_decay_epochs == (45.0, 55.0)
  assert config.model == 'ResNet8'


def test_a_recorded_field_this_trainer_lacks_is_refused():
  recorded = quickstart.get_config().to_dict() | {'old_field': 1}
  with pytest.raises(command_line.UsageError) as error:
    command_line.config_of_record(recorded, 'W/config.json')
  assert str(error.value) == (
      'W/config.json sets config.old_field, a field this version of the '
      'trainer does not have; give the config to use with --config.'
  )


def test_the_workdirs_config_is_what_it_recorded(tmp_path):
  config = quickstart.get_config()
  config.num_runs = 3
  workdir_lib.record_config(str(tmp_path), config.to_dict())
  assert command_line.workdir_config(str(tmp_path)) == config
  with pytest.raises(command_line.UsageError, match='holds no config.json'):
    command_line.workdir_config(str(tmp_path / 'nothing'))


@pytest.mark.parametrize(
    'argv, evaluates',
    [
        (['--config.eval_only=True'], True),
        (['--config.eval_only', 'true'], True),
        (['--config.eval_only=1'], True),
        (['--config.eval_only=False'], False),
        ([], False),
    ],
)
def test_an_evaluation_is_asked_for_by_eval_only(argv, evaluates):
  assert command_line.asks_to_evaluate(['train.py', *argv]) == evaluates


def test_an_evaluation_from_the_recorded_config_takes_the_data_fields_only():
  command_line.check_evaluation_overrides([
      'train.py',
      '--config.eval_only=True',
      '--config.data_dir=/data',
      '--config.data_source=jpeg',
      '--config.eval_batch_size=64',
  ])
  with pytest.raises(
      command_line.UsageError, match=r'^--config.norm: an evaluation from'
  ):
    command_line.check_evaluation_overrides(['train.py', '--config.norm=bn'])
  with pytest.raises(
      command_line.UsageError, match='did you mean config.data_dir'
  ):
    command_line.check_evaluation_overrides(['train.py', '--config.data_dri=x'])
