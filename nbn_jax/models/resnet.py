"""ResNet-50/101/152 and ResNeXt-50 32x4d in torchvision's layout (NHWC)."""

import flax.linen as nn
import jax

from nbn_jax.models.blocks import BottleneckBlock
from nbn_jax.models.common import (
    KernelInits,
    LayerDefs,
    NBNPlacement,
    NormSwitchedResNet,
)
from nbn_jax.models.network import named_network

Array = jax.Array

# The reference: the last BN of every layer4 block and the layer4 shortcut BN,
# all four reading one shared alpha (ResNet-50 and ResNeXt-50; the same four
# in ResNet-101 and ResNet-152, whose layer4 also has three blocks).
LAYER4_NBN = NBNPlacement(stages=(3,), block_norms=('bn3',))
# He-normal (fan-out) convolutions; PyTorch's default linear weight init,
# U(+-1 / sqrt(fan_in)).
TORCHVISION_INITS = KernelInits(
    conv=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
    fc=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
)


class ResNet(NormSwitchedResNet):
  """Bottleneck ResNet/ResNeXt for 224x224 ImageNet-style inputs.

  torchvision's layout and initialisation: 7x7/2 stem, 3x3/2 max pool, stages
  of 64/128/256/512 filters with the stride on each first block's 3x3
  convolution, He-normal (fan-out) convolutions, PyTorch's default linear
  init, no zero-init of the last BN of a block. Shared fields (`num_classes`,
  `norm`, `classifier`, BN settings, `dtype`, ...) are documented in
  `NormSwitchedResNet`.

  Attributes:
    stage_sizes: blocks per stage.
    widths: filters per stage (each block outputs 4 times as many).
    nbn_placement: where NBN goes; default the reference's four layer4 BNs
      with one shared alpha.
    groups: ResNeXt cardinality (1 for ResNet).
    width_per_group: ResNeXt bottleneck width (64 for ResNet).
  """

  stage_sizes: tuple[int, ...]
  widths: tuple[int, ...] = (64, 128, 256, 512)
  nbn_placement: NBNPlacement = LAYER4_NBN
  groups: int = 1
  width_per_group: int = 64

  BLOCK = BottleneckBlock
  BLOCK_NORMS = ('bn1', 'bn2', 'bn3')
  KERNEL_INITS = TORCHVISION_INITS

  @nn.nowrap
  def stem(self, x: Array, layers: LayerDefs) -> Array:
    """(batch, h, w, 3) -> (batch, h / 4, w / 4, 64)."""
    x = layers.conv(64, (7, 7), (2, 2), padding=3, name='conv1')(x)
    x = nn.relu(layers.norm(name='bn1')(x))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

  @nn.nowrap
  def block_fields(self):
    return {'groups': self.groups, 'width_per_group': self.width_per_group}


ResNet50 = named_network(
    'ResNet50',
    ResNet,
    "torchvision's ResNet-50: ResNet50(num_classes, **fields).",
    stage_sizes=(3, 4, 6, 3),
)
ResNet101 = named_network(
    'ResNet101',
    ResNet,
    "torchvision's ResNet-101: ResNet101(num_classes, **fields).",
    stage_sizes=(3, 4, 23, 3),
)
ResNet152 = named_network(
    'ResNet152',
    ResNet,
    "torchvision's ResNet-152: ResNet152(num_classes, **fields).",
    stage_sizes=(3, 8, 36, 3),
)
ResNeXt50 = named_network(
    'ResNeXt50',
    ResNet,
    "torchvision's ResNeXt-50 32x4d: ResNeXt50(num_classes, **fields).",
    stage_sizes=(3, 4, 6, 3),
    groups=32,
    width_per_group=4,
)
# One bottleneck block per stage: ResNet-50's layout at a fraction of the
# cost, for quick tests of the ImageNet-style configs.
ResNet14 = named_network(
    'ResNet14',
    ResNet,
    'ResNet-50 with one block per stage: ResNet14(num_classes, **fields).',
    stage_sizes=(1, 1, 1, 1),
)
