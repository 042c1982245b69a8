"""LDAM-DRW's, RIDE's and the reference's RIDE losses in PyTorch: oracles.

Written from docs/method.md ("RIDE with NBN", LDAM-DRW) and the facts of
kaidic/LDAM-DRW (`losses.py`, `cifar_train.py`),
frank-xwang/RIDE-LongTailRecognition (`model/loss.py`) and yuxiangbao/NBN
(`loss/RIDE_BalancedSoftmaxLoss.py`), not copied from them. Each function
returns the batch's scalar loss, as those training loops back-propagate it,
in the dtype of its inputs (float64 for the tight comparisons).

* `ldam_drw_loss`: LDAM-DRW's convention: the inputs are the cosine
  classifier's unscaled cosines; the loss subtracts the margin, multiplies
  by s and takes PyTorch's (weighted) cross-entropy.
* `ride_loss`: RIDE's convention: the inputs are each expert's logits
  (already times s); per expert, LDAM with the margin times s and, after
  re-weighting, the class-balanced weights; plus the diversity term with
  per-class temperatures after re-weighting; summed over experts.
* `ride_balanced_softmax_loss`: per expert, cross-entropy of logits + log
  class count, plus the diversity term at one temperature.

The ensemble's mean logits are computed here from the experts' (as RIDE's
model does), so gradients with respect to the experts' logits include any
that flow through the mean.
"""

import numpy as np
import torch
import torch.nn.functional as F


def ldam_margins(counts, max_m: float) -> np.ndarray:
  """m_c = n_c^(-1/4), rescaled so the largest is max_m."""
  quarter_root = np.sqrt(np.sqrt(np.asarray(counts, np.float64)))
  margins = 1.0 / quarter_root
  return max_m * margins / margins.max()


def class_balanced_weights(counts, beta: float) -> np.ndarray:
  """(1 - beta) / (effective number 1 - beta^n_c), rescaled to sum to C."""
  effective = 1.0 - np.power(beta, np.asarray(counts, np.float64))
  weights = (1.0 - beta) / effective
  return weights / weights.sum() * len(counts)


def diversity_temperatures(counts, factor: float) -> np.ndarray:
  """C * prior_c * factor + 1 - factor, divided by its maximum."""
  prior = np.asarray(counts, np.float64) / np.sum(counts)
  raw = len(counts) * prior * factor + (1.0 - factor)
  return raw / raw.max()


def _as(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
  return torch.as_tensor(values, dtype=like.dtype)


def _margin_logits(logits, labels, margins, scale):
  """The target logit lowered by scale * m_label; the others unchanged."""
  target = F.one_hot(labels, logits.shape[-1]).to(torch.bool)
  lowered = logits - scale * _as(margins, logits)[labels].unsqueeze(1)
  return torch.where(target, lowered, logits)


def ldam_drw_loss(
    cosines: torch.Tensor,
    labels: torch.Tensor,
    counts,
    reweighted: bool,
    max_m: float = 0.5,
    scale: float = 30.0,
    beta: float = 0.9999,
) -> torch.Tensor:
  """LDAM-DRW on (B, C) unscaled cosines; DRW weights when `reweighted`."""
  margins = _as(ldam_margins(counts, max_m), cosines)
  target = F.one_hot(labels, cosines.shape[-1]).to(cosines.dtype)
  adjusted = scale * (cosines - target * margins.unsqueeze(0))
  # LDAM-DRW's `betas = [0, beta]`: beta 0 gives unit weights.
  weights = class_balanced_weights(counts, beta if reweighted else 0.0)
  return F.cross_entropy(adjusted, labels, weight=_as(weights, cosines))


def _diversity(expert, mean, temperature, temperature_mean, factor):
  log_q = F.log_softmax(expert / temperature, dim=1)
  with torch.no_grad():
    p = F.softmax(mean / temperature, dim=1)
  kl = F.kl_div(log_q, p, reduction='batchmean')
  return factor * temperature_mean**2 * kl


def ride_loss(
    expert_logits: torch.Tensor,
    labels: torch.Tensor,
    counts,
    reweighted: bool,
    max_m: float = 0.5,
    scale: float = 30.0,
    beta: float = 0.9999,
    diversity_factor: float = -0.2,
    base_temperature: float = 1.0,
    reweight_factor: float = 0.05,
) -> torch.Tensor:
  """RIDE's loss on (E, B, C) expert logits, re-weighted or not."""
  mean = expert_logits.mean(dim=0)
  margins = ldam_margins(counts, max_m)
  weights = None
  temperature = base_temperature
  temperature_mean = base_temperature
  if reweighted:
    weights = _as(class_balanced_weights(counts, beta), expert_logits)
    per_class = base_temperature * diversity_temperatures(
        counts, reweight_factor
    )
    temperature = _as(per_class, expert_logits).unsqueeze(0)
    temperature_mean = float(per_class.mean())
  total = 0
  for expert in expert_logits:
    # RIDE trains the mean with LDAM when there is no diversity term.
    ldam_input = mean if diversity_factor == 0 else expert
    shifted = _margin_logits(ldam_input, labels, margins, scale)
    total = total + F.cross_entropy(shifted, labels, weight=weights)
    total = total + _diversity(
        expert, mean, temperature, temperature_mean, diversity_factor
    )
  return total


def ride_balanced_softmax_loss(
    expert_logits: torch.Tensor,
    labels: torch.Tensor,
    counts,
    diversity_factor: float = -0.2,
    base_temperature: float = 1.0,
) -> torch.Tensor:
  """The reference's balanced-softmax RIDE loss on (E, B, C) logits."""
  mean = expert_logits.mean(dim=0)
  log_counts = _as(np.log(np.asarray(counts, np.float64)), expert_logits)
  total = 0
  for expert in expert_logits:
    total = total + F.cross_entropy(expert + log_counts, labels)
    total = total + _diversity(
        expert, mean, base_temperature, base_temperature, diversity_factor
    )
  return total
