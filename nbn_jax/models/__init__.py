"""ResNets whose BN layers can be switched to NBN with `norm='nbn'`."""

from nbn_jax.models.blocks import BasicBlock, BottleneckBlock
from nbn_jax.models.cifar_resnet import (
    LAST_STAGE_NBN,
    CifarResNet,
    ResNet8,
    ResNet32,
)
from nbn_jax.models.common import (
    NBNPlacement,
    NormSwitchedResNet,
    ResidualBlock,
)
from nbn_jax.models.resnet import (
    LAYER4_NBN,
    ResNet,
    ResNet14,
    ResNet50,
    ResNeXt50,
)

__all__ = [
    'BasicBlock',
    'BottleneckBlock',
    'CifarResNet',
    'LAST_STAGE_NBN',
    'LAYER4_NBN',
    'NBNPlacement',
    'NormSwitchedResNet',
    'ResNet',
    'ResNet8',
    'ResNet14',
    'ResNet32',
    'ResNet50',
    'ResNeXt50',
    'ResidualBlock',
]
