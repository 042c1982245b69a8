"""ResNet-50 and ResNeXt-50 32x4d in torchvision's layout (NHWC)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.models.blocks import BottleneckBlock
from nbn_jax.models.common import (
    NBNPlacement,
    NormSwitchedResNet,
    named_network,
)

Array = jax.Array

# The reference: the last BN of every layer4 block and the layer4 shortcut BN,
# all four reading one shared alpha.
LAYER4_NBN = NBNPlacement(stages=(3,), block_norms=('bn3',))


class ResNet(NormSwitchedResNet):
  """Bottleneck ResNet/ResNeXt for 224x224 ImageNet-style inputs.

  torchvision's layout and initialisation: 7x7/2 stem, 3x3/2 max pool, stages
  of 64/128/256/512 filters with the stride on each first block's 3x3
  convolution, He-normal (fan-out) convolutions, PyTorch's default linear
  init, no zero-init of the last BN of a block. Shared fields (`num_classes`,
  `norm`, BN settings, `dtype`, ...) are documented in `NormSwitchedResNet`.

  Attributes:
    stage_sizes: blocks per stage.
    nbn_placement: where NBN goes; default the reference's four layer4 BNs
      with one shared alpha.
    groups: ResNeXt cardinality (1 for ResNet).
    width_per_group: ResNeXt bottleneck width (64 for ResNet).
  """

  stage_sizes: tuple[int, ...]
  nbn_placement: NBNPlacement = LAYER4_NBN
  groups: int = 1
  width_per_group: int = 64

  @nn.compact
  def __call__(self, x: Array, train: bool = True) -> Array:
    """(batch, height, width, 3) images -> (batch, num_classes) logits."""
    norm, nbn, alpha = self.norm_layers(
        train, len(self.stage_sizes), ('bn1', 'bn2', 'bn3')
    )
    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        dtype=self.dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
    )
    x = jnp.asarray(x, self.dtype)
    x = conv(64, (7, 7), (2, 2), padding=3, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        x = BottleneckBlock(
            filters=64 * 2**stage,
            conv=conv,
            norm=norm,
            nbn=nbn,
            nbn_sites=self.nbn_sites(stage),
            strides=2 if stage > 0 and block == 0 else 1,
            groups=self.groups,
            width_per_group=self.width_per_group,
            name=f'layer{stage + 1}_{block}',
        )(x, alpha)
    torch_linear = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
    return self.classifier_head(x, torch_linear, norm)


ResNet50 = named_network(
    'ResNet50',
    ResNet,
    "torchvision's ResNet-50: ResNet50(num_classes, **fields).",
    stage_sizes=(3, 4, 6, 3),
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
