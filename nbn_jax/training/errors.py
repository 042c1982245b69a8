"""The errors a user can cause, importable from one place.

Each carries a one-line message that names the setting, file or folder at
fault and says what to do; `train.py` and the converter print it as
``error: <message>`` and exit with status 1. `USER_ERRORS` lists them all.
The pipeline's `DataError` and the name mapping's `CheckpointMismatchError`
are defined beside the code that raises them (neither imports the trainer)
and are re-exported here.
"""

from input_pipeline import DataError
from nbn_jax.convert import CheckpointMismatchError


class ConfigError(ValueError):
  """A config field has a value the trainer cannot use."""


class NonFiniteLossError(FloatingPointError):
  """Training diverged: a loss or the parameters became NaN or infinite."""


class CheckpointError(RuntimeError):
  """A checkpoint cannot be read or written."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used by this run."""


USER_ERRORS = (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    WorkdirError,
)
