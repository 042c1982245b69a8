"""Comparing arms over seeds: paired differences with 95% intervals.

Two arms (say NBN and BN) trained with the same seeds see the same data
order and augmentation, so their per-seed differences cancel much of the
seed-to-seed noise. `paired_differences` pairs two K-run summaries
(`results.summarize`) by seed; `confidence_interval` is the mean's
two-sided 95% Student t interval (n - 1 degrees of freedom).
"""

import numpy as np

from nbn_jax.training import results

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1 .. 30.
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def confidence_interval(values: np.ndarray) -> tuple[float, float, float]:
  """(mean, low, high): the mean's two-sided 95% Student t interval."""
  values = np.asarray(values, float)
  mean = float(values.mean())
  if len(values) < 2:
    return mean, float('nan'), float('nan')
  df = len(values) - 1
  t = T_975[df - 1] if df <= len(T_975) else _t_975_expansion(df)
  half = t * values.std(ddof=1) / np.sqrt(len(values))
  return mean, mean - half, mean + half


def _t_975_expansion(df: int) -> float:
  """t_{0.975, df} by the Cornish-Fisher expansion (error < 1e-4 past 30)."""
  z = 1.959964
  return (
      z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
  )


def paired_differences(treatment: dict, baseline: dict, result: str) -> dict:
  """Per-seed differences treatment - baseline, in points, paired by seed.

  Over the seeds both counted (`results.counted_seeds`; a run stopped on a
  non-finite value has no pair), with their mean and 95% interval, per
  group.

  Args:
    treatment, baseline: two `results.summarize` summaries.
    result: 'last', 'best_on_val' or 'best_test_during_training'.
  """
  counted = results.counted_seeds
  seeds = [s for s in counted(treatment) if s in counted(baseline)]
  out = {'seeds': seeds}
  for group in results.GROUPS:
    a, b = treatment[result][group]['runs'], baseline[result][group]['runs']
    pairs = [
        (a[counted(treatment).index(s)], b[counted(baseline).index(s)])
        for s in seeds
    ]
    if any(x is None or y is None or not np.isfinite(x - y) for x, y in pairs):
      continue  # an empty group (CIFAR-10-LT has no Few class): n/a, null
    diffs = 100 * np.array([x - y for x, y in pairs], float)
    mean, low, high = confidence_interval(diffs)
    out[group] = {
        'per_seed': diffs.tolist(),
        'mean': mean,
        'ci95': [low, high],
    }
  return out
