"""Find the NBN layers of a linen model, and fold them into plain BN.

At evaluation an NBN layer is a plain BN with ``(scale_eff, bias_eff)``, so a
trained NBN model can be served as the same network with `nn.BatchNorm`
everywhere: `fold_nbn` turns its variables into that network's variables.

This module imports only jax and flax.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.normalization import NormalizedBatchNorm, effective_params

Path = tuple[str, ...]


class NBNLayer(NamedTuple):
  """What folding needs to know about one NBN layer of a model.

  Attributes:
    alpha_path: path in ``params`` of the alpha passed to the layer, or None
      when the layer uses its own ``alpha``.
    norm_epsilon: the layer's `norm_epsilon`.
  """

  alpha_path: Path | None
  norm_epsilon: float


def nbn_layers(
    model: nn.Module, variables: Any, *args, **kwargs
) -> dict[Path, NBNLayer]:
  """The NBN layers `model.apply(variables, *args, **kwargs)` calls.

  Nothing is computed: the call is traced abstractly.

  Args:
    model: any linen model.
    variables: its variables, or their shapes (`jax.ShapeDtypeStruct`s).
    *args, **kwargs: the rest of an `apply` call (an input or its shape, and
      e.g. ``train=False``).

  Returns:
    {path of each NBN layer (module names from the root): its `NBNLayer`}.
  """
  layers = {}

  def trace(variables, args):
    passed = {}

    def record(next_fun, call_args, call_kwargs, context):
      if isinstance(context.module, NormalizedBatchNorm) and (
          context.method_name == '__call__'
      ):
        passed[tuple(context.module.scope.path)] = (
            call_kwargs.get('alpha'),
            context.module.norm_epsilon,
        )
      return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(record):
      model.apply(variables, *args, **kwargs)
    # Inside the trace, a parameter read by a module is the very tracer
    # passed in, so a passed alpha is found by identity.
    params = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
    for path, (alpha, norm_epsilon) in passed.items():
      alpha_path = next(
          (
              tuple(key.key for key in leaf_path)
              for leaf_path, leaf in params
              if alpha is not None and leaf is alpha
          ),
          None,
      )
      layers[path] = NBNLayer(alpha_path, norm_epsilon)

  jax.eval_shape(trace, variables, args)
  return layers


def _nested_get(tree: dict, path: Path) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def _nested_set(tree: dict, path: Path, value: Any) -> dict:
  """A copy of `tree` with the subtree at `path` replaced by `value`."""
  if not path:
    return value
  head, *rest = path
  return {**tree, head: _nested_set(tree[head], tuple(rest), value)}


def _nested_drop(tree: dict, path: Path) -> dict:
  """A copy of `tree` without the entry at `path`."""
  head, *rest = path
  if not rest:
    return {name: value for name, value in tree.items() if name != head}
  return {**tree, head: _nested_drop(tree[head], tuple(rest))}


def fold_nbn(model: nn.Module, variables: dict, *args, **kwargs) -> dict:
  """Variables of an NBN model -> those of the same model with plain BN.

  Each NBN layer's ``scale`` and ``bias`` become its effective affine
  (`effective_params`); the alphas disappear (each layer's own ``alpha``
  and every parameter passed to NBN layers as ``alpha``, such as the
  models' ``nbn_alpha``). Running statistics and all other variables are
  kept. The result is what the same architecture with `nn.BatchNorm` at the
  NBN sites, under the same module names, takes: for `nbn_jax.models`,
  ``model.clone(norm='bn')``. Its evaluation outputs equal the NBN model's.

  Args:
    model: a linen model with NBN layers.
    variables: its variables (``params``, ``batch_stats``).
    *args, **kwargs: an evaluation call of `model` after the variables (an
      example input or its shape, and e.g. ``train=False``); traced, not run.

  Returns:
    The folded variables (a new dict; `variables` is not changed).
  """
  layers = nbn_layers(model, variables, *args, **kwargs)
  params = variables['params']
  for path, layer in layers.items():
    raw = _nested_get(params, path)
    if layer.alpha_path is not None:
      alpha = _nested_get(params, layer.alpha_path)
    else:
      alpha = raw.get('alpha', 1.0)  # 1.0: a layer without scale and bias
    folded = effective_params(raw, jnp.asarray(alpha), layer.norm_epsilon)
    params = _nested_set(params, path, folded)
  for alpha_path in {layer.alpha_path for layer in layers.values()} - {None}:
    params = _nested_drop(params, alpha_path)
  return {**variables, 'params': params}
