"""RIDE ensembles (Wang et al. 2021) of the ResNet families, with NBN.

A RIDE network shares the stem and the first stages; each of its experts has
its own last stages (`expert_stages`, 2 by default), global pool and
classifier head. As the reference's `resnet50_ride_NBN` and RIDE's own code
build them:

* `RIDEResNet50`, `RIDEResNeXt50`: stem, layer1, layer2 shared; layer3,
  layer4, pool and head per expert. Full widths by default (the
  reference); `reduce_dimension` gives the experts RIDE's 192 / 384
  filters in layer3 / layer4 instead of 256 / 512. Linear heads by default
  (the reference; RIDE's own ImageNet configs use the cosine head).
* `RIDEResNet32`: RIDE's CIFAR ResNet-32, stem and stage 1 shared, stages
  2 and 3 per expert at 32 / 64 filters (`reduce_dimension`: 24 / 48, what
  RIDE's CIFAR configs use), option-A shortcuts, cosine head x 30 by
  default (RIDE's CIFAR configs).

NBN by default (`norm='nbn'`) on every BN of each expert's last stage (bn1,
bn2, bn3 of every block and the shortcut BN: 10 layers per expert in
ResNet-50), all of one expert reading that expert's own ``nbn_alpha``: the
reference's placement for ResNet-50; for the CIFAR ensemble, which the
reference does not have, the same rule (bn1 and bn2 of the five last-stage
blocks, option-A shortcuts have no BN). The `nbn_placement` fields override
it as in the single networks; NBN layers in shared stages read the
network's own ``nbn_alpha``.

Each expert is the submodule ``expert_{e}``: its stages, its classifier
``fc``, its logit-rectification BN ``logit_norm`` (`logit_norm=True`: the
reference's `Linear_fcbn_notaffine`, one per expert) and its ``nbn_alpha``.
In training and evaluation the output is a mapping: 'logits' (batch,
classes), the plain mean of the experts' logits (what evaluation reads), and
'expert_logits' (experts, batch, classes), what RIDE's losses read. RIDE's
expert-assignment router (its optional second stage) is not built; the
reference uses none.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.models.cifar_resnet import CifarResNet
from nbn_jax.models.common import (
    NBNPlacement,
    NormSwitchedResNet,
)
from nbn_jax.models.network import (
    EXPERT_LOGITS,
    LOGITS,
    named_network,
)
from nbn_jax.models.resnet import ResNet

Array = jax.Array

# The reference's `ResNet_NBN.scale_modules`: every BN of expert e's layer4
# reads scale_factor[e].
RIDE_LAYER4_NBN = NBNPlacement(stages=(3,), block_norms=('bn1', 'bn2', 'bn3'))
# The same rule for the CIFAR ensemble (no reference): every BN of each
# expert's last stage.
RIDE_LAST_STAGE_NBN = NBNPlacement(stages=(2,), block_norms=('bn1', 'bn2'))


class Expert(nn.Module, kw_only=True):
  """One expert: its own stages and head, and the alpha its NBN layers share.

  Attributes:
    stages: ``stages(features, alpha=alpha or None)`` -> features; builds
      the expert's stages, which it runs, in this module.
    head: features -> (batch, classes) logits; builds the head here too.
    alpha: owner -> the alpha the expert's NBN layers share, created in
      the owner (this expert) as its ``nbn_alpha``, or None
      (`NormSwitchedResNet.scope_alpha`).
  """

  stages: Callable[[Array, Array | None], Array]
  head: Callable[[Array], Array]
  alpha: Callable[[nn.Module], Array | None]

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Shared features -> this expert's (batch, classes) logits."""
    return self.head(self.stages(x, alpha=self.alpha(self)))


class RIDEEnsemble(NormSwitchedResNet, kw_only=True):
  """A RIDE ensemble of a ResNet family (mixed in before the family).

  Attributes:
    num_experts: E, the number of experts (RIDE: 3).
    reduce_dimension: RIDE's narrower experts: the family's
      `REDUCED_WIDTHS` in place of `widths`.
    expert_stages: how many of the last stages each expert owns (RIDE: 2;
      1 is RIDE's `share_layer3`).
  """

  num_experts: int = 3
  reduce_dimension: bool = False
  expert_stages: int = 2

  OUTPUTS = (LOGITS, EXPERT_LOGITS)

  @nn.compact
  def __call__(self, x: Array, train: bool = True) -> dict[str, Array]:
    """(batch, H, W, C) images -> {LOGITS: (B, C), EXPERT_LOGITS: (E, B, C)}."""
    layers = self.layer_defs(train)
    x = self.stem(jnp.asarray(x, self.dtype), layers)
    split = len(self.stage_sizes) - self.expert_stages
    shared, own = range(split), range(split, len(self.stage_sizes))
    x = self.stages(x, shared, layers, self.scope_alpha(self, shared))
    expert = functools.partial(
        Expert,
        stages=functools.partial(self.stages, stages=own, layers=layers),
        head=functools.partial(self.classifier_head, layers=layers),
        alpha=functools.partial(self.scope_alpha, stages=own),
    )
    expert_logits = jnp.stack(
        [expert(name=f'expert_{e}')(x) for e in range(self.num_experts)]
    )
    return {LOGITS: expert_logits.mean(0), EXPERT_LOGITS: expert_logits}

  @nn.nowrap
  def check_fields(self):
    if not self.num_experts >= 1:
      raise ValueError(f'num_experts={self.num_experts!r} must be >= 1.')
    if not 1 <= self.expert_stages <= len(self.stage_sizes):
      raise ValueError(
          f'expert_stages={self.expert_stages!r} must be 1 to '
          f'{len(self.stage_sizes)} (the stages).'
      )
    super().check_fields()

  @nn.nowrap
  def stage_widths(self) -> tuple[int, ...]:
    return self.REDUCED_WIDTHS if self.reduce_dimension else self.widths


class RIDEResNet(RIDEEnsemble, ResNet, kw_only=True):
  """RIDE ensemble of the bottleneck ResNet/ResNeXt (see the module doc).

  `ResNet`'s layout and init in every part; see `RIDEEnsemble` and
  `NormSwitchedResNet` for the fields.
  """

  nbn_placement: NBNPlacement = RIDE_LAYER4_NBN

  # RIDE's `reduce_dimension`: layer3 / layer4 at 192 / 384 filters.
  REDUCED_WIDTHS = (64, 128, 192, 384)


class RIDECifarResNet(RIDEEnsemble, CifarResNet, kw_only=True):
  """RIDE's CIFAR ensemble of ResNet-32 (see the module docstring).

  `CifarResNet`'s layout and init, the cosine head x 30 by default (RIDE's
  `use_norm`); see `RIDEEnsemble` and `NormSwitchedResNet` for the fields.
  """

  nbn_placement: NBNPlacement = RIDE_LAST_STAGE_NBN
  classifier: str = 'cosine'

  # RIDE's `reduce_dimension`: stages 2 / 3 at 24 / 48 filters.
  REDUCED_WIDTHS = (16, 24, 48)


RIDEResNet50 = named_network(
    'RIDEResNet50',
    RIDEResNet,
    "The reference's resnet50_ride_NBN: RIDEResNet50(num_classes, **fields).",
    stage_sizes=(3, 4, 6, 3),
)
RIDEResNeXt50 = named_network(
    'RIDEResNeXt50',
    RIDEResNet,
    "RIDE's ResNeXt-50 32x4d ensemble: RIDEResNeXt50(num_classes, **fields).",
    stage_sizes=(3, 4, 6, 3),
    groups=32,
    width_per_group=4,
)
RIDEResNet32 = named_network(
    'RIDEResNet32',
    RIDECifarResNet,
    "RIDE's CIFAR ResNet-32 ensemble: RIDEResNet32(num_classes, **fields).",
    stage_sizes=(5, 5, 5),
)
# One block per stage, for quick tests.
RIDEResNet14 = named_network(
    'RIDEResNet14',
    RIDEResNet,
    'RIDEResNet50 with one block per stage: RIDEResNet14(num_classes, ...).',
    stage_sizes=(1, 1, 1, 1),
)
RIDEResNet8 = named_network(
    'RIDEResNet8',
    RIDECifarResNet,
    'RIDEResNet32 with one block per stage: RIDEResNet8(num_classes, ...).',
    stage_sizes=(1, 1, 1),
)
