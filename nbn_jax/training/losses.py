"""Training losses: cross-entropy, the prior-adjusted variants, LDAM-DRW and
RIDE's ensemble losses, in a registry (`LOSSES`).

A loss (`Loss`) sees the model's whole training output, the labels and
where training is (`Progress`: the step and the epoch), and returns one
loss per example. The model's output is its logits, or a mapping holding
them under 'logits' beside other outputs (`nbn_jax.models.network`), so a
loss may read several outputs and change with the epoch. The train step
averages the per-example losses over the batch (`steps`), so a loss whose
batch value is not a plain mean returns terms whose mean is that value.

Each loss is an entry of `LOSSES`, a `LossSpec`: its function, the model
outputs it reads, its constants (config fields of the same names) and the
setting holding the epoch it switches at, if it does (`EpochSwitch`). The
config check asks the spec, the plan passes the constants it names, and
`make_loss` builds it: adding a loss is an entry and its function (and a
config field for a new constant).

* Balanced softmax (Ren et al. 2020) and logit-adjusted cross-entropy
  (Menon et al. 2021) add tau * log(class prior) to the logits before the
  softmax during training only; balanced softmax is tau = 1. Evaluation uses
  the plain logits.
* LDAM (Cao et al. 2019): the target logit is lowered by s * m_y, with
  class margins m_c proportional to n_c^(-1/4), the largest `ldam_max_m`.
  As in RIDE's code, the model's logits are taken to be scaled by s already
  (a cosine classifier times s): LDAM-DRW's own code feeds unscaled cosines
  and multiplies the adjusted logits by s, the same loss when the model's
  `cosine_scale` is `ldam_scale`. On a linear head nothing rescales: the
  margin shift itself reaches s * max_m (15 logits by default).
* DRW (deferred re-weighting, Cao et al. 2019): from `drw_epoch` on, each
  example is weighted by the class-balanced weight of its class
  (Cui et al. 2019), w_c = (1 - beta) / (1 - beta^n_c), normalised so the C
  weights sum to C. The weighted loss is PyTorch's weighted cross-entropy:
  sum_i w_i l_i / sum_i w_i over the batch the loss sees (`weighted_mean`).
* RIDE (Wang et al. 2021) and the NBN reference's balanced-softmax RIDE
  loss: per-expert losses on the ensemble's 'expert_logits' plus a
  diversity term, summed over experts (`ride_loss`,
  `ride_balanced_softmax_loss`); they need an ensemble model.

Every "from epoch e on" is the step the learning-rate schedule starts epoch
e at (`EpochSwitch`, `optim.epoch_start`), so re-weighting and a decay at
the same epoch begin at the same step.
"""

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nbn_jax.models import EXPERT_LOGITS, LOGITS, describe_output
from nbn_jax.training import optim


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
# The outputs a loss reads, by name (`LossSpec.reads`).
Heads = Mapping[str, jax.Array]
HeadsLoss = Callable[[Heads, jax.Array, Progress], jax.Array]
# A loss's constants by name (`LossSpec.settings`).
Settings = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """The built-in losses' constants; the config fields of the same names.

  The defaults are those of the code each loss comes from (RIDE's
  `RIDELoss`, LDAM-DRW's CIFAR training); recipes override them as their
  configs do (RIDE's CIFAR-100-LT: diversity factor -0.45; ImageNet-LT:
  re-weighting epoch 80, reweight factor 0.02). A loss reads those its
  spec names (`LossSpec.settings`); a new loss's constant needs no field
  here, only a config field (`make_loss` also takes a mapping).

  Attributes:
    logit_adjust_tau: 'logit_adjusted': the strength of the adjustment.
    ldam_max_m: LDAM's largest class margin (the rarest class's).
    ldam_scale: LDAM's s: the margin is subtracted as s * m_y.
    drw_epoch: the (0-based) epoch re-weighting starts at: LDAM-DRW's
      `epoch // 160` and RIDE's CIFAR `reweight_epoch` 160 (RIDE counts
      epochs from 1 and re-weights from epoch > 160: the same epoch).
    drw_beta: the class-balanced weights' beta.
    ride_diversity_factor: the diversity term's factor (negative: the
      experts are pushed away from the ensemble's mean).
    ride_diversity_temperature: the diversity term's base temperature.
    ride_reweight_factor: 'ride', from `drw_epoch` on: how far the
      diversity temperatures follow the class prior
      (`ride_diversity_temperatures`).
  """

  logit_adjust_tau: float = 1.0
  ldam_max_m: float = 0.5
  ldam_scale: float = 30.0
  drw_epoch: float = 160.0
  drw_beta: float = 0.9999
  ride_diversity_factor: float = -0.2
  ride_diversity_temperature: float = 1.0
  ride_reweight_factor: float = 0.05


def logits_of(outputs: Outputs) -> jax.Array:
  """The (B, C) logits of a model's output: itself, or its 'logits'."""
  return outputs[LOGITS] if isinstance(outputs, Mapping) else outputs


def heads_of(outputs: Outputs, names: Sequence[str], loss: str) -> Heads:
  """The outputs named `names` of a model's output (a plain array is its
  logits), for the loss `loss`.

  Raises:
    ValueError: the model does not return one of them.
  """
  heads = outputs if isinstance(outputs, Mapping) else {LOGITS: outputs}
  for name in names:
    if name not in heads:
      output = describe_output(name)
      raise ValueError(
          f'loss={loss!r} needs the {output.what} of {output.producer} (its '
          f'output {name!r}); this model returns only {", ".join(heads)}.'
      )
  return {name: heads[name] for name in names}


def _float(x: jax.Array) -> jax.Array:
  """`x` in float32, or in its own dtype when wider (float64)."""
  return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))


# --- The class constants (NumPy float64, from the training class counts) ------


def log_prior(train_counts: np.ndarray) -> np.ndarray:
  """(C,) float64 log of the training class frequencies."""
  counts = np.asarray(train_counts, np.float64)
  return np.log(counts / counts.sum())


def ldam_margins(train_counts: np.ndarray, max_m: float) -> np.ndarray:
  """(C,) float64 LDAM margins: m_c proportional to n_c^(-1/4), max max_m."""
  margins = np.asarray(train_counts, np.float64) ** -0.25
  return margins * (max_m / margins.max())


def class_balanced_weights(train_counts: np.ndarray, beta: float) -> np.ndarray:
  """(C,) float64 weights (1 - beta) / (1 - beta^n_c), summing to C.

  beta = 0 gives all ones (LDAM-DRW's weights before re-weighting).
  """
  counts = np.asarray(train_counts, np.float64)
  weights = (1.0 - beta) / (1.0 - beta**counts)
  return weights * (len(counts) / weights.sum())


def ride_diversity_temperatures(
    train_counts: np.ndarray, reweight_factor: float
) -> np.ndarray:
  """(C,) float64 per-class factors of RIDE's re-weighted temperature.

  t_c = C * p_c * r + 1 - r (p_c the class prior, r `reweight_factor`),
  divided by its largest value: 1 for the most frequent class, less for
  rarer ones. Their mean is 1 / max_c(C * p_c * r + 1 - r).

  Raises:
    ValueError: a factor is not positive (r too large for these counts).
  """
  counts = np.asarray(train_counts, np.float64)
  prior = counts / counts.sum()
  factors = len(counts) * prior * reweight_factor + 1.0 - reweight_factor
  if not np.all(factors > 0):
    raise ValueError(
        f'ride_reweight_factor={reweight_factor} makes the diversity '
        f'temperature of class {int(np.argmin(factors))} not positive; '
        'use a value in [0, 1].'
    )
  return factors / factors.max()


# --- The math -----------------------------------------------------------------


def adjusted_cross_entropy(
    logits: jax.Array, labels: jax.Array, log_prior: np.ndarray, tau: float
) -> jax.Array:
  """Per-example softmax cross-entropy of logits + tau * log_prior.

  Args:
    logits: (..., B, C) float.
    labels: (B,) int.
    log_prior: (C,) log of the training class frequencies.
    tau: strength of the adjustment.

  Returns:
    (..., B) losses.
  """
  logits = _float(logits)
  return optax.softmax_cross_entropy_with_integer_labels(
      logits + tau * jnp.asarray(log_prior, logits.dtype),
      jnp.broadcast_to(labels, logits.shape[:-1]),
  )


def ldam_cross_entropy(
    logits: jax.Array, labels: jax.Array, margins: np.ndarray, scale: float
) -> jax.Array:
  """Per-example cross-entropy with the target logit lowered by s * m_y.

  Args:
    logits: (..., B, C) float, already scaled by s (RIDE's convention).
    labels: (B,) int.
    margins: (C,) class margins m_c (`ldam_margins`).
    scale: s.

  Returns:
    (..., B) losses.
  """
  logits = _float(logits)
  margins = jnp.asarray(margins, logits.dtype)
  target = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  shifted = logits - scale * margins[labels][:, None] * target
  return optax.softmax_cross_entropy_with_integer_labels(
      shifted, jnp.broadcast_to(labels, logits.shape[:-1])
  )


def weighted_mean(losses: jax.Array, weights: jax.Array) -> jax.Array:
  """Per-example terms whose batch mean is PyTorch's weighted mean.

  `F.cross_entropy(..., weight=w)` reduces to sum_i w_i l_i / sum_i w_i
  over the batch it is given; the term of example i is
  l_i * w_i * B / sum_j w_j, so that their mean, what the train step takes,
  is that value.

  The batch is the one the loss sees: the global batch under
  `bn_scope='global'`, one device's shard under 'device' and 'group' (the
  step runs the loss per device, `steps.apply_batch`). There the step's
  loss is the mean over devices of each device's weighted mean, and so is
  its gradient: what PyTorch DDP computes, each rank weighting its own
  batch and the gradients averaged over ranks. The two scopes differ
  whenever the devices' label mixes do.

  Args:
    losses: (..., B) per-example losses.
    weights: (B,) per-example weights.

  Returns:
    (..., B) terms.
  """
  return losses * weights * (weights.shape[0] / jnp.sum(weights))


def diversity_kl(
    logits: jax.Array, mean_logits: jax.Array, temperatures: jax.Array
) -> jax.Array:
  """Per-example KL(softmax(mean / T) || softmax(logits / T)).

  The ensemble's distribution is a constant (no gradient flows into
  `mean_logits`), as in RIDE; PyTorch's `F.kl_div(log q, p)` with
  reduction 'batchmean' is the batch mean of these.

  Args:
    logits: (..., B, C) one expert's (or each expert's) logits.
    mean_logits: (B, C) the ensemble's mean logits.
    temperatures: () or (C,) T, one per class or one for all.

  Returns:
    (..., B) divergences.
  """
  logits = _float(logits)
  temperatures = jnp.asarray(temperatures, logits.dtype)
  log_p = jax.nn.log_softmax(
      jax.lax.stop_gradient(_float(mean_logits)) / temperatures
  )
  log_q = jax.nn.log_softmax(logits / temperatures)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def ride_loss(
    expert_logits: jax.Array,
    mean_logits: jax.Array,
    labels: jax.Array,
    class_weights: jax.Array,
    temperatures: jax.Array,
    margins: np.ndarray,
    ldam_scale: float,
    diversity_factor: float,
) -> jax.Array:
  """RIDE's loss (its `RIDELoss` with class counts), per example.

  Summed over experts e: LDAM on expert e's logits, a weighted mean over
  the batch with the class weights, plus

      factor * mean_c(T_c)^2 * KL(softmax(mean / T) || softmax(expert_e / T))

  with T the per-class `temperatures` (RIDE divides each class's logit by
  its own T_c, and scales the term by the square of their mean).

  As in RIDE, a diversity factor of 0 trains the ensemble's mean: the LDAM
  term then reads the mean logits, once per expert.

  Args:
    expert_logits: (E, B, C) each expert's logits.
    mean_logits: (B, C) their mean (the model's 'logits').
    labels: (B,) int.
    class_weights: (C,) the LDAM term's class weights (ones before
      re-weighting, then `class_balanced_weights`).
    temperatures: (C,) the diversity temperatures (the base temperature
      before re-weighting, then times `ride_diversity_temperatures`).
    margins: (C,) LDAM's margins.
    ldam_scale: LDAM's s.
    diversity_factor: the diversity term's factor.

  Returns:
    (B,) terms whose batch mean is RIDE's loss.
  """
  ldam_inputs = (
      jnp.broadcast_to(mean_logits, expert_logits.shape)
      if diversity_factor == 0
      else expert_logits
  )
  ldam = weighted_mean(
      ldam_cross_entropy(ldam_inputs, labels, margins, ldam_scale),
      class_weights[labels],
  )
  diversity = diversity_kl(expert_logits, mean_logits, temperatures)
  scale = diversity_factor * jnp.mean(temperatures) ** 2
  return jnp.sum(ldam + scale * diversity, axis=0)


def ride_balanced_softmax_loss(
    expert_logits: jax.Array,
    mean_logits: jax.Array,
    labels: jax.Array,
    log_prior: np.ndarray,
    temperature: float,
    diversity_factor: float,
) -> jax.Array:
  """The NBN reference's balanced-softmax RIDE loss, per example.

  Summed over experts e: balanced softmax on expert e's logits (the
  cross-entropy of logits + log prior), plus
  factor * T^2 * KL(softmax(mean / T) || softmax(expert_e / T)) with the
  one base temperature T. No margin, no re-weighting.

  Args:
    expert_logits: (E, B, C), mean_logits: (B, C), labels: (B,).
    log_prior: (C,) log of the training class frequencies.
    temperature: the diversity term's temperature T.
    diversity_factor: the diversity term's factor.

  Returns:
    (B,) terms whose batch mean is the reference's loss.
  """
  balanced = adjusted_cross_entropy(expert_logits, labels, log_prior, 1.0)
  diversity = diversity_kl(expert_logits, mean_logits, temperature)
  scale = diversity_factor * temperature**2
  return jnp.sum(balanced + scale * diversity, axis=0)


# --- The deferred switch ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EpochSwitch:
  """A loss's switch at the start of an epoch (DRW's deferred re-weighting).

  Attributes:
    step: the first step past the switch: the step the learning-rate
      schedule starts the epoch at (`optim.epoch_start`), so a switch and a
      decay at one epoch begin at one step.
  """

  step: int

  @classmethod
  def at_epoch(cls, epoch: float, steps_per_epoch: float) -> 'EpochSwitch':
    """The switch at (0-based) epoch `epoch` of a stream of
    `steps_per_epoch` (fractional) steps per epoch."""
    return cls(optim.epoch_start(epoch, steps_per_epoch))

  def reached(self, progress: Progress) -> jax.Array:
    """bool scalar: whether training is at or past the switch."""
    return progress.step >= self.step

  def select(
      self, progress: Progress, before: jax.Array, after: jax.Array
  ) -> jax.Array:
    """`before` until the switch, `after` from it on (arrays of one shape)."""
    return jnp.where(self.reached(progress), after, before)


# --- The registry -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """A training loss: its function and what it needs.

  Attributes:
    build: (train_counts (C,), settings, switch) -> the loss, a function
      (heads, labels (B,), `Progress`) -> (B,) terms whose mean is the
      batch's loss. `settings` holds the constants named in `settings`,
      `switch` is the `EpochSwitch` at the epoch `switch_epoch` holds (None
      for a loss without one), and `heads` the model outputs named in
      `reads`. Raises ValueError for a setting the counts make invalid.
    reads: the model outputs it reads (`nbn_jax.models.LOGITS`,
      `EXPERT_LOGITS`); the config check refuses a model without them.
    settings: the names of its constants: config fields (for the built-in
      losses also `LossSettings` fields).
    switch_epoch: the name of the setting holding the (0-based) epoch it
      switches at, or None; the config check wants it inside the run.
  """

  build: Callable[[np.ndarray, Settings, EpochSwitch | None], HeadsLoss]
  reads: tuple[str, ...] = (LOGITS,)
  settings: tuple[str, ...] = ()
  switch_epoch: str | None = None

  @property
  def setting_names(self) -> tuple[str, ...]:
    """Every setting it reads: `settings` and `switch_epoch`."""
    return self.settings + ((self.switch_epoch,) if self.switch_epoch else ())


def _cross_entropy(train_counts, settings, switch) -> HeadsLoss:
  return lambda heads, labels, progress: (
      optax.softmax_cross_entropy_with_integer_labels(
          _float(heads[LOGITS]), labels
      )
  )


def _prior_adjusted(train_counts: np.ndarray, tau: float) -> HeadsLoss:
  prior = log_prior(train_counts)
  return lambda heads, labels, progress: adjusted_cross_entropy(
      heads[LOGITS], labels, prior, tau
  )


def _balanced_softmax(train_counts, settings, switch) -> HeadsLoss:
  return _prior_adjusted(train_counts, 1.0)


def _logit_adjusted(train_counts, settings, switch) -> HeadsLoss:
  return _prior_adjusted(train_counts, settings['logit_adjust_tau'])


def _ldam(train_counts, settings, switch) -> HeadsLoss:
  margins = ldam_margins(train_counts, settings['ldam_max_m'])
  return lambda heads, labels, progress: ldam_cross_entropy(
      heads[LOGITS], labels, margins, settings['ldam_scale']
  )


def _ldam_drw(train_counts, settings, switch: EpochSwitch) -> HeadsLoss:
  """LDAM, each example weighted by its class's balanced weight from the
  switch on (ones before)."""
  margins = ldam_margins(train_counts, settings['ldam_max_m'])
  balanced = class_balanced_weights(train_counts, settings['drw_beta'])

  def ldam_drw(heads, labels, progress):
    logits = _float(heads[LOGITS])
    weights = switch.select(
        progress,
        jnp.ones(len(balanced), logits.dtype),
        jnp.asarray(balanced, logits.dtype),
    )
    return weighted_mean(
        ldam_cross_entropy(logits, labels, margins, settings['ldam_scale']),
        weights[labels],
    )

  return ldam_drw


def _ride(train_counts, settings, switch: EpochSwitch) -> HeadsLoss:
  """RIDE's loss; from the switch on, the LDAM term's class weights and the
  diversity term's per-class temperatures follow the class prior."""
  margins = ldam_margins(train_counts, settings['ldam_max_m'])
  balanced = class_balanced_weights(train_counts, settings['drw_beta'])
  base = settings['ride_diversity_temperature']
  reweighted_temperatures = base * ride_diversity_temperatures(
      train_counts, settings['ride_reweight_factor']
  )

  def ride(heads, labels, progress):
    expert_logits = _float(heads[EXPERT_LOGITS])
    dtype, num_classes = expert_logits.dtype, len(balanced)
    return ride_loss(
        expert_logits,
        heads[LOGITS],
        labels,
        switch.select(
            progress,
            jnp.ones(num_classes, dtype),
            jnp.asarray(balanced, dtype),
        ),
        switch.select(
            progress,
            jnp.full(num_classes, base, dtype),
            jnp.asarray(reweighted_temperatures, dtype),
        ),
        margins,
        settings['ldam_scale'],
        settings['ride_diversity_factor'],
    )

  return ride


def _ride_balanced_softmax(train_counts, settings, switch) -> HeadsLoss:
  prior = log_prior(train_counts)
  return lambda heads, labels, progress: ride_balanced_softmax_loss(
      heads[EXPERT_LOGITS],
      heads[LOGITS],
      labels,
      prior,
      settings['ride_diversity_temperature'],
      settings['ride_diversity_factor'],
  )


LDAM_SETTINGS = ('ldam_max_m', 'ldam_scale')
RIDE_DIVERSITY_SETTINGS = (
    'ride_diversity_factor',
    'ride_diversity_temperature',
)
ENSEMBLE_OUTPUTS = (EXPERT_LOGITS, LOGITS)
# Every loss, by name: what `config.loss` chooses from.
LOSSES: dict[str, LossSpec] = {
    'cross_entropy': LossSpec(_cross_entropy),
    'balanced_softmax': LossSpec(_balanced_softmax),
    'logit_adjusted': LossSpec(_logit_adjusted, settings=('logit_adjust_tau',)),
    'ldam': LossSpec(_ldam, settings=LDAM_SETTINGS),
    'ldam_drw': LossSpec(
        _ldam_drw,
        settings=(*LDAM_SETTINGS, 'drw_beta'),
        switch_epoch='drw_epoch',
    ),
    'ride': LossSpec(
        _ride,
        reads=ENSEMBLE_OUTPUTS,
        settings=(
            *LDAM_SETTINGS,
            'drw_beta',
            *RIDE_DIVERSITY_SETTINGS,
            'ride_reweight_factor',
        ),
        switch_epoch='drw_epoch',
    ),
    'ride_balanced_softmax': LossSpec(
        _ride_balanced_softmax,
        reads=ENSEMBLE_OUTPUTS,
        settings=RIDE_DIVERSITY_SETTINGS,
    ),
}


def epoch_switch(
    name: str, settings: Settings, steps_per_epoch: float | None
) -> EpochSwitch | None:
  """The switch of the loss `name` of `LOSSES`, at the epoch its setting
  `LossSpec.switch_epoch` holds; None for a loss without one.

  Raises:
    ValueError: a switching loss without `steps_per_epoch`.
  """
  spec = LOSSES[name]
  if spec.switch_epoch is None:
    return None
  if steps_per_epoch is None:
    raise ValueError(
        f'loss={name!r} switches at {spec.switch_epoch}: give steps_per_epoch.'
    )
  return EpochSwitch.at_epoch(settings[spec.switch_epoch], steps_per_epoch)


def make_loss(
    name: str,
    train_counts: np.ndarray,
    settings: LossSettings | Settings = LossSettings(),
    steps_per_epoch: float | None = None,
) -> Loss:
  """The loss `name` of `LOSSES`: (outputs, labels, progress) -> (B,).

  Args:
    name: a key of `LOSSES`.
    train_counts: (C,) training examples per class.
    settings: the loss's constants: a `LossSettings`, or a mapping holding
      at least those its spec names (`LossSpec.setting_names`).
    steps_per_epoch: the training stream's (fractional) steps per epoch;
      needed by a loss that switches at an epoch (`LossSpec.switch_epoch`).

  Raises:
    ValueError: an unknown name, a setting missing, a switching loss
      without `steps_per_epoch`, or a setting these counts make invalid.
  """
  spec = LOSSES.get(name)
  if spec is None:
    raise ValueError(f'loss={name!r} is not one of {tuple(LOSSES)}.')
  if isinstance(settings, LossSettings):
    settings = dataclasses.asdict(settings)
  missing = [field for field in spec.setting_names if field not in settings]
  if missing:
    raise ValueError(
        f'loss={name!r} takes the settings {missing}; give them in settings.'
    )
  switch = epoch_switch(name, settings, steps_per_epoch)
  loss_of_heads = spec.build(
      np.asarray(train_counts),
      {field: settings[field] for field in spec.settings},
      switch,
  )

  def loss(outputs: Outputs, labels: jax.Array, progress: Progress):
    return loss_of_heads(heads_of(outputs, spec.reads, name), labels, progress)

  return loss
