"""Every command line of the repository answers --help: it says what it does
and how to run it, exits 0 and runs nothing.

The commands are found, not listed: train.py, every module with a
``__main__`` (``python -m``), every executable shell script and the
Makefile's `help`. A new command without --help fails here.
"""

import os
import pathlib
import subprocess
import sys

import pytest

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


@pytest.mark.slow  # each starts Python and imports jax, most TensorFlow
@pytest.mark.parametrize('argv, invocation', _params(_python_commands()))
def test_python_commands_answer_help(argv, invocation):
  assert invocation in _help([sys.executable, *argv, '--help'])


@pytest.mark.parametrize('argv, invocation', _params(_shell_commands()))
def test_shell_commands_answer_help(argv, invocation):
  assert invocation in _help([*argv, '--help'])


def test_make_help_names_the_two_commands():
  text = _help(['make', '--no-print-directory', 'help'])
  assert 'make quickstart ' in text and 'make test ' in text, text
