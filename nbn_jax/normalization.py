"""Normalized Batch Normalization (NBN), a drop-in for `flax.linen.BatchNorm`.

NBN (Bao et al., "Normalizing Batch Normalization for Long-Tailed
Recognition", IEEE TIP 2025) keeps everything of batch normalisation except the
affine parameters. A layer's whole scale vector and its whole bias vector are
each normalised to unit L2 length and multiplied by one learnable scalar
``alpha``::

    scale_eff = alpha * scale / (||scale||_2 + norm_epsilon)
    bias_eff  = alpha * bias  / (||bias||_2  + norm_epsilon)
    y = scale_eff * (x - mean) / sqrt(var + epsilon) + bias_eff

so the per-channel balance (the direction) and the overall magnitude (alpha)
are learned separately. Batch statistics, running statistics and evaluation are
those of `nn.BatchNorm`; at evaluation an NBN layer is a plain BN with
``(scale_eff, bias_eff)``, which `effective_affine` returns for folding
(`nbn_jax.folding` folds a whole model).

A drop-in in the sense that it takes the same fields and variables; the
network it builds differs from BN's at init (see `NormalizedBatchNorm`:
effective scale 1/sqrt(C), the meaning of a zero `scale_init`, the 1e6
first raw-bias gradient). `nbn_jax.nnx` has the NNX layer.

This module imports only jax and flax so it can be lifted into any model.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax.linen import dtypes, initializers, module
from flax.linen.module import Module, compact

# Flax's own statistics code: the same mean/variance (float32 promotion, fast
# variance, negative-variance clipping, one fused pmean) as nn.BatchNorm.
from flax.linen.normalization import _canonicalize_axes, _compute_stats

Array = jax.Array
Dtype = Any
Initializer = initializers.Initializer


def safe_l2_norm(x: Array) -> Array:
  """L2 norm of all entries of `x`; value and gradient are 0 at x = 0.

  `jnp.linalg.norm` has a NaN gradient at 0. Here, as with `torch.norm`, the
  gradient at 0 is 0, which matters for NBN because the bias starts at exactly
  zero (see `normalized_to_alpha`).

  Args:
    x: any shape.

  Returns:
    A scalar of `x`'s dtype.
  """
  squared = jnp.sum(jnp.square(x))
  positive = squared > 0
  # The inner `where` keeps sqrt's derivative away from 0 on the unused branch.
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1)), 0)


def normalized_to_alpha(v: Array, alpha: Array, norm_epsilon: float) -> Array:
  """Returns ``alpha * v / (||v||_2 + norm_epsilon)``, the norm over all of `v`.

  At ``v = 0`` the value is 0 and the gradient with respect to `v` is
  ``alpha / norm_epsilon`` times the upstream gradient (1e6 times larger than
  usual with the default epsilon), exactly as in the PyTorch reference: after
  the first update the direction of a zero-initialised bias is essentially
  fixed by that update.

  Args:
    v: a parameter vector (any shape; the norm runs over every entry).
    alpha: a scalar (or anything that broadcasts against `v`).
    norm_epsilon: added to the norm, outside the square root.
  """
  return alpha * v / (safe_l2_norm(v) + norm_epsilon)


def effective_affine(
    scale: Array, bias: Array, alpha: Array, norm_epsilon: float = 1e-6
) -> tuple[Array, Array]:
  """The plain-BN ``(scale, bias)`` an NBN layer applies, shapes as the inputs.

  Use it to fold a trained NBN layer into `nn.BatchNorm` or to inspect the
  per-channel balance the layer has learned.
  """
  return (
      normalized_to_alpha(scale, alpha, norm_epsilon),
      normalized_to_alpha(bias, alpha, norm_epsilon),
  )


def effective_params(
    params: dict[str, Array], alpha: Array, norm_epsilon: float = 1e-6
) -> dict[str, Array]:
  """An NBN layer's params -> the `nn.BatchNorm` params it equals at eval.

  Args:
    params: the layer's ``scale`` and/or ``bias`` (whichever it has; its own
      ``alpha``, if any, is ignored: pass it as `alpha`).
    alpha: the scalar the layer reads (its own or a shared one).
    norm_epsilon: the layer's `norm_epsilon`.

  Returns:
    ``{'scale': scale_eff, 'bias': bias_eff}`` with the keys of `params` that
    are ``scale`` or ``bias``.
  """
  return {
      name: normalized_to_alpha(params[name], alpha, norm_epsilon)
      for name in ('scale', 'bias')
      if name in params
  }


def starting_scale_and_alpha(scale: Array) -> tuple[Array, Array]:
  """(raw scale, own alpha) a layer starts from, given `scale_init`'s vector.

  A zero vector has no direction, and NBN would blow it up to full length at
  the first update. So a zero initial scale becomes a direction of ones with
  alpha 0: the layer starts at exactly zero output (as ``scale_init=zeros``
  asks) and alpha grows from there, like ReZero. Any other vector is kept,
  with alpha 1.

  Returns:
    (scale, alpha): `scale`'s shape and dtype, and a scalar of its dtype.
  """
  zero = safe_l2_norm(scale) == 0
  return (
      jnp.where(zero, jnp.ones_like(scale), scale),
      jnp.where(zero, 0, 1).astype(scale.dtype),
  )


class NormalizedBatchNorm(Module):
  """Batch normalisation whose affine vectors are unit-normalised and scaled.

  A drop-in for `flax.linen.BatchNorm`: the same fields with the same
  defaults, the same variables (``scale`` and ``bias`` in ``params``,
  ``mean`` and ``var`` in ``batch_stats``) and the same statistics, plus
  `norm_epsilon`, a scalar parameter ``alpha`` unless one is passed to
  `__call__`, and NBN's affine.

  Two things differ from `nn.BatchNorm` at init, by design:

  * The effective scale starts at ``alpha / sqrt(C)`` (C = features), not
    1: NBN normalises the whole scale vector. A network built with NBN is a
    different function at init than the same network with BN.
  * The raw bias starts at 0, where its norm's gradient is taken as 0 (as
    `torch.norm` does): the first update of the raw bias is
    ``alpha / norm_epsilon`` (1e6) times the gradient of the effective
    bias, as in the reference. That gradient dominates a global gradient
    norm at step 0: see `nbn_jax.clipping` before clipping by global norm or
    logging gradient norms.

  NBN meaning of the `nn.BatchNorm` affine fields:

  * `use_scale` False: no ``scale`` and no multiplication (scale_eff = 1),
    as in `nn.BatchNorm`; `use_bias` False: no ``bias`` (bias_eff = 0).
    Alpha multiplies whichever normalised vectors remain; with neither, the
    layer is a BN without affine, creates no ``alpha`` and ignores a passed
    one.
  * `scale_init`: the initial raw scale, i.e. the initial direction (only the
    direction matters). A zero vector (``scale_init=zeros``, the zero-init of
    a residual branch's last BN) cannot be normalised: the raw scale then
    starts at ones and the layer's own ``alpha`` at 0, so the layer's output
    starts at exactly 0 and grows smoothly (see `starting_scale_and_alpha`).
    A layer that reads a passed alpha cannot zero it, so a zero init there
    starts at ones (the reference's init). Otherwise ``alpha`` starts at 1.
  * `bias_init`: the initial raw bias. The default, zeros, is the reference
    (bias_eff = 0 at init, singular first gradient, above). A non-zero init
    sets an initial direction, so bias_eff starts at
    ``alpha * bias / ||bias||``.

  Scope of the batch statistics (the set of examples each mean/var is over):

  * Under `jax.jit` with the batch sharded over a `Mesh` (leave `axis_name`
    None): the global batch. XLA inserts the cross-device reductions.
  * Under `shard_map` or `pmap` with ``axis_name='data'`` (the mapped axis):
    the global batch too, via one `lax.pmean` over that axis.
  * Under `shard_map`/`pmap` with `axis_name` None: each device's own shard
    (the reference's DDP setting, SyncBN off).
  * Groups of k devices: under `shard_map`, use a 2-D mesh such as
    ``('replica', 'bn_group')`` with the inner axis of size k and set
    ``axis_name='bn_group'``; under `pmap`, `axis_index_groups` (which
    `shard_map` does not support).

  Like `nn.BatchNorm`, the running variance is the biased batch variance;
  PyTorch keeps the unbiased one (a factor n / (n - 1), negligible at usual
  batch sizes).

  Attributes:
    use_running_average: if True, use the stored running statistics instead of
      the batch's.
    axis: the feature axis (or axes) of the input.
    momentum: decay of the running averages; PyTorch's momentum 0.1 is 0.9.
    epsilon: added to the variance.
    dtype: the dtype of the result (default: inferred from input and params).
    param_dtype: the dtype of `scale`, `bias` and `alpha`.
    use_bias: whether there is a (normalised) bias; see above.
    use_scale: whether there is a (normalised) scale; see above.
    bias_init: initialiser of the raw bias (its initial direction).
    scale_init: initialiser of the raw scale (its initial direction; zero:
      see above).
    axis_name: mapped axis to average statistics over (see above).
    axis_index_groups: groups of indices along `axis_name` (`pmap` only).
    use_fast_variance: compute the variance as E[x^2] - E[x]^2.
    force_float32_reductions: compute statistics in at least float32.
    norm_epsilon: added to the L2 norms of scale and bias (not squared).
  """

  use_running_average: bool | None = None
  axis: int = -1
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True
  norm_epsilon: float = 1e-6

  @compact
  def __call__(
      self,
      x: Array,
      use_running_average: bool | None = None,
      *,
      alpha: Array | None = None,
      mask: Array | None = None,
  ) -> Array:
    """Normalises `x` with batch (or running) statistics and the NBN affine.

    Args:
      x: input of any rank, features along `axis`.
      use_running_average: overrides the field of the same name.
      alpha: a scalar shared with other layers. When given, this layer creates
        no ``alpha`` parameter of its own and uses this one; gradients flow
        back to whoever owns it.
      mask: as in `nn.BatchNorm`: which positions count towards the
        statistics (broadcastable to `x`).

    Returns:
      An array shaped like `x`.
    """
    use_running_average = module.merge_param(
        'use_running_average', self.use_running_average, use_running_average
    )
    feature_axes = _canonicalize_axes(x.ndim, self.axis)
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    feature_shape = tuple(x.shape[ax] for ax in feature_axes)
    stats_dtype = (
        jnp.float32 if self.force_float32_reductions else self.param_dtype
    )

    ra_mean = self.variable(
        'batch_stats', 'mean', jnp.zeros, feature_shape, stats_dtype
    )
    ra_var = self.variable(
        'batch_stats', 'var', jnp.ones, feature_shape, stats_dtype
    )
    params = self._affine_params(feature_shape, own_alpha=alpha is None)
    if 'alpha' in params:
      alpha = params.pop('alpha')

    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var = _compute_stats(
          x,
          reduction_axes,
          dtype=self.dtype,
          axis_name=None if self.is_initializing() else self.axis_name,
          axis_index_groups=self.axis_index_groups,
          use_fast_variance=self.use_fast_variance,
          mask=mask,
          force_float32_reductions=self.force_float32_reductions,
      )
      if not self.is_initializing():
        ra_mean.value = (
            self.momentum * ra_mean.value + (1 - self.momentum) * mean
        )
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var

    effective = effective_params(params, alpha, self.norm_epsilon)
    broadcast_shape = [1] * x.ndim
    for ax in feature_axes:
      broadcast_shape[ax] = x.shape[ax]

    def broadcast(v: Array) -> Array:  # feature_shape -> rank of x
      return v.reshape(broadcast_shape)

    # Same order of operations as nn.BatchNorm, with the effective affine.
    multiplier = jax.lax.rsqrt(var + self.epsilon)
    if 'scale' in effective:
      multiplier = multiplier * effective['scale']
    y = (x - broadcast(mean)) * broadcast(multiplier)
    if 'bias' in effective:
      y = y + broadcast(effective['bias'])
    dtype = dtypes.canonicalize_dtype(x, *params.values(), dtype=self.dtype)
    return jnp.asarray(y, dtype)

  def _affine_params(
      self, feature_shape: tuple[int, ...], own_alpha: bool
  ) -> dict[str, Array]:
    """Creates or reads ``scale``, ``bias`` and (if owned) ``alpha``.

    Returns:
      The layer's raw parameters by name, only those it has.
    """
    params = {}
    zero_start = []  # set while ``scale`` is initialised, read by ``alpha``

    def init_scale(key, shape, dtype):
      scale, alpha = starting_scale_and_alpha(
          self.scale_init(key, shape, dtype)
      )
      zero_start.append(alpha == 0)
      return scale

    def init_alpha(key, shape, dtype):
      del key
      zero = zero_start[0] if zero_start else False
      return jnp.where(zero, 0, 1).astype(dtype).reshape(shape)

    if self.use_scale:
      params['scale'] = self.param(
          'scale', init_scale, feature_shape, self.param_dtype
      )
    if self.use_bias:
      params['bias'] = self.param(
          'bias', self.bias_init, feature_shape, self.param_dtype
      )
    if own_alpha and params:
      params['alpha'] = self.param('alpha', init_alpha, (), self.param_dtype)
    return params
