"""Fold the NBN layers of a trained linen model into plain BN, and back.

At evaluation an NBN layer is a plain BN with ``(scale_eff, bias_eff)``, so a
trained NBN model can be served as the same network with `nn.BatchNorm`
everywhere: `fold_nbn` turns its variables into that network's variables.
`unfold_bn` goes the other way: a plain-BN network's variables (ImageNet
weights, say) become those of its NBN version computing the same function.

This module imports only jax and flax.
"""

import collections
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.inspection import Path, nbn_layers, read_alpha_path
from nbn_jax.normalization import effective_params, safe_l2_norm

AFFINE = ('scale', 'bias')


def _nested_get(tree: dict, path: Path) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def _nested_set(tree: dict, path: Path, value: Any) -> dict:
  """A copy of `tree` with the subtree at `path` replaced (or added)."""
  if not path:
    return value
  head, *rest = path
  return {**tree, head: _nested_set(tree.get(head, {}), tuple(rest), value)}


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


def exact_alpha(norms: jax.Array, norm_epsilon: float) -> jax.Array:
  """The alpha of `unfold_bn`: max(norms) + epsilon, strictly above them all.

  Rounded to float32 (the parameter's dtype), and raised to the next float32
  above the largest norm where the sum rounds down to it.
  """
  largest = jnp.max(jnp.asarray(norms, jnp.float32))
  return jnp.maximum(largest + norm_epsilon, jnp.nextafter(largest, jnp.inf))


def unfold_bn(model: nn.Module, bn_variables: dict, *args, **kwargs) -> dict:
  """Variables of a plain-BN network -> those of `model`, the same function.

  The inverse of `fold_nbn`: `bn_variables` are those of `model`'s
  architecture with `nn.BatchNorm` at its NBN sites (for `nbn_jax.models`,
  ``model.clone(norm='bn')``), e.g. converted ImageNet weights. Every NBN
  layer's effective affine equals its BN's (scale s, bias t), so the two
  networks are the same function in training and evaluation mode alike;
  running statistics and every other variable are kept.

  Which NBN parameters give that. An NBN layer applies ``alpha * v /
  (||v|| + eps)`` to each raw vector v (its scale and its bias, eps its
  `norm_epsilon`), and the layers of a placement share one alpha. For a
  raw vector parallel to its BN vector u, v = c * u (c > 0), that is u
  exactly when ``alpha * c = c * ||u|| + eps``, i.e.

      c = eps / (alpha - ||u||),   which needs alpha > ||u||.

  So any alpha above the norm of every scale and bias vector of the layers
  that read it represents them all. Raw vectors of ordinary length
  (||v|| >> eps) cannot: alpha * v / (||v|| + eps) then has norm alpha,
  the same for every vector (the method's ||w|| = ||b|| = alpha).
  `exact_alpha` takes the largest norm plus eps: the largest vector keeps
  about its own length (c about 1) and every other one becomes a raw vector
  of length eps * ||u|| / (alpha - ||u||), around 1e-6. Training does not
  keep such a short vector's direction: its gradient is alpha / (||v|| +
  eps) times that of the effective vector, about 1e6 times the usual, so
  the first SGD update replaces its direction by the gradient's,
  as happens to the reference's zero-initialised bias at its first step
  (`nbn_jax.normalization.normalized_to_alpha`). A placement with one alpha
  per layer (``shared_alpha=False``) keeps the larger of each layer's two
  vectors at its own length.

  Args:
    model: a linen model with NBN layers.
    bn_variables: the variables (``params``, ``batch_stats``) of its
      plain-BN version.
    *args, **kwargs: an evaluation call of `model` after the variables (an
      example input or its shape, and e.g. ``train=False``); traced, not run.

  Returns:
    `model`'s variables (a new dict; `bn_variables` is not changed).

  Raises:
    ValueError: `bn_variables` are not those of `model`'s plain-BN version.
  """
  shapes = jax.eval_shape(
      lambda *a: model.init(jax.random.key(0), *a, **kwargs), *args
  )
  readers = collections.defaultdict(list)  # alpha path -> (layer, epsilon)
  for path, layer in nbn_layers(model, shapes, *args, **kwargs).items():
    readers[read_alpha_path(path, layer)].append((path, layer.norm_epsilon))
  params = bn_variables['params']
  try:
    for alpha_path, layers in readers.items():
      params = _unfold_group(params, alpha_path, layers)
  except KeyError:
    params = None  # an NBN layer the variables lack
  variables = {**bn_variables, 'params': params}
  shapes_of = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
  if shapes_of(variables) != shapes_of(shapes):
    raise ValueError(
        "the variables are not those of the NBN model's plain-BN version "
        "(model.clone(norm='bn')): their parameters or statistics differ."
    )
  return variables


def _unfold_group(
    params: dict, alpha_path: Path, layers: list[tuple[Path, float]]
) -> dict:
  """`params` with the NBN layers reading `alpha_path` (their paths and
  norm epsilons) set from their BN affine, and that alpha (`unfold_bn`)."""
  bn_affine = {path: _nested_get(params, path) for path, _ in layers}
  norms = [
      safe_l2_norm(vector)
      for affine in bn_affine.values()
      for name, vector in affine.items()
      if name in AFFINE
  ]
  if not norms:  # layers without scale and bias read no alpha
    return params
  alpha = exact_alpha(jnp.stack(norms), max(eps for _, eps in layers))
  for path, eps in layers:
    raw = {
        name: (
            vector * (eps / (alpha - safe_l2_norm(vector)))
            if name in AFFINE
            else vector
        )
        for name, vector in bn_affine[path].items()
    }
    params = _nested_set(params, path, raw)
  return _nested_set(params, alpha_path, alpha)
