"""ResNet-50 and ResNeXt-50 32x4d in torchvision's layout (NHWC)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.models import common
from nbn_jax.models.blocks import BottleneckBlock

Array = jax.Array

# The reference: the last BN of every layer4 block and the layer4 shortcut BN,
# all four reading one shared alpha.
LAYER4_NBN = common.NBNPlacement(stages=(3,), block_norms=('bn3',))


class ResNet(nn.Module):
  """Bottleneck ResNet/ResNeXt for 224x224 ImageNet-style inputs.

  torchvision's layout and initialisation: 7x7/2 stem, 3x3/2 max pool, stages
  of 64/128/256/512 filters with the stride on each first block's 3x3
  convolution, He-normal (fan-out) convolutions, PyTorch's default linear
  init, BN momentum 0.9 (PyTorch's 0.1) and epsilon 1e-5, no zero-init of the
  last BN of a block.

  Attributes:
    stage_sizes: blocks per stage.
    num_classes: number of logits.
    norm: 'nbn' (NBN where `nbn_placement` says, plain BN elsewhere) or 'bn'.
    nbn_placement: where NBN goes; default the reference's four layer4 BNs
      with one shared alpha.
    groups: ResNeXt cardinality (1 for ResNet).
    width_per_group: ResNeXt bottleneck width (64 for ResNet).
    logit_norm: add the reference's logit-rectification head (BN without
      affine over the logits).
    bn_momentum: decay of the BN running averages.
    bn_epsilon: BN variance epsilon.
    bn_axis_name: BN statistics scope (see `NormalizedBatchNorm`).
    bn_axis_index_groups: BN statistics groups under `pmap`.
    dtype: computation dtype (parameters and statistics stay float32).
  """

  stage_sizes: tuple[int, ...]
  num_classes: int = 1000
  norm: str = 'nbn'
  nbn_placement: common.NBNPlacement = LAYER4_NBN
  groups: int = 1
  width_per_group: int = 64
  logit_norm: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  bn_axis_index_groups: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = True) -> Array:
    """(batch, height, width, 3) images -> (batch, num_classes) float32 logits."""
    self.nbn_placement.validate(len(self.stage_sizes), ('bn1', 'bn2', 'bn3'))
    norm, nbn = common.norm_partials(
        self.norm,
        train,
        self.dtype,
        self.bn_axis_name,
        self.bn_axis_index_groups,
        self.bn_momentum,
        self.bn_epsilon,
    )
    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        dtype=self.dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
    )
    alpha = common.shared_alpha(self, self.norm, self.nbn_placement)

    x = jnp.asarray(x, self.dtype)
    x = conv(64, (7, 7), (2, 2), padding=3, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      nbn_sites = common.nbn_sites(self.norm, self.nbn_placement, stage)
      for block in range(num_blocks):
        x = BottleneckBlock(
            filters=64 * 2**stage,
            conv=conv,
            norm=norm,
            nbn=nbn,
            nbn_sites=nbn_sites,
            strides=2 if stage > 0 and block == 0 else 1,
            groups=self.groups,
            width_per_group=self.width_per_group,
            name=f'layer{stage + 1}_{block}',
        )(x, alpha)
    return common.classifier_head(
        x,
        self.num_classes,
        kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
        dtype=self.dtype,
        logit_norm=norm if self.logit_norm else None,
    )


ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
ResNeXt50 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), groups=32, width_per_group=4
)
