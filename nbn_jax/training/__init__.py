"""Training and evaluation: `train_and_evaluate(config, workdir)`.

Unlike `nbn_jax.NormalizedBatchNorm` and `nbn_jax.models`, which need only
jax and flax, the trainer uses optax, orbax, ml_collections and the input
pipeline (TensorFlow when a tf.data path is used). `plan.build_plan` is the
only reader of the config; `errors` has every error a user can cause.
"""

from nbn_jax.training.errors import (
    USER_ERRORS,
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    WorkdirError,
)
from nbn_jax.training.loop import train_and_evaluate

__all__ = [
    'CheckpointError',
    'ConfigError',
    'NonFiniteLossError',
    'USER_ERRORS',
    'WorkdirError',
    'train_and_evaluate',
]
