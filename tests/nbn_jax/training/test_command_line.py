"""command_line: config files checked as the command line's overrides are."""

import importlib.machinery
import os
import pathlib
import subprocess
import sys

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


# A library's start-up: absl's notice, an INFO record, a warning, a
# multi-line INFO record of TensorFlow's CPU check, and an error.
START_UP = (
    'WARNING: All log messages before absl::InitializeLog() is called are '
    'written to STDERR\n'
    'I0000 00:00:1796594064.662938   28174 port.cc:153] oneDNN custom '
    'operations are on.\n'
    'W0000 00:00:1796594064.7 28174 gpu.cc:9] no GPU found\n'
    'I0000 00:00:1796594064.730542   28174 cpu_feature_guard.cc:227] This '
    'TensorFlow binary is optimized to use available CPU instructions in '
    'performance-critical operations.\n'
    'To enable the following instructions: AVX2 FMA, in other operations, '
    'rebuild TensorFlow with the appropriate compiler flags.\n'
    'E0000 00:00:1796594064.8 28174 real.cc:1] a real error\n'
)


def test_tensorflows_start_up_lines_are_left_out_and_the_rest_kept(
    tmp_path, monkeypatch, capfd
):
  """A module printing START_UP from C (file descriptor 2) as it loads."""
  (tmp_path / 'noisy_library.py').write_text(
      f'import os\nos.write(2, {START_UP.encode()!r})\n'
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(sys, 'meta_path', list(sys.meta_path))
  sys.meta_path.insert(
      0,
      command_line.QuietImport(
          'noisy_library', command_line.TENSORFLOW_START_NOISE
      ),
  )
  capfd.readouterr()
  import noisy_library  # pylint: disable=import-outside-toplevel

  assert capfd.readouterr().err == (
      'W0000 00:00:1796594064.7 28174 gpu.cc:9] no GPU found\n'
      'E0000 00:00:1796594064.8 28174 real.cc:1] a real error\n'
  )
  assert isinstance(
      noisy_library.__loader__, importlib.machinery.SourceFileLoader
  )
  assert not any(isinstance(f, command_line.QuietImport) for f in sys.meta_path)
  monkeypatch.delitem(sys.modules, 'noisy_library')


@pytest.mark.slow  # imports TensorFlow in a fresh process
@pytest.mark.parametrize(
    'command, error',
    [
        (
            'import train\ntrain.main(["train.py"])',
            'error: --config is required',
        ),
        (
            (
                'from nbn_jax.training import conversion\n'
                'conversion.main(["convert"])'
            ),
            'error: --checkpoint, --config and --workdir are required.',
        ),
    ],
)
def test_train_py_and_the_converter_start_tensorflow_quietly(command, error):
  """Each command, then TensorFlow (as a pipeline imports it): the
  command's own line alone on stderr."""
  environment = dict(os.environ, JAX_PLATFORMS='cpu')
  environment.pop('TF_CPP_MIN_LOG_LEVEL', None)  # tests/conftest.py's
  result = subprocess.run(
      [sys.executable, '-c', f'{command}\nimport tensorflow\n'],
      cwd=ROOT,
      env=environment,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr
  assert result.stderr.splitlines() == [result.stderr.splitlines()[0]]
  assert result.stderr.startswith(error), result.stderr
