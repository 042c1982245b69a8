"""Training losses: cross-entropy and the prior-adjusted variants.

A loss (`Loss`) sees the model's whole training output, the labels and
where training is (`Progress`: the step and the epoch), and returns one
loss per example. The model's output is its logits, or a mapping holding
them under 'logits' beside other heads (`logits_of`), so a loss may read
several heads and change with the epoch.

Balanced softmax (Ren et al. 2020) and logit-adjusted cross-entropy (Menon et
al. 2021) add tau * log(class prior) to the logits before the softmax during
training only; balanced softmax is tau = 1. Evaluation uses the plain logits.
"""

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOSSES = ('cross_entropy', 'balanced_softmax', 'logit_adjusted')
LOGITS = 'logits'  # the key of the logits in a mapping of heads


class Progress(NamedTuple):
  """Where training is when a batch's loss is computed.

  Attributes:
    step: int32 scalar, the 0-based index of the step being taken.
    epoch: float32 scalar, epochs of training data seen before this step
      (`step / steps_per_epoch`; epoch e begins where it reaches e).
  """

  step: jax.Array
  epoch: jax.Array


Outputs = jax.Array | Mapping[str, Any]
Loss = Callable[[Outputs, jax.Array, Progress], jax.Array]


def logits_of(outputs: Outputs) -> jax.Array:
  """The (B, C) logits of a model's output: itself, or its 'logits'."""
  return outputs[LOGITS] if isinstance(outputs, Mapping) else outputs


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


def log_prior(train_counts: np.ndarray) -> jax.Array:
  """(C,) float32 log of the training class frequencies."""
  counts = np.asarray(train_counts)
  return jnp.log(jnp.asarray(counts / counts.sum(), jnp.float32))


def make_loss(name: str, train_counts: np.ndarray, tau: float = 1.0) -> Loss:
  """The loss `name` (one of `LOSSES`): (outputs, labels, progress) -> (B,).

  Args:
    name: 'cross_entropy', 'balanced_softmax' or 'logit_adjusted'.
    train_counts: (C,) training examples per class (the class prior).
    tau: 'logit_adjusted' only: the strength of the adjustment.
  """
  if name == 'cross_entropy':
    return lambda outputs, labels, progress: (
        optax.softmax_cross_entropy_with_integer_labels(
            logits_of(outputs), labels
        )
    )
  if name not in LOSSES:
    raise ValueError(f'loss={name!r} is not one of {LOSSES}.')
  prior = log_prior(train_counts)
  tau = 1.0 if name == 'balanced_softmax' else tau
  return lambda outputs, labels, progress: adjusted_cross_entropy(
      logits_of(outputs), labels, prior, tau
  )
