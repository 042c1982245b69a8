"""NBN for Flax NNX: `NormalizedBatchNorm`, a drop-in for `nnx.BatchNorm`.

The same layer as `nbn_jax.NormalizedBatchNorm` (linen), with NNX's eager
construction::

    bn = NormalizedBatchNorm(64, momentum=0.9, rngs=nnx.Rngs(0))
    y = bn(x)            # batch statistics, running averages updated
    bn.eval(); y = bn(x) # running statistics (or nnx.view / the call argument)

Several layers share one alpha when built with ``shared_alpha=True`` and
called with the owner's `nnx.Param`::

    self.alpha = nnx.Param(jnp.ones(()))
    self.bn = NormalizedBatchNorm(64, shared_alpha=True, rngs=rngs)
    ...
    y = self.bn(x, alpha=self.alpha)

This module imports only jax and flax.
"""

from types import MappingProxyType
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes, initializers
from flax.nnx.nn.normalization import (
    _canonicalize_axes,
    _compute_stats,
    _normalize,
)
from flax.typing import Dtype, Initializer, PromoteDtypeFn

from nbn_jax.normalization import effective_params, starting_scale_and_alpha

Array = jax.Array


class NormalizedBatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` with NBN's affine (docs/method.md).

  ``scale_eff = alpha * scale / (||scale|| + norm_epsilon)`` and the same for
  the bias; statistics, running averages, `.train()` / `.eval()`,
  `nnx.view(model, use_running_average=...)` and dtype promotion are those of
  `nnx.BatchNorm` (it is a subclass). Given the same parameters it computes
  what the linen `nbn_jax.NormalizedBatchNorm` computes; the NBN meaning of
  `use_scale`, `use_bias`, `scale_init` (a zero init starts alpha at 0 and
  the direction at ones) and `bias_init`, and the caveats at init (effective
  scale 1/sqrt(C), the 1e6 first raw-bias gradient), are documented there.

  Args (beyond `nnx.BatchNorm`'s, which keep their meaning and defaults):
    norm_epsilon: added to the L2 norms of scale and bias (not squared).
    shared_alpha: if True the layer owns no ``alpha`` and every call must pass
      one (an `nnx.Param` or Variable owned elsewhere, or an array); if False
      it owns ``self.alpha``, an `nnx.Param` scalar.
    alpha_metadata: metadata of the own ``alpha`` `nnx.Param`.
  """

  def __init__(
      self,
      num_features: int,
      *,
      use_running_average: bool | None = False,
      axis: int = -1,
      momentum: float = 0.99,
      epsilon: float = 1e-5,
      dtype: Dtype | None = None,
      param_dtype: Dtype = jnp.float32,
      use_bias: bool = True,
      use_scale: bool = True,
      bias_init: Initializer = initializers.zeros_init(),
      scale_init: Initializer = initializers.ones_init(),
      axis_name: str | None = None,
      axis_index_groups: Any = None,
      use_fast_variance: bool = True,
      promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
      rngs: nnx.Rngs,
      bias_metadata: Mapping[str, Any] = MappingProxyType({}),
      scale_metadata: Mapping[str, Any] = MappingProxyType({}),
      norm_epsilon: float = 1e-6,
      shared_alpha: bool = False,
      alpha_metadata: Mapping[str, Any] = MappingProxyType({}),
  ):
    super().__init__(
        num_features,
        use_running_average=use_running_average,
        axis=axis,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        use_bias=use_bias,
        use_scale=use_scale,
        bias_init=bias_init,
        scale_init=scale_init,
        axis_name=axis_name,
        axis_index_groups=axis_index_groups,
        use_fast_variance=use_fast_variance,
        promote_dtype=promote_dtype,
        rngs=rngs,
        bias_metadata=bias_metadata,
        scale_metadata=scale_metadata,
    )
    alpha = jnp.ones((), param_dtype)
    if use_scale:
      self.scale[...], alpha = starting_scale_and_alpha(self.scale[...])
    self.alpha: nnx.Param[Array] | None
    if shared_alpha or not (use_scale or use_bias):
      self.alpha = nnx.data(None)
    else:
      self.alpha = nnx.Param(alpha, **alpha_metadata)
    self.norm_epsilon = norm_epsilon
    self.shared_alpha = shared_alpha

  def __call__(
      self,
      x: Array,
      use_running_average: bool | None = None,
      *,
      alpha: Array | nnx.Variable | None = None,
      mask: Array | None = None,
  ) -> Array:
    """Normalises `x` with batch (or running) statistics and the NBN affine.

    Args:
      x: input of any rank, features along `axis`.
      use_running_average: overrides the attribute of the same name.
      alpha: the shared scalar (required with ``shared_alpha=True``, refused
        otherwise); gradients flow back to the Variable passed.
      mask: which positions count towards the statistics.

    Returns:
      An array shaped like `x`.
    """
    use_running_average = nnx.module.first_from(
        use_running_average,
        self.use_running_average,
        error_msg=(
            'No `use_running_average` given to NormalizedBatchNorm: pass it to'
            ' the constructor or the call, or use nnx.view / .train() /'
            ' .eval().'
        ),
    )
    if self.shared_alpha and alpha is None:
      raise ValueError(
          'NormalizedBatchNorm(shared_alpha=True) needs alpha=<shared Param> '
          'at every call.'
      )
    if not self.shared_alpha and alpha is not None:
      raise ValueError(
          'NormalizedBatchNorm owns its alpha; build it with shared_alpha=True '
          'to pass one at call time.'
      )
    if self.alpha is not None:
      alpha = self.alpha
    feature_axes = _canonicalize_axes(x.ndim, self.axis)
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)

    raw = {
        name: getattr(self, name)[...]
        for name in ('scale', 'bias')
        if getattr(self, name) is not None
    }
    if raw:
      alpha = alpha[...] if isinstance(alpha, nnx.Variable) else alpha
      raw = effective_params(raw, jnp.asarray(alpha), self.norm_epsilon)
    x, mean, var, scale, bias = self.promote_dtype(
        (x, self.mean[...], self.var[...], raw.get('scale'), raw.get('bias')),
        dtype=self.dtype,
    )
    if not use_running_average:
      mean, var = _compute_stats(
          x,
          reduction_axes,
          dtype=self.dtype,
          axis_name=self.axis_name,
          axis_index_groups=self.axis_index_groups,
          use_fast_variance=self.use_fast_variance,
          mask=mask,
      )
      # As nnx.BatchNorm: no gradient through an array-ref update.
      if self.mean._can_update or self.var._can_update:
        stop_gradient = jax.lax.stop_gradient
      else:
        stop_gradient = lambda v: v
      self.mean[...] = stop_gradient(
          self.momentum * self.mean[...] + (1 - self.momentum) * mean
      )
      self.var[...] = stop_gradient(
          self.momentum * self.var[...] + (1 - self.momentum) * var
      )
    return _normalize(
        x,
        mean,
        var,
        scale,
        bias,
        reduction_axes,
        feature_axes,
        self.dtype,
        self.epsilon,
    )
