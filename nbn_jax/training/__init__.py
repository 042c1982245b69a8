"""Training and evaluation: `train_and_evaluate(config, workdir)`.

Unlike `nbn_jax.NormalizedBatchNorm` and `nbn_jax.models`, which need only
jax and flax, the trainer uses optax, orbax, ml_collections and the input
pipeline (TensorFlow when a tf.data path is used).
"""

from nbn_jax.training.experiment import ConfigError
from nbn_jax.training.loop import NonFiniteLossError, train_and_evaluate

__all__ = ['ConfigError', 'NonFiniteLossError', 'train_and_evaluate']
