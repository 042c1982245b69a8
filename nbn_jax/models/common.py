"""What the ResNet families share: NBN placement, norm partials and the head."""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.normalization import NormalizedBatchNorm

Array = jax.Array
ModuleDef = Callable[..., nn.Module]

NORMS = ('bn', 'nbn')
SHORTCUT_NORM = 'downsample_bn'


@dataclasses.dataclass(frozen=True)
class NBNPlacement:
  """Which BN layers of a ResNet become `NormalizedBatchNorm` when norm='nbn'.

  Attributes:
    stages: 0-based indices of the residual stages whose blocks get NBN
      (torchvision's layer4 is stage 3).
    block_norms: names of the BNs inside each block of those stages that get
      NBN: 'bn1', 'bn2' (both block types) and 'bn3' (bottleneck only).
    shortcut: whether the BN of a projection shortcut in those stages gets NBN.
    shared_alpha: True: all NBN layers read one scalar ``nbn_alpha`` owned by
      the model (the reference). False: each NBN layer owns its ``alpha``.
  """

  stages: tuple[int, ...]
  block_norms: tuple[str, ...]
  shortcut: bool = True
  shared_alpha: bool = True

  def block_sites(self, stage: int) -> frozenset[str]:
    """Names of the norm layers of a block in `stage` that are NBN."""
    if stage not in self.stages:
      return frozenset()
    return frozenset(self.block_norms) | (
        {SHORTCUT_NORM} if self.shortcut else frozenset()
    )

  def validate(self, num_stages: int, block_norm_names: tuple[str, ...]):
    """Raises ValueError if the placement names a stage or BN the net lacks."""
    bad_stages = [s for s in self.stages if not 0 <= s < num_stages]
    if bad_stages:
      raise ValueError(
          f'nbn_placement.stages={self.stages}: stages {bad_stages} do not '
          f'exist; this network has stages 0..{num_stages - 1}.'
      )
    bad_norms = sorted(set(self.block_norms) - set(block_norm_names))
    if bad_norms:
      raise ValueError(
          f'nbn_placement.block_norms={self.block_norms}: {bad_norms} are not '
          f'BNs of this network\'s blocks; choose from {block_norm_names}.'
      )


class ResidualBlock(nn.Module):
  """Base of the residual blocks: builds BN or NBN for a named norm site.

  Subclasses define the fields `norm` (plain BN partial), `nbn` (NBN partial)
  and `nbn_sites` (names of the sites that are NBN).
  """

  def norm_at(self, site: str, x: Array, alpha: Array | None) -> Array:
    """Applies the norm layer named `site` to `x` (NBN reads `alpha`)."""
    if site in self.nbn_sites:
      return self.nbn(name=site)(x, alpha=alpha)
    return self.norm(name=site)(x)


def norm_partials(
    norm: str,
    train: bool,
    dtype: Any,
    axis_name: str | None,
    axis_index_groups: Any,
    momentum: float,
    epsilon: float,
) -> tuple[ModuleDef, ModuleDef]:
  """Returns the (plain BN, NBN) partials shared by all norm sites of a model.

  The statistics scope (`axis_name`, `axis_index_groups`) is explained in
  `NormalizedBatchNorm`. PyTorch's BN momentum 0.1 is `momentum=0.9` here.
  """
  if norm not in NORMS:
    raise ValueError(f'norm={norm!r} is not one of {NORMS}.')
  common = dict(
      use_running_average=not train,
      momentum=momentum,
      epsilon=epsilon,
      dtype=dtype,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
  )
  return (
      functools.partial(nn.BatchNorm, **common),
      functools.partial(NormalizedBatchNorm, **common),
  )


def shared_alpha(
    model: nn.Module, norm: str, placement: NBNPlacement
) -> Array | None:
  """Creates the model's one ``nbn_alpha`` parameter, if NBN layers share it."""
  if norm == 'nbn' and placement.shared_alpha and placement.stages:
    return model.param('nbn_alpha', nn.initializers.ones, (), jnp.float32)
  return None


def nbn_sites(norm: str, placement: NBNPlacement, stage: int) -> frozenset[str]:
  """Names of the NBN norm sites of a block in `stage` (none when norm='bn')."""
  return placement.block_sites(stage) if norm == 'nbn' else frozenset()


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default `nn.Linear` bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = fan_in**-0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def classifier_head(
    features: Array,
    num_classes: int,
    kernel_init: nn.initializers.Initializer,
    dtype: Any,
    logit_norm: ModuleDef | None,
) -> Array:
  """Global average pool, linear classifier `fc`, optional logit BN.

  Args:
    features: (batch, height, width, channels) activations.
    num_classes: number of logits.
    kernel_init: init of the fc weight (the bias uses PyTorch's default).
    dtype: computation dtype of the fc layer.
    logit_norm: a BN partial without affine (the reference's "logit
      rectification" head), or None.

  Returns:
    (batch, num_classes) float32 logits.
  """
  x = jnp.mean(features, axis=(1, 2))
  x = nn.Dense(
      num_classes,
      dtype=dtype,
      kernel_init=kernel_init,
      bias_init=torch_linear_bias_init(features.shape[-1]),
      name='fc',
  )(x)
  if logit_norm is not None:
    x = logit_norm(use_scale=False, use_bias=False, name='logit_norm')(x)
  return jnp.asarray(x, jnp.float32)
