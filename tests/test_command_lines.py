"""Every command line of the repository answers --help: it says what it does
and how to run it, exits 0 and runs nothing.

The commands are found, not listed: train.py, every module with a
``__main__`` (``python -m``), every subcommand of those (``add_parser``),
every executable shell script and the Makefile's `help`. A new command
without --help fails here.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from configs import default
from nbn_jax.training import command_line

ROOT = pathlib.Path(__file__).parents[1]
PACKAGES = ('nbn_jax', 'input_pipeline', 'configs', 'bench')
SHELL_FOLDERS = ('.ci', 'tools', 'bench')


def _python_commands() -> list[tuple[list[str], str]]:
  """(argv, the invocation its help must show) of each Python command."""
  commands = [(['train.py'], 'python train.py')]
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob('*.py')):
      module = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
      if path.name == '__main__.py':
        module = module.removesuffix('.__main__')
      elif "if __name__ == '__main__':" not in path.read_text():
        continue
      commands.append((['-m', module], f'python -m {module}'))
  return commands


def _source(argv: list[str]) -> pathlib.Path:
  """The file a Python command's argv runs."""
  if argv[0] != '-m':
    return ROOT / argv[0]
  module = ROOT / argv[1].replace('.', '/')
  return (
      module / '__main__.py' if module.is_dir() else module.with_suffix('.py')
  )


def _subcommands() -> list[tuple[list[str], str]]:
  """(argv, the invocation its help must show) of each subcommand of a
  Python command (its argparse `add_parser`)."""
  return [
      ([*argv, name], f'{invocation} {name}')
      for argv, invocation in _python_commands()
      for name in re.findall(
          r"add_parser\(\s*'(\w+)'", _source(argv).read_text()
      )
  ]


def _shell_commands() -> list[tuple[list[str], str]]:
  """(argv, invocation) of each executable shell script (sourced ones, such
  as bench/gpu/gpu_lib.sh, have no #! line and are not commands)."""
  commands = []
  for folder in SHELL_FOLDERS:
    for path in sorted((ROOT / folder).rglob('*')):
      if path.is_file() and path.read_bytes().startswith(
          b'#!/usr/bin/env bash'
      ):
        relative = str(path.relative_to(ROOT))
        invocation = relative if relative == '.ci/run' else f'bash {relative}'
        commands.append((['bash', relative], invocation))
  return commands


def _help(argv: list[str]) -> str:
  """The output of `argv`, which must exit 0 without a traceback."""
  result = subprocess.run(
      argv,
      cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      timeout=120,  # a command that ignores --help and runs is stopped
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  return result.stdout


def _params(commands):
  return [pytest.param(argv, inv, id=inv) for argv, inv in commands]


def test_the_commands_are_found():
  python = {invocation for _, invocation in _python_commands()}
  shell = {invocation for _, invocation in _shell_commands()}
  assert {
      'python train.py',
      'python -m nbn_jax.convert',
      'python -m bench.timing.xla_cpu_probes',
      'python -m bench.experiments.sweep',
  } <= python
  assert {
      '.ci/run',
      'bash tools/find_python.sh',
      'bash bench/gpu/gpu_evidence.sh',
  } <= shell
  assert 'bash bench/gpu/gpu_lib.sh' not in shell


def _collapsed_continuation(text: str) -> str | None:
  """A usage line whose ``\\`` continuation Python joined to the next line
  (a docstring that is not raw), or None. A comment aligned after a usage
  line is no continuation."""
  found = re.search(r'^ *python [^#\n]*\S {5,}[^\s#].*$', text, re.M)
  return found and found.group(0)


@pytest.mark.slow  # each starts Python and imports jax, most TensorFlow
@pytest.mark.parametrize('argv, invocation', _params(_python_commands()))
def test_python_commands_answer_help(argv, invocation):
  text = _help([sys.executable, *argv, '--help'])
  assert invocation in text
  assert _collapsed_continuation(text) is None


@pytest.mark.slow
@pytest.mark.parametrize('argv, invocation', _params(_subcommands()))
def test_each_subcommand_has_a_help_of_its_own(argv, invocation):
  text = _help([sys.executable, *argv, '--help'])
  assert re.match(rf'usage: {re.escape(invocation)}\s', text), text[:300]


def test_the_subcommands_are_found():
  assert {
      'python -m bench.experiments.cifar10_lt_accuracy run',
      'python -m bench.experiments.cifar10_lt_accuracy report',
      'python -m bench.experiments.sweep run',
      'python -m bench.experiments.sweep report',
  } <= {invocation for _, invocation in _subcommands()}


def test_a_joined_usage_line_is_found():
  joined = '    python train.py --workdir=/tmp/c100         [--config.x=1]'
  assert _collapsed_continuation(f'Trains.\n\n{joined}\n') == joined
  assert (
      _collapsed_continuation('    python train.py \\\n        [--x]\n') is None
  )
  assert _collapsed_continuation('    python -m a.b          # K = 2') is None


def test_train_py_help_lists_every_config_field():
  text = _help([sys.executable, 'train.py', '--help'])
  assert 'configs/default.py defines each' in text
  for field in command_line.fields(default.get_config()):
    assert re.search(rf'^  --config\.{field} +\S', text, re.M), field


@pytest.mark.slow
@pytest.mark.parametrize(
    'module, says',
    [
        ('bench.experiments.sweep', 'how many seeds per cell, a count K'),
        ('bench.experiments.cifar10_lt_accuracy', 'a comma-separated list'),
    ],
)
def test_seeds_say_whether_they_are_a_count_or_a_list(module, says):
  text = _help([sys.executable, '-m', module, 'run', '--help'])
  assert re.search(rf'--seeds \S+ +{says}', text), text


@pytest.mark.parametrize('argv, invocation', _params(_shell_commands()))
def test_shell_commands_answer_help(argv, invocation):
  assert invocation in _help([*argv, '--help'])


def test_make_help_names_the_two_commands():
  text = _help(['make', '--no-print-directory', 'help'])
  assert 'make quickstart ' in text and 'make test ' in text, text
