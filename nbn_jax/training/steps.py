"""The jitted train and eval steps, sharded over a device mesh.

The batch is split over the topology's data axes; parameters, BN statistics
and optimiser state are replicated. For `bn_scope` 'global' the step is a
plain `jax.jit` and XLA inserts the cross-device reductions. For 'device'
and 'group' the forward and backward pass run under `shard_map` (see
`nbn_jax.training.topology`); gradients of the replicated parameters come
out summed over devices, and the running statistics are averaged over all
devices so the state stays replicated (flax's ImageNet example syncs them
the same way; PyTorch DDP instead broadcasts rank 0's).

The steps take batches of uint8 images and labels and know nothing of where
they come from: `StepConfig.prepare` turns images into model inputs.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from nbn_jax.training.losses import Loss, Progress, logits_of
from nbn_jax.training.metrics import class_hits
from nbn_jax.training.topology import Topology


class TrainState(train_state.TrainState):
  """Parameters, optimiser state, step, and BN running statistics."""

  batch_stats: Any = None


def initial_train_state(
    model: nn.Module, tx, key: jax.Array, image_shape: tuple[int, ...]
) -> TrainState:
  """A fresh run's train state (traceable: call it under `jax.jit`).

  Args:
    model: the network.
    tx: the optax optimiser.
    key: PRNG key of the parameter initialisation.
    image_shape: (H, W, C) of one input image.
  """
  variables = model.init(key, jnp.zeros((1, *image_shape)), train=False)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      tx=tx,
  )


def init_compiler_options() -> dict[str, Any] | None:
  """XLA options for compiling `initial_train_state` on this backend.

  An initial state's program is almost only the parameter initialisers'
  random number generation (the forward pass `init` traces is dead code).
  XLA:CPU's LLVM at its default optimisation level spends most of its
  compilation on those kernels: 17 to 39 s for ResNet-32 on a 2-core CPU,
  against 1.8 to 3.5 s at level 1 (`python -m bench.timing.many_runs_eval
  --init-default-level`), for a program that runs in milliseconds either
  way and gives bitwise the same state (tested). Level 0 would change the
  values in the last bits. Other backends keep their defaults.
  """
  if jax.default_backend() == 'cpu':
    return {'xla_backend_optimization_level': 1}
  return None


def create_train_state(
    model: nn.Module,
    tx,
    key: jax.Array,
    image_shape: tuple[int, ...],
    topology: Topology,
) -> TrainState:
  """`initial_train_state` made directly on the mesh, replicated."""
  init = functools.partial(
      initial_train_state, model, tx, image_shape=image_shape
  )
  return jax.jit(
      init,
      out_shardings=topology.replicated,
      compiler_options=init_compiler_options(),
  )(key)


def furthest_step(state: TrainState) -> int:
  """The state's step; of K stacked runs the furthest (stopped runs lag)."""
  return int(np.max(jax.device_get(state.step)))


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the steps need to know beyond the state and the batch.

  Attributes:
    model: the network (built with the topology's `bn_axis_name`). Its
      output is the logits, or a mapping with the logits under 'logits'
      and other heads beside them (`losses.logits_of`).
    loss_fn: (model output, labels, `losses.Progress`) -> per-example
      losses (`losses.Loss`).
    topology: the mesh and the BN statistics scope.
    global_batch_size: examples per train step over all devices.
    prepare: uint8 images (B, H, W, C) -> model inputs (normalised, in the
      computation dtype).
    num_classes: for the eval counts.
    steps_per_epoch: steps per epoch of the training stream (fractional),
      for the epoch the loss is told.
  """

  model: nn.Module
  loss_fn: Loss
  topology: Topology
  global_batch_size: int
  prepare: Callable[[jax.Array], jax.Array]
  num_classes: int
  steps_per_epoch: float


def progress(cfg: StepConfig, step: jax.Array) -> Progress:
  """Where training is at `step` (the state's step counter)."""
  return Progress(step=step, epoch=step / cfg.steps_per_epoch)


def _gradients(cfg: StepConfig, params, batch_stats, step, images, labels):
  """Gradients, new BN statistics and summed metrics of one (sub)batch.

  The loss is the sum of per-example losses over the global batch size, so
  per-device results add up to the global mean.
  """
  inputs = cfg.prepare(images)

  def loss_fn(params):
    outputs, updates = cfg.model.apply(
        {'params': params, 'batch_stats': batch_stats},
        inputs,
        train=True,
        mutable=['batch_stats'],
    )
    losses = cfg.loss_fn(outputs, labels, progress(cfg, step))
    loss = losses.sum() / cfg.global_batch_size
    return loss, (updates['batch_stats'], logits_of(outputs))

  (loss, (new_stats, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
  )(params)
  correct = jnp.sum(jnp.argmax(logits, -1) == labels)
  return grads, new_stats, {'loss': loss, 'correct': correct}


def apply_batch(cfg: StepConfig, state: TrainState, images, labels):
  """One optimisation step on a global batch (uint8 images, int labels).

  Returns:
    (new state, {'loss': mean loss, 'correct': number right}).
  """
  topology = cfg.topology
  if not topology.uses_shard_map:
    grads, new_stats, metrics = _gradients(
        cfg, state.params, state.batch_stats, state.step, images, labels
    )
  else:
    axes = topology.data_axes
    # Running statistics still differ between devices (between groups for
    # 'group': BN made them equal within one); average them over those.
    stats_axes = tuple(a for a in axes if a != topology.bn_axis_name)

    def local(params, batch_stats, step, images, labels):
      grads, stats, metrics = _gradients(
          cfg, params, batch_stats, step, images, labels
      )
      # Gradients of replicated params are already summed (check_vma).
      stats = jax.lax.pmean(stats, stats_axes)
      return grads, stats, jax.lax.psum(metrics, axes)

    grads, new_stats, metrics = jax.shard_map(
        local,
        mesh=topology.mesh,
        in_specs=(P(), P(), P(), P(axes), P(axes)),
        out_specs=(P(), P(), P()),
    )(state.params, state.batch_stats, state.step, images, labels)
  state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  return state, metrics


def make_train_step(cfg: StepConfig):
  """jit: (state, images, labels) -> (state, metrics); donates the state."""
  return jax.jit(
      lambda state, images, labels: apply_batch(cfg, state, images, labels),
      donate_argnums=0,
  )


def make_eval_step(cfg: StepConfig):
  """jit: (state, images, labels, mask) -> per-class counts (`ClassHits`)."""

  def step(state, images, labels, mask):
    outputs = cfg.model.apply(
        {'params': state.params, 'batch_stats': state.batch_stats},
        cfg.prepare(images),
        train=False,
    )
    return class_hits(logits_of(outputs), labels, mask, cfg.num_classes)

  return jax.jit(step, out_shardings=cfg.topology.replicated)
