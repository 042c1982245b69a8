"""ResNet-32 for 32x32 inputs, as in the LDAM protocol (NHWC)."""

import flax.linen as nn
import jax

from nbn_jax.models.blocks import BasicBlock
from nbn_jax.models.common import (
    KernelInits,
    LayerDefs,
    NBNPlacement,
    NormSwitchedResNet,
)
from nbn_jax.models.network import named_network

Array = jax.Array

# By analogy with the reference's ResNet-50 placement (it ships no CIFAR
# model): the last BN of every last-stage block, and the shortcut BN when
# option-B shortcuts are used, all reading one shared alpha.
LAST_STAGE_NBN = NBNPlacement(stages=(2,), block_norms=('bn2',))
# LDAM's `kaiming_normal_` (fan-in, gain sqrt 2) for convolutions and the
# linear classifier.
HE_NORMAL = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
SHORTCUTS = ('A', 'B')


class CifarResNet(NormSwitchedResNet):
  """The CIFAR ResNet of He et al. (2016, Sec. 4.2) as the LDAM code builds it.

  3x3 stem with 16 filters, stages of basic blocks at 16/32/64 filters (stride
  2 at the first block of stages 2 and 3), global average pool, classifier
  (linear, or LDAM's cosine NormedLinear with `classifier='cosine'`);
  He-normal (fan-in) init of convolutions and the linear classifier weight,
  PyTorch's default classifier bias. Shared fields (`num_classes`, `norm`,
  `classifier`, BN settings, `dtype`, ...) are documented in
  `NormSwitchedResNet`.

  Attributes:
    stage_sizes: basic blocks per stage (ResNet-32: 5, 5, 5).
    widths: filters per stage (the stem has the first stage's).
    nbn_placement: where NBN goes; default the last BN of each block of the
      last stage (and its projection-shortcut BN), one shared alpha.
    shortcut: 'A' (zero-padding, the LDAM protocol) or 'B' (1x1 projection
      with BN).
  """

  stage_sizes: tuple[int, ...]
  widths: tuple[int, ...] = (16, 32, 64)
  nbn_placement: NBNPlacement = LAST_STAGE_NBN
  shortcut: str = 'A'

  BLOCK = BasicBlock
  BLOCK_NORMS = ('bn1', 'bn2')
  KERNEL_INITS = KernelInits(conv=HE_NORMAL, fc=HE_NORMAL)

  @nn.nowrap
  def check_fields(self):
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f'shortcut={self.shortcut!r} is not one of {SHORTCUTS}.')
    super().check_fields()

  @nn.nowrap
  def stem(self, x: Array, layers: LayerDefs) -> Array:
    """(batch, h, w, c) -> (batch, h, w, first stage's filters)."""
    x = layers.conv(self.stage_widths()[0], (3, 3), padding=1, name='conv1')(x)
    return nn.relu(layers.norm(name='bn1')(x))

  @nn.nowrap
  def block_fields(self):
    return {'shortcut': self.shortcut}


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
