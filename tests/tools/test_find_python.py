"""tools/find_python.sh: the CPython 3.12 `make` builds .venv with, or one
line saying what to install or set.

Each case runs the script with a PATH holding only the fakes it sets up.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[2]
SCRIPT = ROOT / 'tools' / 'find_python.sh'
BASH = '/bin/bash'


def _fake(path: pathlib.Path, body: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(f'#!{BASH}\n{body}\n')
  path.chmod(0o755)
  return path


def _find(path: pathlib.Path | str, **env) -> subprocess.CompletedProcess:
  """The script's run with only `path` (folders, ':'-joined) as PATH."""
  return subprocess.run(
      [BASH, str(SCRIPT)],
      env={'PATH': str(path), **env},
      capture_output=True,
      text=True,
      timeout=60,
  )


def _error_line(result: subprocess.CompletedProcess) -> str:
  assert result.returncode == 1 and not result.stdout
  [line] = result.stderr.splitlines()
  assert line.startswith('error: ')
  return line


def _pyenv(tmp_path, installed: list[str]) -> str:
  """PATH with pyenv's shims and pyenv, whose python3.12 shim cannot run,
  and which has the `installed` versions."""
  root = tmp_path / 'pyenv'
  _fake(
      root / 'shims' / 'python3.12',
      'echo "pyenv: version \\`3.12.9\' is not installed (set by '
      '/repo/.python-version)" >&2; exit 1',
  )
  versions = '\n'.join(installed)
  _fake(
      tmp_path / 'bin' / 'pyenv',
      f'case $1 in root) echo {root};; versions) printf "{versions}\\n";; esac',
  )
  return f'{root}/shims:{tmp_path}/bin'


def test_a_working_python_3_12_is_printed(tmp_path):
  (tmp_path / 'bin').mkdir()
  os.symlink(sys.executable, tmp_path / 'bin' / 'python3.12')
  result = _find(tmp_path / 'bin')
  assert result.returncode == 0, result.stderr
  version = subprocess.run(
      [result.stdout.strip(), '-c', 'import sys; print(sys.version_info[:2])'],
      capture_output=True,
      text=True,
  ).stdout
  assert version.strip() == '(3, 12)'


def test_an_unusable_pyenv_shim_names_the_installed_3_12(tmp_path):
  bin_dir = _pyenv(tmp_path, ['3.11.7', '3.12.4', '3.12.4/envs/x', '3.13.0'])
  line = _error_line(_find(bin_dir))
  assert 'pyenv shim' in line and "3.12.9' is not installed" in line
  assert 'PYENV_VERSION=3.12.4 make quickstart' in line


def test_a_pyenv_without_3_12_says_to_install_it(tmp_path):
  line = _error_line(_find(_pyenv(tmp_path, ['3.11.7'])))
  assert 'pyenv shim and pyenv has no CPython 3.12' in line
  assert 'run pyenv install 3.12' in line


def test_a_3_12_without_venv_says_what_to_install(tmp_path):
  _fake(
      tmp_path / 'bin' / 'python3.12',
      'case $2 in *ensurepip*) exit 1;; *) echo "$0";; esac',
  )
  line = _error_line(_find(tmp_path / 'bin'))
  assert 'without venv/ensurepip' in line and 'python3.12-venv' in line


def test_a_wrong_python_setting_is_named(tmp_path):
  other = _fake(tmp_path / 'bin' / 'python3.11', 'exit 0')
  line = _error_line(_find(tmp_path / 'bin', PYTHON=str(other)))
  assert f'PYTHON={other} is not a working CPython 3.12' in line


def test_no_python_at_all_says_what_to_install(tmp_path):
  _fake(tmp_path / 'bin' / 'python3', 'exit 0')  # answers, but not 3.12
  line = _error_line(_find(tmp_path / 'bin'))
  assert 'no CPython 3.12 found' in line and 'are not 3.12' in line
