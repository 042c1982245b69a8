"""The ResNet of flax's examples/imagenet, and its train step, as a user would copy them.

Unchanged in structure: the norm partial has ``axis_name='batch'`` (pmap),
and the last BN of every block is zero-initialised (``scale_init=zeros``).
The one addition is `norm_cls`, so a test can swap `nn.BatchNorm` for
`nbn_jax.NormalizedBatchNorm` and change nothing else. `pmapped_train_step`
is the example's step reduced to its core (no learning-rate schedule, no
weight decay, no mixed precision).
"""

from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
from flax.training import dynamic_scale as dynamic_scale_lib
import jax.numpy as jnp
import optax

ModuleDef = Any


class ResNetBlock(nn.Module):
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(
          self.filters, (1, 1), self.strides, name='conv_proj'
      )(residual)
      residual = self.norm(name='norm_proj')(residual)
    return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1))(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(
          self.filters * 4, (1, 1), self.strides, name='conv_proj'
      )(residual)
      residual = self.norm(name='norm_proj')(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  num_filters: int = 64
  dtype: Any = jnp.float32
  act: Callable = nn.relu
  conv: ModuleDef = nn.Conv
  norm_cls: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = partial(
        self.norm_cls,
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=self.dtype,
        axis_name='batch',
    )
    x = conv(
        self.num_filters,
        (7, 7),
        (2, 2),
        padding=[(3, 3), (3, 3)],
        name='conv_init',
    )(x)
    x = norm(name='bn_init')(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(
            self.num_filters * 2**i,
            strides=strides,
            conv=conv,
            norm=norm,
            act=self.act,
        )(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    x = jnp.asarray(x, self.dtype)
    return x


ResNet18 = partial(ResNet, stage_sizes=[2, 2, 2, 2], block_cls=ResNetBlock)
ResNet50 = partial(
    ResNet, stage_sizes=[3, 4, 6, 3], block_cls=BottleneckResNetBlock
)


class ExampleState(NamedTuple):
  """The example's train state; `dynamic_scale` only for float16."""

  params: Any
  batch_stats: Any
  opt_state: Any
  dynamic_scale: dynamic_scale_lib.DynamicScale | None = None


def pmapped_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    devices: Sequence[jax.Device] | None = None,
) -> Callable:
  """flax's example step: pmap over 'batch', pmean'd gradients and loss.

  With a `dynamic_scale` in the state (float16), the loss is scaled, the
  scale adapted, and a step whose gradients are not finite is skipped, as
  the example does.

  Returns:
    `step(state, images, labels) -> (state, loss)`: state an
    `ExampleState` with a leading device axis on every leaf, images
    [devices, batch, H, W, C], labels [devices, batch] int and loss
    [devices], the mean cross-entropy over all devices' images.
  """

  @partial(jax.pmap, axis_name='batch', devices=devices)
  def step(state: ExampleState, images, labels):
    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats},
          images,
          mutable=['batch_stats'],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels
      ).mean()
      return loss, updates['batch_stats']

    dynamic_scale = state.dynamic_scale
    if dynamic_scale is None:
      (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params
      )
      grads = jax.lax.pmean(grads, 'batch')
    else:  # averages the gradients over 'batch' itself
      dynamic_scale, finite, (loss, batch_stats), grads = (
          dynamic_scale.value_and_grad(
              loss_fn, has_aux=True, axis_name='batch'
          )(state.params)
      )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if dynamic_scale is not None:  # keep the old values after an overflow
      keep = lambda new, old: jax.tree.map(partial(jnp.where, finite), new, old)
      params = keep(params, state.params)
      opt_state = keep(opt_state, state.opt_state)
    new_state = ExampleState(params, batch_stats, opt_state, dynamic_scale)
    return new_state, jax.lax.pmean(loss, 'batch')

  return step
