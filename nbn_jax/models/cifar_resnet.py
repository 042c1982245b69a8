"""ResNet-32 for 32x32 inputs, as in the LDAM protocol (NHWC)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.models.blocks import BasicBlock
from nbn_jax.models.common import (
    NBNPlacement,
    NormSwitchedResNet,
    named_network,
)

Array = jax.Array

# By analogy with the reference's ResNet-50 placement (it ships no CIFAR
# model): the last BN of every last-stage block, and the shortcut BN when
# option-B shortcuts are used, all reading one shared alpha.
LAST_STAGE_NBN = NBNPlacement(stages=(2,), block_norms=('bn2',))


class CifarResNet(NormSwitchedResNet):
  """The CIFAR ResNet of He et al. (2016, Sec. 4.2) as the LDAM code builds it.

  3x3 stem with 16 filters, stages of basic blocks at 16/32/64 filters (stride
  2 at the first block of stages 2 and 3), global average pool, linear
  classifier; He-normal (fan-in) init of convolutions and the classifier
  weight, PyTorch's default classifier bias. Shared fields (`num_classes`,
  `norm`, BN settings, `dtype`, ...) are documented in `NormSwitchedResNet`.

  Attributes:
    stage_sizes: basic blocks per stage (ResNet-32: 5, 5, 5).
    nbn_placement: where NBN goes; default the last BN of each block of the
      last stage (and its projection-shortcut BN), one shared alpha.
    widths: filters per stage.
    shortcut: 'A' (zero-padding, the LDAM protocol) or 'B' (1x1 projection
      with BN).
  """

  stage_sizes: tuple[int, ...]
  nbn_placement: NBNPlacement = LAST_STAGE_NBN
  widths: tuple[int, ...] = (16, 32, 64)
  shortcut: str = 'A'

  @nn.compact
  def __call__(self, x: Array, train: bool = True) -> Array:
    """(batch, 32, 32, 3) images -> (batch, num_classes) float32 logits."""
    if self.shortcut not in ('A', 'B'):
      raise ValueError(f"shortcut={self.shortcut!r} is not one of ('A', 'B').")
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError(
          f'widths={self.widths} and stage_sizes={self.stage_sizes} must have '
          'one entry per stage.'
      )
    norm, nbn, alpha = self.norm_layers(
        train, len(self.stage_sizes), ('bn1', 'bn2')
    )
    he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=he_normal
    )
    x = jnp.asarray(x, self.dtype)
    x = conv(self.widths[0], (3, 3), padding=1, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    for stage, (num_blocks, filters) in enumerate(
        zip(self.stage_sizes, self.widths)
    ):
      for block in range(num_blocks):
        x = BasicBlock(
            filters=filters,
            conv=conv,
            norm=norm,
            nbn=nbn,
            nbn_sites=self.nbn_sites(stage),
            strides=2 if stage > 0 and block == 0 else 1,
            shortcut=self.shortcut,
            name=f'layer{stage + 1}_{block}',
        )(x, alpha)
    return self.classifier_head(x, he_normal, norm)


ResNet32 = named_network(
    'ResNet32',
    CifarResNet,
    "LDAM's CIFAR ResNet-32: ResNet32(num_classes, **fields).",
    stage_sizes=(5, 5, 5),
)
# One block per stage: for the quickstart and for quick tests.
ResNet8 = named_network(
    'ResNet8',
    CifarResNet,
    'The CIFAR ResNet with one block per stage: ResNet8(num_classes, ...).',
    stage_sizes=(1, 1, 1),
)
