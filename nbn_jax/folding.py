"""Fold the NBN layers of a trained linen model into plain BN.

At evaluation an NBN layer is a plain BN with ``(scale_eff, bias_eff)``, so a
trained NBN model can be served as the same network with `nn.BatchNorm`
everywhere: `fold_nbn` turns its variables into that network's variables.

This module imports only jax and flax.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nbn_jax.inspection import Path, nbn_layers
from nbn_jax.normalization import effective_params


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
