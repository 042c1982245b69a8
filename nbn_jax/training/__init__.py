"""Training and evaluation: `train_and_evaluate(config, workdir)`.

Unlike `nbn_jax.NormalizedBatchNorm` and `nbn_jax.models`, which need only
jax and flax, the trainer uses optax, orbax, ml_collections and the input
pipeline (TensorFlow when a tf.data path is used). `plan.build_plan` is the
only reader of the config.
"""

from nbn_jax.training.loop import NonFiniteLossError, train_and_evaluate
from nbn_jax.training.plan import ConfigError

__all__ = ['ConfigError', 'NonFiniteLossError', 'train_and_evaluate']
