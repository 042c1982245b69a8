"""Cross-entropy and the prior-adjusted losses."""

import jax.numpy as jnp
import numpy as np
import pytest

from nbn_jax.training import losses

LOGITS = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
LABELS = jnp.array([0, 2])
COUNTS = np.array([80, 15, 5])
AT_START = losses.Progress(step=jnp.int32(0), epoch=jnp.float32(0))


def _ce(logits, labels):
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -log_p[np.arange(len(labels)), labels]


def test_cross_entropy_by_hand():
  loss = losses.make_loss('cross_entropy', COUNTS)(LOGITS, LABELS, AT_START)
  np.testing.assert_allclose(
      loss, _ce(np.asarray(LOGITS), np.asarray(LABELS)), rtol=1e-6
  )


@pytest.mark.parametrize(
    'name, tau, effective_tau',
    [
        ('balanced_softmax', 2.5, 1.0),  # balanced softmax ignores tau
        ('logit_adjusted', 2.5, 2.5),
    ],
)
def test_adjusted_losses_add_tau_log_prior(name, tau, effective_tau):
  loss = losses.make_loss(name, COUNTS, tau)(LOGITS, LABELS, AT_START)
  adjusted = np.asarray(LOGITS) + effective_tau * np.log(COUNTS / COUNTS.sum())
  np.testing.assert_allclose(
      loss, _ce(adjusted, np.asarray(LABELS)), rtol=1e-5, atol=1e-6
  )
  # The tail class's loss grows: the model must push its logit harder.
  plain = losses.make_loss('cross_entropy', COUNTS)(LOGITS, LABELS, AT_START)
  assert loss[1] > plain[1]


@pytest.mark.parametrize('name', losses.LOSSES)
def test_a_loss_reads_the_logits_among_other_heads(name):
  loss = losses.make_loss(name, COUNTS)
  heads = {'logits': LOGITS, 'other_head': jnp.zeros((2, 7))}
  np.testing.assert_array_equal(
      loss(heads, LABELS, AT_START), loss(LOGITS, LABELS, AT_START)
  )


def test_an_unknown_loss_names_the_choices():
  with pytest.raises(ValueError, match="loss='focal' is not one of"):
    losses.make_loss('focal', COUNTS)
