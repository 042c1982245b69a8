"""What the ResNet families share: NBN placement, norm set-up, blocks' and
models' common fields, the stages and the classifier heads (linear or
cosine)."""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.models.network import CLASSIFIER, LOGIT_NORM
from nbn_jax.normalization import NormalizedBatchNorm

Array = jax.Array
ModuleDef = Callable[..., nn.Module]

NORMS = ('bn', 'nbn')
CLASSIFIERS = ('linear', 'cosine')
SHORTCUT_NORM = 'downsample_bn'
# The scalar shared by the NBN layers of one module, the network or a RIDE
# expert (`NBNPlacement.shared_alpha`). Which parameters NBN layers read as
# alpha is `nbn_jax.inspection`'s to say.
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
    shared_alpha: True: the NBN layers read one scalar ``nbn_alpha`` owned by
      the model (the reference), or in a RIDE ensemble by each expert for
      its own layers. False: each NBN layer owns its ``alpha``.
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


class LayerDefs(NamedTuple):
  """The layer constructors of one network, shared by all its stages.

  Attributes:
    conv: convolution partial (no bias, the family's kernel init).
    norm: plain BN partial.
    nbn: NBN partial (the same settings), for the NBN sites.
  """

  conv: ModuleDef
  norm: ModuleDef
  nbn: ModuleDef


class KernelInits(NamedTuple):
  """A family's weight inits: its convolutions' and its linear head's."""

  conv: nn.initializers.Initializer
  fc: nn.initializers.Initializer


class NormSwitchedResNet(nn.Module, kw_only=True):
  """A ResNet whose BNs switch to NBN with one field, and what it is made of.

  `__call__` is stem -> stages -> classifier head. A family (`ResNet`,
  `CifarResNet`) defines the fields `stage_sizes`, `widths` and
  `nbn_placement` (its reference placement by default), the class
  attributes `BLOCK` (its residual block), `BLOCK_NORMS` (the norm sites
  of that block) and `KERNEL_INITS`, and the methods `stem` and
  `block_fields`. The RIDE ensembles
  (`nbn_jax.models.ride`) build the same pieces into shared stages and
  experts.

  Attributes:
    num_classes: number of logits.
    norm: 'nbn' (NBN where `nbn_placement` says, plain BN elsewhere) or 'bn'.
    logit_norm: add the reference's logit-rectification head (BN without
      affine over the logits, after the classifier).
    classifier: 'linear' (`fc`: a dense layer with bias) or 'cosine' (`fc`:
      the cosine of the pooled features and each class's weight vector,
      times `cosine_scale`; LDAM's and RIDE's NormedLinear).
    cosine_scale: the cosine classifier's scale s (LDAM, RIDE: 30).
    bn_momentum: decay of the BN running averages (PyTorch's 0.1 is 0.9).
    bn_epsilon: BN variance epsilon.
    bn_axis_name: BN statistics scope (see `NormalizedBatchNorm`).
    bn_axis_index_groups: BN statistics groups under `pmap`.
    dtype: computation dtype (parameters and statistics stay float32).
  """

  num_classes: int
  norm: str = 'nbn'
  logit_norm: bool = False
  classifier: str = 'linear'
  cosine_scale: float = 30.0
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  bn_axis_index_groups: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = True) -> Array:
    """(batch, height, width, channels) images -> (batch, num_classes)."""
    layers = self.layer_defs(train)
    x = self.stem(jnp.asarray(x, self.dtype), layers)
    every_stage = range(len(self.stage_sizes))
    x = self.stages(x, every_stage, layers, self.scope_alpha(self, every_stage))
    return self.classifier_head(x, layers)

  @nn.nowrap
  def check_fields(self):
    """Raises ValueError for a field value the network cannot build."""
    if self.norm not in NORMS:
      raise ValueError(f'norm={self.norm!r} is not one of {NORMS}.')
    if self.classifier not in CLASSIFIERS:
      raise ValueError(
          f'classifier={self.classifier!r} is not one of {CLASSIFIERS}.'
      )
    if len(self.stage_widths()) != len(self.stage_sizes):
      raise ValueError(
          f'widths={self.stage_widths()} and stage_sizes={self.stage_sizes} '
          'must have one entry per stage.'
      )
    self.nbn_placement.validate(len(self.stage_sizes), self.BLOCK_NORMS)

  @nn.nowrap
  def layer_defs(self, train: bool) -> LayerDefs:
    """Checks the fields; the conv, BN and NBN constructors of the network."""
    self.check_fields()
    common = dict(
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        axis_name=self.bn_axis_name,
        axis_index_groups=self.bn_axis_index_groups,
    )
    return LayerDefs(
        conv=functools.partial(
            nn.Conv,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=self.KERNEL_INITS.conv,
        ),
        norm=functools.partial(nn.BatchNorm, **common),
        nbn=functools.partial(NormalizedBatchNorm, **common),
    )

  @nn.nowrap
  def stage_widths(self) -> tuple[int, ...]:
    """Filters of each stage (a bottleneck's output is 4 times as many)."""
    return self.widths

  @nn.nowrap
  def shares_alpha(self, stages: Sequence[int]) -> bool:
    """Whether NBN layers in `stages` read one alpha of their module.

    That module (the network, or a RIDE expert) owns it as ``nbn_alpha``.
    """
    placement = self.nbn_placement
    return (
        self.norm == 'nbn'
        and placement.shared_alpha
        and any(stage in placement.stages for stage in stages)
    )

  @nn.nowrap
  def scope_alpha(
      self, owner: nn.Module, stages: Sequence[int]
  ) -> Array | None:
    """The alpha the NBN layers of `stages` read, when they share one.

    `owner` (the network, or a RIDE expert, being built) owns it as its
    ``nbn_alpha`` (1.0 at init). None when they do not share one (each NBN
    layer owns its ``alpha``) or there is none.
    """
    if not self.shares_alpha(stages):
      return None
    return owner.param(NBN_ALPHA, nn.initializers.ones, (), jnp.float32)

  @nn.nowrap
  def nbn_sites(self, stage: int) -> frozenset[str]:
    """Names of the NBN norm sites of a block in `stage`."""
    if self.norm != 'nbn':
      return frozenset()
    return self.nbn_placement.block_sites(stage)

  @nn.nowrap
  def stages(
      self,
      x: Array,
      stages: Sequence[int],
      layers: LayerDefs,
      alpha: Array | None,
  ) -> Array:
    """Runs the residual `stages` (0-based, in order) on `x`."""
    for stage in stages:
      x = self.stage(x, stage, layers, alpha)
    return x

  @nn.nowrap
  def stage(
      self, x: Array, stage: int, layers: LayerDefs, alpha: Array | None
  ) -> Array:
    """The blocks ``layer{stage + 1}_{block}`` of one stage; the first
    block of every stage but the first halves the resolution."""
    for block in range(self.stage_sizes[stage]):
      x = self.BLOCK(
          filters=self.stage_widths()[stage],
          conv=layers.conv,
          norm=layers.norm,
          nbn=layers.nbn,
          nbn_sites=self.nbn_sites(stage),
          strides=2 if stage > 0 and block == 0 else 1,
          name=f'layer{stage + 1}_{block}',
          **self.block_fields(),
      )(x, alpha)
    return x

  @nn.nowrap
  def block_fields(self) -> dict[str, Any]:
    """The family's own fields of `BLOCK` (shortcut, ResNeXt groups)."""
    return {}

  @nn.nowrap
  def classifier_head(self, features: Array, layers: LayerDefs) -> Array:
    """Global average pool, classifier `fc`, optional logit BN.

    Args:
      features: (batch, height, width, channels) activations.
      layers: the network's layers (the plain BN for the logit BN).

    Returns:
      (batch, num_classes) logits in float32, or in the computation dtype
      when that is wider (float64).
    """
    x = jnp.mean(features, axis=(1, 2))
    if self.classifier == 'cosine':
      x = CosineClassifier(
          self.num_classes, self.cosine_scale, self.dtype, name=CLASSIFIER
      )(x)
    else:
      x = nn.Dense(
          self.num_classes,
          dtype=self.dtype,
          kernel_init=self.KERNEL_INITS.fc,
          bias_init=torch_linear_bias_init(features.shape[-1]),
          name=CLASSIFIER,
      )(x)
    if self.logit_norm:
      x = layers.norm(use_scale=False, use_bias=False, name=LOGIT_NORM)(x)
    return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(x: Array, axis: int, epsilon: float = 1e-12) -> Array:
  """x / max(||x||, epsilon) along `axis` (PyTorch's F.normalize).

  Finite gradients everywhere, also for a zero vector.
  """
  squares = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squares, epsilon**2))


def unit_columns_init(key, shape, dtype=jnp.float32) -> Array:
  """U(-1, 1), then each column (one class's weight vector) at unit norm.

  The init of LDAM's and RIDE's NormedLinear (its `renorm_` over dim 1).
  """
  kernel = jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
  return jnp.asarray(l2_normalize(kernel, axis=0), dtype)


class CosineClassifier(nn.Module):
  """scale * cos(features, class weights): (batch, D) -> (batch, classes).

  LDAM's (and RIDE's) NormedLinear followed by RIDE's scale s: the
  features and each column of `kernel` (D, classes) are normalised to
  unit L2 length; no bias. The normalisation is in float32 or wider.

  Attributes:
    num_classes: number of logits.
    scale: s, the logits' range is [-s, s].
    dtype: computation dtype of the product.
  """

  num_classes: int
  scale: float = 30.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param(
        'kernel', unit_columns_init, (x.shape[-1], self.num_classes)
    )
    wide = jnp.promote_types(self.dtype, jnp.float32)
    x = l2_normalize(jnp.asarray(x, wide), axis=-1)
    kernel = l2_normalize(jnp.asarray(kernel, wide), axis=0)
    cosine = jnp.asarray(x, self.dtype) @ jnp.asarray(kernel, self.dtype)
    return self.scale * cosine


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default `nn.Linear` bias init: U(+-1 / sqrt(fan_in))."""
  bound = fan_in**-0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
