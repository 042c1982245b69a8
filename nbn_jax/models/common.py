"""What the ResNet families share: NBN placement, norm set-up, blocks' and
models' common fields, and the classifier head."""

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
# The model-level scalar shared by all NBN layers (`NBNPlacement.shared_alpha`).
# Which parameters NBN layers read as alpha is `nbn_jax.inspection`'s to say.
NBN_ALPHA = 'nbn_alpha'


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
    shortcut = {SHORTCUT_NORM} if self.shortcut else set()
    return frozenset(self.block_norms) | shortcut

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
          f"BNs of this network's blocks; choose from {block_norm_names}."
      )


class ResidualBlock(nn.Module, kw_only=True):
  """Fields of every residual block, and BN-or-NBN at a named norm site.

  Attributes:
    filters: the block's base number of filters.
    conv: convolution partial (no bias).
    norm: plain BN partial.
    nbn: NBN partial, used at the sites named in `nbn_sites`.
    nbn_sites: names of this block's norm layers that are NBN.
    strides: stride of the block's strided convolution.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  nbn: ModuleDef
  nbn_sites: frozenset[str] = frozenset()
  strides: int = 1

  def norm_at(self, site: str, x: Array, alpha: Array | None) -> Array:
    """Applies the norm layer named `site` to `x` (NBN reads `alpha`)."""
    if site in self.nbn_sites:
      return self.nbn(name=site)(x, alpha=alpha)
    return self.norm(name=site)(x)


class NormSwitchedResNet(nn.Module, kw_only=True):
  """Fields and helpers of a ResNet whose BNs switch to NBN with one field.

  Subclasses define `nbn_placement` (their reference placement by default).

  Attributes:
    num_classes: number of logits.
    norm: 'nbn' (NBN where `nbn_placement` says, plain BN elsewhere) or 'bn'.
    logit_norm: add the reference's logit-rectification head (BN without
      affine over the logits).
    bn_momentum: decay of the BN running averages (PyTorch's 0.1 is 0.9).
    bn_epsilon: BN variance epsilon.
    bn_axis_name: BN statistics scope (see `NormalizedBatchNorm`).
    bn_axis_index_groups: BN statistics groups under `pmap`.
    dtype: computation dtype (parameters and statistics stay float32).
  """

  num_classes: int
  norm: str = 'nbn'
  logit_norm: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  bn_axis_index_groups: Any = None
  dtype: Any = jnp.float32

  def norm_layers(
      self, train: bool, num_stages: int, block_norm_names: tuple[str, ...]
  ) -> tuple[ModuleDef, ModuleDef, Array | None]:
    """Checks the settings; returns (BN partial, NBN partial, shared alpha).

    The shared alpha is the model's ``nbn_alpha`` parameter, created here
    when NBN layers share one, else None.
    """
    if self.norm not in NORMS:
      raise ValueError(f'norm={self.norm!r} is not one of {NORMS}.')
    self.nbn_placement.validate(num_stages, block_norm_names)
    common = dict(
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        axis_name=self.bn_axis_name,
        axis_index_groups=self.bn_axis_index_groups,
    )
    alpha = None
    placement = self.nbn_placement
    if self.norm == 'nbn' and placement.shared_alpha and placement.stages:
      alpha = self.param(NBN_ALPHA, nn.initializers.ones, (), jnp.float32)
    return (
        functools.partial(nn.BatchNorm, **common),
        functools.partial(NormalizedBatchNorm, **common),
        alpha,
    )

  def nbn_sites(self, stage: int) -> frozenset[str]:
    """Names of the NBN norm sites of a block in `stage`."""
    if self.norm != 'nbn':
      return frozenset()
    return self.nbn_placement.block_sites(stage)

  def classifier_head(
      self,
      features: Array,
      kernel_init: nn.initializers.Initializer,
      norm: ModuleDef,
  ) -> Array:
    """Global average pool, linear classifier `fc`, optional logit BN.

    Args:
      features: (batch, height, width, channels) activations.
      kernel_init: init of the fc weight (the bias uses PyTorch's default).
      norm: the model's plain BN partial, for the logit-rectification head.

    Returns:
      (batch, num_classes) logits in float32, or in the computation dtype
      when that is wider (float64).
    """
    x = jnp.mean(features, axis=(1, 2))
    x = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        kernel_init=kernel_init,
        bias_init=torch_linear_bias_init(features.shape[-1]),
        name='fc',
    )(x)
    if self.logit_norm:
      x = norm(use_scale=False, use_bias=False, name='logit_norm')(x)
    return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))


# Every named network, by name: what `config.model` chooses from. Filled by
# `named_network` as the model modules define their networks.
MODELS: dict[str, Callable[..., nn.Module]] = {}


def named_network(
    name: str, cls: type[nn.Module], doc: str, **fixed: Any
) -> Callable[..., nn.Module]:
  """Registers `name` in `MODELS`: `cls` with `fixed` fields, classes first.

  ``ResNet50(1000)`` and ``ResNet50(num_classes=1000, norm='bn')`` both
  work; other fields are keywords. The builder's `module_class` is `cls`.
  """

  def build(num_classes: int, **fields: Any) -> nn.Module:
    return cls(num_classes=num_classes, **fixed, **fields)

  build.__name__ = build.__qualname__ = name
  build.__doc__ = doc
  build.module_class = cls
  MODELS[name] = build
  return build


def takes_field(network: Callable[..., nn.Module], field: str) -> bool:
  """Whether a `MODELS` entry's module has a field named `field`."""
  return field in {f.name for f in dataclasses.fields(network.module_class)}


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default `nn.Linear` bias init: U(+-1 / sqrt(fan_in))."""
  bound = fan_in**-0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
