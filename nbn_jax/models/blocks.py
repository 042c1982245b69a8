"""Residual blocks with a BN or NBN at each named norm site (NHWC)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.models.common import SHORTCUT_NORM, ResidualBlock

Array = jax.Array


class BasicBlock(ResidualBlock):
  """Two 3x3 convolutions (He et al. 2016); norm sites 'bn1', 'bn2'.

  `filters` is the number of output channels and `strides` that of the first
  convolution (see `ResidualBlock` for the other fields).

  Attributes:
    shortcut: when the shape changes, 'A' subsamples and zero-pads channels
      (parameter-free, the CIFAR/LDAM protocol) and 'B' projects with a 1x1
      convolution and the BN 'downsample_bn'.
  """

  shortcut: str = 'A'

  @nn.compact
  def __call__(self, x: Array, alpha: Array | None = None) -> Array:
    """(batch, h, w, c) -> (batch, h / strides, w / strides, filters)."""
    y = self.conv(self.filters, (3, 3), self.strides, padding=1, name='conv1')(
        x
    )
    y = nn.relu(self.norm_at('bn1', y, alpha))
    y = self.conv(self.filters, (3, 3), padding=1, name='conv2')(y)
    y = self.norm_at('bn2', y, alpha)
    residual = x
    if residual.shape != y.shape:
      if self.shortcut == 'A':
        residual = option_a_shortcut(x, self.strides, self.filters)
      else:
        residual = self.conv(
            self.filters, (1, 1), self.strides, name='downsample_conv'
        )(x)
        residual = self.norm_at(SHORTCUT_NORM, residual, alpha)
    return nn.relu(y + residual)


class BottleneckBlock(ResidualBlock):
  """torchvision's Bottleneck (stride on the 3x3), also ResNeXt's.

  Norm sites 'bn1', 'bn2', 'bn3' and, with a projection shortcut,
  'downsample_bn'. Inner width = int(filters * width_per_group / 64) * groups;
  output channels = 4 * filters.
  """

  groups: int = 1
  width_per_group: int = 64

  @nn.compact
  def __call__(self, x: Array, alpha: Array | None = None) -> Array:
    """(batch, h, w, c) -> (batch, h / strides, w / strides, 4 * filters)."""
    width = int(self.filters * self.width_per_group / 64) * self.groups
    out_channels = 4 * self.filters
    y = self.conv(width, (1, 1), name='conv1')(x)
    y = nn.relu(self.norm_at('bn1', y, alpha))
    y = self.conv(
        width,
        (3, 3),
        self.strides,
        padding=1,
        feature_group_count=self.groups,
        name='conv2',
    )(y)
    y = nn.relu(self.norm_at('bn2', y, alpha))
    y = self.conv(out_channels, (1, 1), name='conv3')(y)
    y = self.norm_at('bn3', y, alpha)
    residual = x
    if residual.shape != y.shape:
      residual = self.conv(
          out_channels, (1, 1), self.strides, name='downsample_conv'
      )(x)
      residual = self.norm_at(SHORTCUT_NORM, residual, alpha)
    return nn.relu(y + residual)


def option_a_shortcut(x: Array, strides: int, filters: int) -> Array:
  """Subsamples by `strides` and zero-pads channels up to `filters`.

  The LDAM code pads planes // 4 channels on each side; with the channel
  count doubling, that is half the missing channels on each side, as here.
  """
  x = x[:, ::strides, ::strides, :]
  missing = filters - x.shape[-1]
  channel_pad = (missing // 2, missing - missing // 2)
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), channel_pad))
