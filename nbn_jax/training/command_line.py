"""What train.py and the converter share on their command lines.

A config file (``--config=configs/x.py[:arg]``) is loaded and checked as
the overrides on the command line are: every field it sets, and every field
overridden with ``--config.<field>=value``, must be a field of
`configs.default` (a misspelt one is named, with the closest field), and
the config must have every field the trainer reads. Each problem is one
`UsageError` line.

An evaluation of a workdir needs no config file: ``train.py --workdir=W
--config.eval_only=True`` evaluates from the config W recorded
(`workdir_config`), with overrides of the fields an evaluation may set
alone (`workdir.EVALUATION_FIELDS`: where the data is, batch sizes).

`quiet_tensorflow_start` keeps the lines TensorFlow's C++ libraries print
as they load (oneDNN, CPU instructions) off both commands' stderr.
"""

import contextlib
import difflib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Any, Mapping

import ml_collections

from configs import default
from nbn_jax.training import storage
from nbn_jax.training import workdir as workdir_lib

# The values absl reads as True for a boolean flag (any case).
TRUE_WORDS = ('true', 't', '1')


class UsageError(ValueError):
  """A bad command line or config file (one-line message)."""


def flag_value(argv: list[str], name: str) -> str | None:
  """The last value of --name=value or --name value in argv, if any."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every field's dotted name, nested ones included, in the config's order."""
  names = []
  for key, value in config.items():
    names.append(f'{prefix}{key}')
    if isinstance(value, ml_collections.ConfigDict):
      names += fields(value, f'{prefix}{key}.')
  return names


def fields_help() -> str:
  """Every config field with its default, for --help: where to find them."""
  config = default.get_config()
  names = [
      name
      for name in fields(config)
      if not isinstance(config[name], ml_collections.ConfigDict)
  ]
  width = max(len(name) for name in names) + len('--config.')
  listed = '\n'.join(
      f'  {"--config." + name:{width}}  {config[name]!r}' for name in names
  )
  return (
      'Config fields and their defaults (configs/default.py defines each and '
      'says\nwhat it means; a configs/*.py file changes some of them):\n'
      f'{listed}'
  )


def _unknown(field: str, known: list[str]) -> str:
  """'unknown field config.x; did you mean config.y?'"""
  close = difflib.get_close_matches(field, known, n=1)
  hint = f'; did you mean config.{close[0]}?' if close else '.'
  return f'unknown field config.{field}{hint}'


def _run_get_config(path: str) -> ml_collections.ConfigDict:
  file = path.split(':', 1)[0]  # config_flags passes 'file:arg' on to it
  if not os.path.isfile(file):
    raise UsageError(f'--config={path}: no such file.')
  spec = importlib.util.spec_from_file_location('_user_config', file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UsageError(
        f'--config={path}: syntax error at line {e.lineno}: {e.msg}.'
    ) from None
  except Exception as e:  # the file's own code failed
    raise UsageError(
        f'--config={path} failed to load: {type(e).__name__}: {e}'
    ) from None
  if not callable(getattr(module, 'get_config', None)):
    raise UsageError(f'--config={path} defines no get_config() function.')
  try:
    config = module.get_config(*path.split(':', 1)[1:])
  except Exception as e:
    raise UsageError(
        f'--config={path}: get_config() failed: {type(e).__name__}: {e}'
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(
        f'--config={path}: get_config() returned {config!r:.40} '
        f'({type(config).__name__}), not an ml_collections.ConfigDict.'
    )
  return config


def check_config_fields(path: str, config: ml_collections.ConfigDict):
  """UsageError if the config of file `path` has a field `configs.default`
  lacks (a misspelling, say) or lacks one it has."""
  known = fields(default.get_config())
  present = fields(config)
  unknown = [field for field in present if field not in known]
  if unknown:
    raise UsageError(f'--config={path} sets an {_unknown(unknown[0], known)}')
  missing = [field for field in known if field not in present]
  if missing:
    listed = ', '.join(f'config.{field}' for field in missing[:5])
    more = f' and {len(missing) - 5} more' if len(missing) > 5 else ''
    raise UsageError(
        f'--config={path}: its get_config() returns no {listed}{more}; '
        'start it from configs/default.py (config = default.get_config()) '
        'as the shipped configs do.'
    )


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs a config file's get_config() and checks its fields.

  Raises:
    UsageError: the file is missing or fails, or its config has a field
      the trainer does not know or lacks one it reads (one line).
  """
  config = _run_get_config(path)
  check_config_fields(path, config)
  return config


def _override_fields(argv: list[str]) -> list[str]:
  """The fields argv's --config.<field>[=value] flags set, in order."""
  return [
      arg[len('--config.') :].split('=', 1)[0]
      for arg in argv
      if arg.startswith('--config.')
  ]


def check_override_names(argv: list[str], config: ml_collections.ConfigDict):
  """UsageError for a --config.<field> that the config does not have."""
  known = fields(config)
  for field in _override_fields(argv):
    if field not in known:
      raise UsageError(_unknown(field, known))


def asks_to_evaluate(argv: list[str]) -> bool:
  """Whether argv sets --config.eval_only to True."""
  value = flag_value(argv, 'config.eval_only')
  return value is not None and value.lower() in TRUE_WORDS


def config_of_record(
    recorded: Mapping[str, Any], source: str
) -> ml_collections.ConfigDict:
  """The config a workdir recorded (config.json's fields), as a ConfigDict.

  A field added to `configs.default` since the run was recorded takes its
  default (the behaviour before it existed); lists become the tuples of
  tuple fields.

  Args:
    recorded: config.json's fields.
    source: where they come from, for the error message.

  Raises:
    UsageError: it has a field `configs.default` no longer has.
  """
  config = default.get_config()
  known = fields(config)
  for field, value in recorded.items():
    if field not in known:
      raise UsageError(
          f'{source} sets config.{field}, a field this version of the trainer '
          'does not have; give the config to use with --config.'
      )
    config[field] = value
  return config


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config `workdir` recorded (train.py's or the converter's).

  Raises:
    UsageError: it recorded none (not a workdir), or one with a field this
      trainer lacks.
    WorkdirError: the --workdir flag is bad, or config.json is unreadable.
  """
  resolved = storage.resolve(workdir)
  recorded = workdir_lib.recorded_config(resolved)
  if recorded is None:
    raise UsageError(
        f'--workdir={workdir} holds no {workdir_lib.CONFIG_FILE}: it is not a '
        'workdir that train.py or the converter wrote, so there is no config '
        'to evaluate it with; give --config.'
    )
  return config_of_record(
      recorded, storage.join(resolved, workdir_lib.CONFIG_FILE)
  )


def check_evaluation_overrides(argv: list[str]):
  """UsageError for a --config.<field> an evaluation from a workdir's own
  config does not take (`workdir.EVALUATION_FIELDS`)."""
  check_override_names(argv, default.get_config())
  allowed = sorted(workdir_lib.EVALUATION_FIELDS)
  for field in _override_fields(argv):
    if field not in allowed:
      raise UsageError(
          f'--config.{field}: an evaluation from the config the --workdir '
          f'recorded takes only {", ".join(allowed)}; to evaluate with '
          'another value of a field that changes the results, give --config '
          '(and --allow_config_change).'
      )


# What TensorFlow's C++ libraries print on stderr while `import tensorflow`
# loads them, before this program's logging: absl's notice, INFO records
# (oneDNN's, the CPU instructions') and the CPU instructions' second line.
# Warnings and errors (W, E, F records) and anything else are kept.
TENSORFLOW_START_NOISE = re.compile(
    r'WARNING: All log messages before absl::InitializeLog\(\) is called are'
    r' written to STDERR'
    r'|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*'
    r'|To enable the following instructions: .* rebuild TensorFlow with the'
    r' appropriate compiler flags\.'
)


@contextlib.contextmanager
def _stderr_without(noise: re.Pattern):
  """Holds back what is written to file descriptor 2 (C libraries' output
  and Python's alike), then writes it but the lines `noise` matches."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      lines = held.read().decode(errors='replace').splitlines(keepends=True)
      sys.stderr.write(
          ''.join(l for l in lines if not noise.fullmatch(l.rstrip('\r\n')))
      )
      sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
  """A module's own loader, run with `_stderr_without`; the module keeps its
  own loader once loaded."""

  def __init__(self, loader, noise: re.Pattern):
    self._loader = loader
    self._noise = noise

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    try:
      with _stderr_without(self._noise):
        self._loader.exec_module(module)
    finally:
      module.__loader__ = module.__spec__.loader = self._loader

  def __getattr__(self, name):  # what else the import system asks of it
    return getattr(self._loader, name)


class QuietImport(importlib.abc.MetaPathFinder):
  """Finds module `name` once, to load it with the `noise` it prints on
  stderr left out (`_stderr_without`); then steps aside."""

  def __init__(self, name: str, noise: re.Pattern):
    self.name = name
    self.noise = noise

  def find_spec(self, fullname, path, target=None):
    if fullname != self.name:
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(fullname)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader, self.noise)
    return spec


def quiet_tensorflow_start():
  """Leaves TensorFlow's start-up lines (`TENSORFLOW_START_NOISE`) out of
  stderr when it is first imported (only the pipelines that need it import
  it, and only then)."""
  if 'tensorflow' not in sys.modules and not any(
      isinstance(finder, QuietImport) for finder in sys.meta_path
  ):
    sys.meta_path.insert(0, QuietImport('tensorflow', TENSORFLOW_START_NOISE))
