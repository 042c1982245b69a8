r"""Trains and evaluates NBN (or its BN baseline) on a long-tailed benchmark.

    python train.py --config=configs/cifar100_lt.py --workdir=/tmp/c100 \
        [--config.field=value ...] [--allow_config_change]
    python train.py --workdir=/tmp/c100 --config.eval_only=True \
        [--config.data_dir=... (where the data moved)]

Parses the flags, checks the config file and the workdir, and hands over to
`nbn_jax.training.train_and_evaluate`. On several hosts, start the same
command on each; `--multihost` initialises `jax.distributed` (auto-detected
on Cloud TPU pods and SLURM, or give the coordinator explicitly).

The second command evaluates the workdir's newest checkpoint from the
config the workdir recorded (config.json, train.py's or the converter's):
no --config, and only the fields that say where the data is may be given
(docs/evaluation.md). Its outputs end in _eval (results_eval.json, ...).

Exit status:
  0   results written: results.json (its "status" says whether the run
      finished or stopped early at config.num_train_steps), or an
      evaluation's results_eval.json.
  1   a bad flag, config, workdir or data, a diverged loss, or no readable
      checkpoint: one line on stderr says what and how to fix it, and a
      refused run leaves nothing in the workdir.
  75  stopped by SIGTERM or SIGINT (preemption, Ctrl-C) after writing a
      checkpoint at the step it stopped at, or by SIGTERM outside the
      training steps (while starting or finishing: nothing to save); rerun
      the same command to resume (EX_TEMPFAIL: schedulers that retry on it
      resume the run).
  130, 143  a second SIGINT or SIGTERM: exited at once, without a checkpoint.

A workdir records the config it was started with (`config.json`); a rerun
with a different value of a field that changes the results is refused unless
`--allow_config_change` is given. Only one run at a time may use a workdir.
"""

import logging as std_logging
import os
import signal
import sys
import warnings

EXIT_PREEMPTED = 75  # preemption.EXIT_PREEMPTED, before it can be imported


def _terminated_while_loading(signum: int, frame):
  """A SIGTERM while the libraries load: nothing is written yet."""
  del frame
  sys.stderr.write(
      f'stopped on {signal.Signals(signum).name} while loading, before '
      'anything was written. Rerun the same command.\n'
  )
  os._exit(EXIT_PREEMPTED)


if __name__ == '__main__':  # the imports below take seconds
  signal.signal(signal.SIGTERM, _terminated_while_loading)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from configs import default

from nbn_jax.training import USER_ERRORS, train_and_evaluate
from nbn_jax.training import command_line, plan, preemption, storage
from nbn_jax.training.command_line import UsageError
from nbn_jax.training import workdir as workdir_lib

# Libraries whose INFO records would drown the progress lines.
QUIET_LIBRARIES = ('/orbax/', '/jax/_src/xla_bridge.py', '/gcsfs/', '/fsspec/')
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # Ctrl-C outside the training loop's StopSignals


class _QuietLibraries(std_logging.Filter):
  """Passes warnings and up from QUIET_LIBRARIES, everything from the rest.

  Their records that carry a traceback are dropped too: orbax logs one for
  each of its background threads when a checkpoint write fails, and the
  trainer reports that failure itself, in one line.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not any(library in record.pathname for library in QUIET_LIBRARIES):
      return True
    return record.levelno >= std_logging.WARNING and not record.exc_info


def define_flags(
    values: flags.FlagValues,
    argv: list[str],
    recorded: ml_collections.ConfigDict | None = None,
):
  """train.py's flags, on `values` (a fresh set per `main` call).

  `recorded`: the config a --workdir recorded, in place of a --config file
  (an evaluation from it).
  """
  if recorded is None:
    config_flags.DEFINE_config_file(
        'config',
        None,
        'Path to a configs/*.py file (every field: configs/default.py).',
        flag_values=values,
        lock_config=True,
        sys_argv=argv,  # the --config.<field> overrides are defined from it
    )
  else:
    config_flags.DEFINE_config_dict(
        'config',
        recorded,
        "The --workdir's recorded config (config.json).",
        flag_values=values,
        lock_config=True,
        sys_argv=argv,
    )
  flags.DEFINE_string(
      'workdir',
      None,
      'Checkpoints, TensorBoard and results; with --config.eval_only=True '
      'and no --config, the workdir to evaluate from the config it recorded.',
      flag_values=values,
  )
  flags.DEFINE_bool(
      'allow_config_change',
      False,
      "Continue a workdir's run with config values other than those it was "
      'started with.',
      flag_values=values,
  )
  flags.DEFINE_bool(
      'multihost', False, 'Initialise jax.distributed.', flag_values=values
  )
  flags.DEFINE_string(
      'coordinator_address',
      None,
      'host:port of process 0.',
      flag_values=values,
  )
  flags.DEFINE_integer(
      'num_processes', None, 'Number of processes.', flag_values=values
  )
  flags.DEFINE_integer(
      'process_id',
      None,
      'This process, 0..num_processes-1.',
      flag_values=values,
  )


def parse_flags(argv: list[str]) -> flags.FlagValues:
  """train.py's flags from argv; UsageError (one line) for bad ones.

  Without --config, --config.eval_only=True evaluates the --workdir from
  the config it recorded.
  """
  config_path = command_line.flag_value(argv, 'config')
  workdir = command_line.flag_value(argv, 'workdir')
  recorded = None
  if config_path is not None:
    command_line.check_override_names(
        argv, command_line.load_config_file(config_path)
    )
  elif command_line.asks_to_evaluate(argv) and workdir is not None:
    command_line.check_evaluation_overrides(argv)
    recorded = command_line.workdir_config(workdir)
  else:
    raise UsageError(
        '--config is required (a configs/*.py file); only an evaluation, '
        '--workdir=W --config.eval_only=True, reads the config W recorded.'
    )
  values = flags.FlagValues()
  define_flags(values, argv, recorded)
  try:
    rest = values(argv)
  except flags.Error as e:
    raise UsageError(str(e).removeprefix('flag ')) from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections' own errors for overrides it cannot apply.
    message = str(e).strip('\'"').replace('\\n', ' ').replace('\n', ' ')
    raise UsageError(f'bad --config override: {message}') from None
  if len(rest) > 1:
    raise UsageError(f'unexpected arguments {rest[1:]}.')
  if values.workdir is None:
    raise UsageError('--workdir is required.')
  return values


def run(values: flags.FlagValues) -> int:
  """Claims the workdir and trains; returns the exit status."""
  workdir = storage.resolve(values.workdir)  # another scheme: refused here
  # Before anything starts JAX's backends, which read XLA_FLAGS once.
  if extra_flags := plan.xla_flags(values.config):
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {extra_flags}'
  distributed = values.multihost or values.coordinator_address is not None
  config = values.config
  plan.check_workdir(config, workdir)
  with preemption.run_signals(distributed) as signals:
    if distributed:
      jax.distributed.initialize(
          values.coordinator_address, values.num_processes, values.process_id
      )
      logging.info(
          'JAX process %d of %d started; devices: %s',
          jax.process_index(),
          jax.process_count(),
          jax.devices(),
      )
    with workdir_lib.claim(
        workdir,
        config.to_dict(),
        allow_config_change=values.allow_config_change,
        process_index=jax.process_index(),
        defaults=default.get_config().to_dict(),
    ):
      try:
        train_and_evaluate(config, workdir, signals)
      except preemption.Preempted as e:
        logging.warning('%s', e)
        return preemption.EXIT_PREEMPTED
  return 0


def main(argv: list[str]) -> int:
  """The whole command: argv (argv[0] the program) -> exit status.

  Every error a user can cause ends in one line on stderr, ``error: ...``.
  """
  command_line.quiet_tensorflow_start()
  try:
    with preemption.terminate_outside_training():
      return run(parse_flags(argv))
  except preemption.Terminated as e:
    logging.warning('%s', e)
    return preemption.EXIT_PREEMPTED
  except (UsageError, *USER_ERRORS) as e:
    print(f'error: {e}', file=sys.stderr)
  except OSError as e:  # e.g. the disk filled up or became read-only
    print(
        f'error: {e.strerror or e}: {e.filename or ""}'.rstrip(': '),
        file=sys.stderr,
    )
  except KeyboardInterrupt:
    print(
        'error: interrupted; rerun the same command to resume from the last '
        'checkpoint.',
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED
  return EXIT_ERROR


def _absl_flags_only(argv: list[str]) -> list[str]:
  """absl's own flags (-v, --logtostderr, ...); the rest go to `main`."""
  if any(arg in ('-h', '--help', '--helpfull', '-?') for arg in argv[1:]):
    values = flags.FlagValues()
    define_flags(values, argv[:1])
    print(f'{__doc__}\n{values.get_help()}\n\n{command_line.fields_help()}')
    sys.exit(0)
  return flags.FLAGS(argv, known_only=True)


def _quiet_unraisable(unraisable):
  """Drops the echoes of a failed checkpoint read or write; passes the rest.

  When one of orbax's array reads or writes fails, the others still in
  flight finish after its event loop has closed, and each prints a
  traceback ('Event loop is closed'); the trainer reports the failure
  itself, in one line.
  """
  echo = isinstance(unraisable.exc_value, RuntimeError) and (
      str(unraisable.exc_value) == 'Event loop is closed'
  )
  code = getattr(unraisable.object, 'cr_code', None)  # an abandoned coroutine
  if echo or (code is not None and '/orbax/' in code.co_filename):
    return
  sys.__unraisablehook__(unraisable)


# What Python prints, at exit, for each array write of orbax's that a failed
# checkpoint write abandoned (`sys:1: RuntimeWarning: coroutine
# 'async_serialize_from_host.<locals>.write_fragment' was never awaited`).
# This program has no coroutines of its own.
ABANDONED_COROUTINE = r"coroutine '.*' was never awaited"


def _absl_main(argv: list[str]):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  sys.unraisablehook = _quiet_unraisable
  warnings.filterwarnings(
      'ignore', message=ABANDONED_COROUTINE, category=RuntimeWarning
  )
  sys.exit(main(argv))


if __name__ == '__main__':
  app.run(_absl_main, flags_parser=_absl_flags_only)
