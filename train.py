"""Trains and evaluates NBN (or its BN baseline) on a long-tailed benchmark.

    python train.py --config=configs/cifar100_lt.py --workdir=/tmp/c100 \
        [--config.field=value ...]

Only parses flags and hands over to `nbn_jax.training.train_and_evaluate`.
On several hosts, start the same command on each; `--multihost` initialises
`jax.distributed` (auto-detected on Cloud TPU pods and SLURM, or give the
coordinator explicitly).
"""

import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from input_pipeline import DataError
from nbn_jax.training import ConfigError, NonFiniteLossError, train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to a configs/*.py file.', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard and results.')
flags.DEFINE_bool('multihost', False, 'Initialise jax.distributed.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Number of processes.')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')


# Libraries whose INFO records would drown the progress lines.
QUIET_LIBRARIES = ('/orbax/', '/jax/_src/xla_bridge.py')


class _QuietLibraries(std_logging.Filter):
  """Passes warnings and up from QUIET_LIBRARIES, everything from the rest."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        library in record.pathname for library in QUIET_LIBRARIES
    )


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with one-line errors for bad flags and config fields."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for unknown or mistyped --config.* fields.
    message = str(e).strip('\'"').replace('\\n', ' ').replace('\n', ' ')
    sys.exit(f'error: bad --config override: {message}')


def main(argv: list[str]):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  if FLAGS.config is None or FLAGS.workdir is None:
    sys.exit('error: --config and --workdir are required.')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.multihost or FLAGS.coordinator_address:
    jax.distributed.initialize(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
  logging.info(
      'JAX processes: %d, devices: %s', jax.process_count(), jax.devices()
  )
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, DataError, NonFiniteLossError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
