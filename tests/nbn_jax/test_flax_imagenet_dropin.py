"""NBN as a drop-in in flax's own ImageNet ResNet: only the norm class changes.

The model (tests/flax_imagenet_resnet.py) zero-initialises the last BN of
each block and averages statistics over the pmapped axis 'batch'; its train
step is flax's example step (pmap, pmean'd gradients) at toy size.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training.dynamic_scale import DynamicScale

from nbn_jax import NormalizedBatchNorm
from tests import flax_imagenet_resnet

DEVICES = 4
PER_DEVICE = 4
NUM_CLASSES = 5
IMAGE = (16, 16, 3)


def _model(norm_cls, dtype=jnp.float32):
  return flax_imagenet_resnet.ResNet(
      stage_sizes=[1, 1],
      block_cls=flax_imagenet_resnet.ResNetBlock,
      num_classes=NUM_CLASSES,
      num_filters=8,
      dtype=dtype,
      norm_cls=norm_cls,
  )


def _init(model):
  return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      jnp.zeros((1, *IMAGE))
  )


def _data():
  images = jax.random.normal(jax.random.key(1), (DEVICES, PER_DEVICE, *IMAGE))
  labels = jnp.arange(DEVICES * PER_DEVICE).reshape(DEVICES, PER_DEVICE)
  return images, labels % NUM_CLASSES


def train(norm_cls, steps: int, dtype=jnp.float32):
  """(losses, final ExampleState) of `steps` pmapped SGD steps on one fixed
  batch; float16 with the example's dynamic loss scale."""
  model = _model(norm_cls, dtype)
  variables = _init(model)
  tx = optax.sgd(0.1, momentum=0.9)
  state = flax_imagenet_resnet.ExampleState(
      variables['params'],
      variables['batch_stats'],
      tx.init(variables['params']),
      DynamicScale() if dtype == jnp.float16 else None,
  )

  step = flax_imagenet_resnet.pmapped_train_step(
      model, tx, jax.local_devices()[:DEVICES]
  )
  state = jax.tree.map(lambda a: jnp.stack([a] * DEVICES), state)
  images, labels = _data()
  losses = []
  for _ in range(steps):
    state, loss = step(state, images, labels)
    losses.append(float(loss[0]))
  return losses, jax.tree.map(lambda a: a[0], state)


def test_the_norm_partial_with_zero_scale_init_builds():
  variables = _init(_model(NormalizedBatchNorm))
  block = variables['params']['ResNetBlock_0']
  zero_init = block['NormalizedBatchNorm_1']
  np.testing.assert_array_equal(zero_init['scale'], np.ones(8))
  assert zero_init['alpha'] == 0.0  # the branch starts at exactly zero
  assert block['NormalizedBatchNorm_0']['alpha'] == 1.0


@pytest.mark.slow
def test_trains_under_pmap_then_evaluates():
  losses, state = train(NormalizedBatchNorm, steps=6)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.1, losses
  block = variables['params']['ResNetBlock_0']['NormalizedBatchNorm_1']
  assert 0 < abs(float(block['alpha'])) < 1  # grown from 0, smoothly
  assert not np.allclose(
      variables['batch_stats']['bn_init']['mean'], 0.0
  )  # pmean'd statistics moved
  # Evaluation needs no 'batch' axis: running statistics only.
  x = jax.random.normal(jax.random.key(2), (3, *IMAGE))
  logits = jax.jit(
      lambda v, x: _model(NormalizedBatchNorm).apply(v, x, train=False)
  )(variables, x)
  assert logits.shape == (3, NUM_CLASSES) and np.isfinite(logits).all()


@pytest.mark.slow
def test_float16_with_the_examples_dynamic_loss_scale():
  # The example's float16 loss times the initial scale 2**16 overflows at the
  # first step, with BN as with NBN: that step is skipped and the scale
  # halved. NBN's first raw-bias gradient, 1e6 times the effective bias's,
  # must cost no further skip.
  bn_losses, bn = train(nn.BatchNorm, steps=6, dtype=jnp.float16)
  losses, nbn = train(NormalizedBatchNorm, steps=6, dtype=jnp.float16)
  assert float(nbn.dynamic_scale.scale) == float(bn.dynamic_scale.scale)
  assert float(nbn.dynamic_scale.scale) >= DynamicScale().scale / 2
  assert all(np.isfinite(losses[1:])) and all(np.isfinite(bn_losses[1:]))
  assert losses[-1] < losses[1] - 0.05, losses
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(nbn.params))
