"""The jitted train and eval steps, sharded over a device mesh.

The batch is split over every device of every host (the mesh's data axes);
parameters, BN statistics and optimiser state are replicated. Where BN
statistics are computed depends on `bn_scope`:

* 'global': over the global batch. The step is a plain `jax.jit` and XLA
  inserts the cross-device reductions.
* 'device': over each device's shard (the reference's DDP without SyncBN).
* 'group': over groups of `bn_group_size` consecutive devices: the mesh is
  ('replica', 'bn_group') and BN averages over 'bn_group'.

For 'device' and 'group' the forward and backward pass run under
`shard_map`; gradients of the replicated parameters come out summed over
devices, and the running statistics are averaged over all devices so the
state stays replicated (flax's ImageNet example syncs them the same way;
PyTorch DDP instead broadcasts rank 0's).
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training import train_state
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from input_pipeline import on_device
from input_pipeline.datasets import Preprocessing
from input_pipeline.evaluation import class_hits

BN_SCOPES = ('global', 'device', 'group')


class TrainState(train_state.TrainState):
  """Parameters, optimiser state, step, and BN running statistics."""

  batch_stats: Any = None


def create_train_state(
    model: nn.Module,
    tx,
    key: jax.Array,
    image_shape: tuple[int, ...],
    mesh: Mesh,
) -> TrainState:
  """Initialises the train state directly on `mesh`, replicated.

  Args:
    model: the network.
    tx: the optax optimiser.
    key: PRNG key of the parameter initialisation.
    image_shape: (H, W, C) of one input image.
    mesh: the device mesh.
  """

  def init():
    variables = model.init(key, jnp.zeros((1, *image_shape)), train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables['params'],
        batch_stats=variables['batch_stats'],
        tx=tx,
    )

  return jax.jit(init, out_shardings=replicated(mesh))()


def create_mesh(bn_scope: str, bn_group_size: int = 1) -> Mesh:
  """A mesh over all devices whose axes together form the data axis."""
  count = jax.device_count()
  if bn_scope == 'group':
    if bn_group_size < 1 or count % bn_group_size:
      raise ValueError(
          f'bn_group_size={bn_group_size} must divide the {count} devices.'
      )
    shape, names = (count // bn_group_size, bn_group_size), (
        'replica',
        'bn_group',
    )
  else:
    shape, names = (count,), ('data',)
  return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def bn_axis_name(bn_scope: str) -> str | None:
  """The axis NBN/BN layers average statistics over inside shard_map."""
  return 'bn_group' if bn_scope == 'group' else None


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over all mesh axes."""
  return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the steps need to know beyond the state and the batch.

  Attributes:
    model: the network (built with the scope's `bn_axis_name`).
    loss_fn: (logits, labels) -> per-example losses.
    mesh: the device mesh.
    bn_scope: 'global', 'device' or 'group'.
    global_batch_size: examples per step over all devices.
    mean, std: per-channel normalisation of uint8 images.
    dtype: computation dtype of the inputs.
    num_classes: for the eval counts.
  """

  model: nn.Module
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
  mesh: Mesh
  bn_scope: str
  global_batch_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  dtype: Any
  num_classes: int


def _gradients(cfg: StepConfig, params, batch_stats, images, labels):
  """Gradients, new BN statistics and summed metrics of one (sub)batch.

  The loss is the sum of per-example losses over the global batch size, so
  per-device results add up to the global mean.
  """
  inputs = on_device.normalize_images(images, cfg.mean, cfg.std, cfg.dtype)

  def loss_fn(params):
    logits, updates = cfg.model.apply(
        {'params': params, 'batch_stats': batch_stats},
        inputs,
        train=True,
        mutable=['batch_stats'],
    )
    loss = cfg.loss_fn(logits, labels).sum() / cfg.global_batch_size
    return loss, (updates['batch_stats'], logits)

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
  if cfg.bn_scope == 'global':
    grads, new_stats, metrics = _gradients(
        cfg, state.params, state.batch_stats, images, labels
    )
  else:
    axes = cfg.mesh.axis_names
    # Running statistics still differ between devices (between groups for
    # 'group': BN made them equal within one); average them over those.
    stats_axes = tuple(a for a in axes if a != bn_axis_name(cfg.bn_scope))

    def local(params, batch_stats, images, labels):
      grads, stats, metrics = _gradients(
          cfg, params, batch_stats, images, labels
      )
      # Gradients of replicated params are already summed (check_vma).
      stats = jax.lax.pmean(stats, stats_axes)
      return grads, stats, jax.lax.psum(metrics, axes)

    grads, new_stats, metrics = jax.shard_map(
        local,
        mesh=cfg.mesh,
        in_specs=(P(), P(), P(axes), P(axes)),
        out_specs=(P(), P(), P()),
    )(state.params, state.batch_stats, images, labels)
  state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  return state, metrics


def make_train_step(cfg: StepConfig):
  """jit: (state, images, labels) -> (state, metrics); donates the state."""
  return jax.jit(
      lambda state, images, labels: apply_batch(cfg, state, images, labels),
      donate_argnums=0,
  )


def make_device_train_steps(
    cfg: StepConfig,
    key: jax.Array,
    preprocessing: Preprocessing,
    num_steps: int,
):
  """jit: (state, DeviceData) -> (state, per-step metrics) for `num_steps`.

  Each step draws its batch on the devices (`input_pipeline.on_device`) and
  augments it per `preprocessing` ('cifar': pad-crop-flip; 'none': as
  stored), keyed by (key, step): a resumed run continues the same stream.
  Several steps per call keep small models from waiting on dispatch.
  """
  if preprocessing.kind not in ('cifar', 'none'):
    raise ValueError(
        'the on-device path augments in-memory data only; preprocessing '
        f'kind={preprocessing.kind!r} needs the tf.data path.'
    )
  sample_key, crop_key = jax.random.split(key)

  def one_step(state, data):
    images, labels = on_device.sample_batch(
        data, sample_key, state.step, cfg.global_batch_size
    )
    if preprocessing.kind == 'cifar':
      images = on_device.random_crop_flip(
          images,
          jax.random.fold_in(crop_key, state.step),
          preprocessing.crop_padding,
      )
    return apply_batch(cfg, state, images, labels)

  def steps(state, data):
    if num_steps == 1:  # no loop: see `steps_per_dispatch`
      state, metrics = one_step(state, data)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(lambda s, _: one_step(s, data), state, length=num_steps)

  return jax.jit(steps, donate_argnums=0)


def steps_per_dispatch(requested: int) -> int:
  """Steps per jitted call of the on-device path on this backend.

  On accelerators several steps run in one `lax.scan`, which saves a
  dispatch per step. XLA:CPU runs the convolutions inside a loop body about
  35x slower than outside one (measured: ResNet-32, 1.1 s vs 37 to 41 s per
  step), so on CPU every step is its own call.
  """
  return 1 if jax.default_backend() == 'cpu' else requested


def make_eval_step(cfg: StepConfig):
  """jit: (state, images, labels, mask) -> per-class (correct, total)."""

  def step(state, images, labels, mask):
    inputs = on_device.normalize_images(images, cfg.mean, cfg.std, cfg.dtype)
    logits = cfg.model.apply(
        {'params': state.params, 'batch_stats': state.batch_stats},
        inputs,
        train=False,
    )
    return class_hits(logits, labels, mask, cfg.num_classes)

  return jax.jit(step, out_shardings=replicated(cfg.mesh))
