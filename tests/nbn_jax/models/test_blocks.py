"""Residual blocks and the option-A shortcut."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nbn_jax import NormalizedBatchNorm
from nbn_jax.models.blocks import BasicBlock, BottleneckBlock, option_a_shortcut


def test_option_a_subsamples_and_zero_pads_channels_on_both_sides():
  x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
  y = option_a_shortcut(x, strides=2, filters=4)
  assert y.shape == (2, 2, 2, 4)
  # LDAM: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)).
  np.testing.assert_array_equal(y[..., 1:3], x[:, ::2, ::2, :])
  np.testing.assert_array_equal(y[..., 0], 0)
  np.testing.assert_array_equal(y[..., 3], 0)


def _block_kwargs(train=True):
  return dict(
      conv=functools.partial(nn.Conv, use_bias=False),
      norm=functools.partial(nn.BatchNorm, use_running_average=not train),
      nbn=functools.partial(NormalizedBatchNorm, use_running_average=not train),
  )


def test_identity_block_adds_its_input():
  """With the convolutions zeroed, a block returns relu(input)."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  for block in (
      BasicBlock(filters=16, **_block_kwargs()),
      BottleneckBlock(filters=4, **_block_kwargs()),
  ):
    variables = block.init(jax.random.key(1), x)
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.zeros_like(p)
        if 'kernel' in jax.tree_util.keystr(path)
        else p,
        variables['params'],
    )
    # Zero convolutions feed constant zeros to the BNs: their output is bias.
    y, _ = block.apply(
        {**variables, 'params': params}, x, mutable=['batch_stats']
    )
    np.testing.assert_allclose(y, nn.relu(x), atol=1e-6)


def test_nbn_sites_choose_the_layer_type():
  x = jnp.ones((2, 8, 8, 16))
  block = BottleneckBlock(
      filters=4, nbn_sites=frozenset({'bn1', 'bn3'}), **_block_kwargs()
  )
  params = block.init(jax.random.key(0), x, jnp.asarray(1.0))['params']
  assert {name for name in params if name.startswith('bn')} == {
      'bn1',
      'bn2',
      'bn3',
  }
  # NBN layers given a shared alpha own none; plain BN never has one.
  assert all('alpha' not in params[name] for name in ('bn1', 'bn2', 'bn3'))
  own = block.init(jax.random.key(0), x)['params']
  assert 'alpha' in own['bn1'] and 'alpha' in own['bn3']
  assert 'alpha' not in own['bn2']
