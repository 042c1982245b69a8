"""Training losses: cross-entropy and the prior-adjusted variants.

Balanced softmax (Ren et al. 2020) and logit-adjusted cross-entropy (Menon et
al. 2021) add tau * log(class prior) to the logits before the softmax during
training only; balanced softmax is tau = 1. Evaluation uses the plain logits.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOSSES = ('cross_entropy', 'balanced_softmax', 'logit_adjusted')

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def adjusted_cross_entropy(
    logits: jax.Array, labels: jax.Array, log_prior: jax.Array, tau: float
) -> jax.Array:
  """Per-example softmax cross-entropy of logits + tau * log_prior.

  Args:
    logits: (B, C) float32.
    labels: (B,) int.
    log_prior: (C,) log of the training class frequencies.
    tau: strength of the adjustment.

  Returns:
    (B,) losses.
  """
  return optax.softmax_cross_entropy_with_integer_labels(
      logits + tau * log_prior, labels
  )


def make_loss(name: str, train_counts: np.ndarray, tau: float = 1.0) -> LossFn:
  """(logits (B, C), labels (B,)) -> (B,) per-example losses."""
  if name == 'cross_entropy':
    return optax.softmax_cross_entropy_with_integer_labels
  log_prior = jnp.log(
      jnp.asarray(train_counts / train_counts.sum(), jnp.float32)
  )
  tau = 1.0 if name == 'balanced_softmax' else tau
  return lambda logits, labels: adjusted_cross_entropy(
      logits, labels, log_prior, tau
  )
