"""SGD with PyTorch's coupled weight decay, and the recipes' LR schedules.

PyTorch's SGD (the reference) adds the decay to the gradient before the
momentum buffer: d = g + wd * p; v = momentum * v + d; p -= lr * v. That is
`add_decayed_weights` followed by `sgd` in optax. By default every parameter
is decayed, NBN's alpha included, as in the reference (its `-w` flag exempts
alpha: `decay_alpha=False` here, which exempts the paths the plan found).

Schedules are per step (the reference steps them per epoch):
* 'step' (CIFAR, LDAM): linear warm-up to the base rate over
  `warmup_epochs`, then the rate times `lr_decay_factor` at each epoch of
  `lr_decay_epochs` (0.1 -> 0.001 at 160 -> 0.00001 at 180).
* 'cosine' (ImageNet-LT, iNaturalist): optional warm-up, then cosine decay
  to 0 at the last step.
The warm-up rises every step by default (`warmup_granularity='step'`);
`'epoch'` holds the rate for a whole epoch, LDAM-DRW's staircase
`lr * (epoch + 1) / warmup_epochs` for epochs 0 .. warmup_epochs - 1
(its `adjust_learning_rate`, called once per epoch).
The base rate follows the linear scaling rule:
learning_rate * batch_size / lr_batch_size.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('step', 'cosine')
WARMUP_GRANULARITIES = ('step', 'epoch')


def base_learning_rate(
    learning_rate: float, batch_size: int, lr_batch_size: int
):
  """The linear scaling rule: `learning_rate` is the rate at `lr_batch_size`."""
  return learning_rate * batch_size / lr_batch_size


def learning_rate_schedule(
    schedule: str,
    base_rate: float,
    steps_per_epoch: float,
    total_steps: int,
    warmup_epochs: float = 0.0,
    lr_decay_epochs: tuple[float, ...] = (),
    lr_decay_factor: float = 0.1,
    warmup_granularity: str = 'step',
    cosine_period_epochs: float = 0.0,
) -> optax.Schedule:
  """Step -> learning rate.

  Args:
    schedule: 'step' or 'cosine'.
    base_rate: the peak rate.
    steps_per_epoch: steps in one epoch (fractional: epochs do not end on
      batch boundaries in a continuous stream).
    total_steps: length of the run.
    warmup_epochs: linear warm-up length.
    lr_decay_epochs: 'step' only: epochs at which the rate is multiplied by
      `lr_decay_factor`.
    lr_decay_factor: 'step' only.
    warmup_granularity: 'step': step s of the warm-up uses
      base_rate * (s + 1) / warmup_steps. 'epoch': every step of epoch e
      uses base_rate * (e + 1) / warmup_epochs (LDAM-DRW's staircase; needs
      a whole number of `warmup_epochs`).
    cosine_period_epochs: 'cosine' only. 0: one half cosine from the end of
      the warm-up to 0 at the last step. P > 0: PyTorch's
      `CosineAnnealingLR(T_max=P epochs)` continued past P, as the
      reference's ride*.yaml run it for 200 epochs with T_max 90: the rate
      reaches 0 at P epochs after the warm-up, rises back to the base rate
      at 2P, and so on.

  Epoch e starts at step `epoch_start(e, steps_per_epoch)`, for the
  warm-up's stairs and the decay epochs alike.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f'schedule={schedule!r} is not one of {SCHEDULES}.')
  if warmup_granularity not in WARMUP_GRANULARITIES:
    raise ValueError(
        f'warmup_granularity={warmup_granularity!r} is not one of '
        f'{WARMUP_GRANULARITIES}.'
    )
  if warmup_granularity == 'epoch' and warmup_epochs != int(warmup_epochs):
    raise ValueError(
        f'warmup_epochs={warmup_epochs} must be a whole number of epochs '
        "with warmup_granularity='epoch'; use 'step' for a fractional one."
    )
  warmup_steps = epoch_start(warmup_epochs, steps_per_epoch)
  boundaries = _epoch_starts(lr_decay_epochs, steps_per_epoch)
  # Starts of warm-up epochs 1 .. warmup_epochs - 1 (the stairs' risers).
  stairs = _epoch_starts(range(1, int(warmup_epochs)), steps_per_epoch)
  decay_steps = max(1, total_steps - warmup_steps)
  period_steps = epoch_start(cosine_period_epochs, steps_per_epoch)

  def rate(step):
    step = jnp.asarray(step, jnp.int32)
    if schedule == 'step':
      decays = jnp.sum(step >= boundaries)
      main = base_rate * lr_decay_factor**decays
    elif period_steps:  # periodic, as torch's scheduler past T_max
      main = (
          0.5
          * base_rate
          * (1 + jnp.cos(jnp.pi * (step - warmup_steps) / period_steps))
      )
    else:
      progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
      main = 0.5 * base_rate * (1 + jnp.cos(jnp.pi * progress))
    if warmup_steps:
      if warmup_granularity == 'epoch':
        warm = base_rate * (jnp.sum(step >= stairs) + 1) / warmup_epochs
      else:
        warm = base_rate * (step + 1) / warmup_steps
      return jnp.where(step < warmup_steps, warm, main)
    return main

  return rate


def epoch_start(epoch: float, steps_per_epoch: float) -> int:
  """The first step of epoch `epoch` (0-based) in the continuous stream.

  Epochs do not end on batch boundaries (`steps_per_epoch` is fractional),
  so epoch e starts at the step nearest to e * steps_per_epoch. Every
  "from epoch e on" of a run uses this step: the schedule's warm-up stairs
  and decays, and the losses' re-weighting epoch (`losses.make_loss`).
  """
  return int(round(epoch * steps_per_epoch))


def _epoch_starts(epochs, steps_per_epoch: float) -> jax.Array:
  """(len(epochs),) int32: the first step of each epoch in `epochs`."""
  return jnp.array([epoch_start(e, steps_per_epoch) for e in epochs], jnp.int32)


def weight_decay_mask(params, exempt: Sequence[tuple[str, ...]] = ()):
  """True for decayed leaves: all but those at the paths in `exempt`."""
  exempt = {tuple(path) for path in exempt}

  def decayed(path, _):
    return tuple(getattr(k, 'key', k) for k in path) not in exempt

  return jax.tree_util.tree_map_with_path(decayed, params)


def sgd(
    schedule: optax.Schedule,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    exempt: Sequence[tuple[str, ...]] = (),
) -> optax.GradientTransformation:
  """PyTorch-style SGD: coupled L2 decay, then momentum (no dampening).

  Args:
    schedule: step -> learning rate.
    weight_decay: the L2 coefficient.
    momentum, nesterov: as in `torch.optim.SGD`.
    exempt: parameter paths not decayed: NBN's alphas with
      `decay_alpha=False` (the plan finds them, `nbn_jax.inspection`).
  """
  return optax.chain(
      optax.add_decayed_weights(
          weight_decay, mask=lambda p: weight_decay_mask(p, exempt)
      ),
      optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
  )
