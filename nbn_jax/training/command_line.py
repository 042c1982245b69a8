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
"""

import difflib
import importlib.util
import os
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


def check_override_names(argv: list[str], config: ml_collections.ConfigDict):
  """UsageError for a --config.<field> that the config does not have."""
  known = fields(config)
  for arg in argv:
    if arg.startswith('--config.'):
      field = arg[len('--config.') :].split('=', 1)[0]
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
  for arg in argv:
    if arg.startswith('--config.'):
      field = arg[len('--config.') :].split('=', 1)[0]
      if field not in allowed:
        raise UsageError(
            f'--config.{field}: an evaluation from the config the --workdir '
            f'recorded takes only {", ".join(allowed)}; to evaluate with '
            'another value of a field that changes the results, give --config '
            '(and --allow_config_change).'
        )
