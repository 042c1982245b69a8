"""ResNets whose BN layers can be switched to NBN with `norm='nbn'`, and
their RIDE ensembles (`nbn_jax.models.ride`).

`MODELS` names every network (`config.model` chooses from it); a new
network keeps the contract of `nbn_jax.models.network` (`Network`) and
registers itself with `named_network` in its own module.
"""

from nbn_jax.models.blocks import BasicBlock, BottleneckBlock
from nbn_jax.models.cifar_resnet import (
    LAST_STAGE_NBN,
    CifarResNet,
    ResNet8,
    ResNet32,
)
from nbn_jax.models.common import (
    CLASSIFIERS,
    NORMS,
    NBNPlacement,
    NormSwitchedResNet,
    ResidualBlock,
)
from nbn_jax.models.network import (
    CLASSIFIER,
    EXPERT_LOGITS,
    LOGIT_NORM,
    LOGITS,
    MODELS,
    OPTIONAL_FIELDS,
    Network,
    describe_output,
    named_network,
    outputs_of,
    takes_field,
)
from nbn_jax.models.resnet import (
    LAYER4_NBN,
    ResNet,
    ResNet14,
    ResNet50,
    ResNet101,
    ResNet152,
    ResNeXt50,
)
from nbn_jax.models.ride import (
    RIDE_LAST_STAGE_NBN,
    RIDE_LAYER4_NBN,
    RIDECifarResNet,
    RIDEEnsemble,
    RIDEResNet,
    RIDEResNet8,
    RIDEResNet14,
    RIDEResNet32,
    RIDEResNet50,
    RIDEResNeXt50,
)

__all__ = [
    'BasicBlock',
    'BottleneckBlock',
    'CLASSIFIER',
    'CLASSIFIERS',
    'CifarResNet',
    'EXPERT_LOGITS',
    'LAST_STAGE_NBN',
    'LAYER4_NBN',
    'LOGITS',
    'LOGIT_NORM',
    'MODELS',
    'NORMS',
    'NBNPlacement',
    'Network',
    'OPTIONAL_FIELDS',
    'NormSwitchedResNet',
    'RIDECifarResNet',
    'RIDEEnsemble',
    'RIDEResNet',
    'RIDEResNet8',
    'RIDEResNet14',
    'RIDEResNet32',
    'RIDEResNet50',
    'RIDEResNeXt50',
    'RIDE_LAST_STAGE_NBN',
    'RIDE_LAYER4_NBN',
    'ResNet',
    'ResNet8',
    'ResNet14',
    'ResNet32',
    'ResNet50',
    'ResNet101',
    'ResNet152',
    'ResNeXt50',
    'ResidualBlock',
    'describe_output',
    'named_network',
    'outputs_of',
    'takes_field',
]
