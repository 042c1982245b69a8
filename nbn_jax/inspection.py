"""Which NBN layers a linen model calls, and which alpha each one reads.

Any Flax model is asked directly (an abstract trace with
`nn.intercept_methods`, nothing computed), so these hold for every
placement, the models of `nbn_jax.models` and a user's own alike. Folding,
clipping, the trainer's reports and the bench scripts all find NBN layers
here.

This module imports only jax and flax.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax.normalization import NormalizedBatchNorm

Path = tuple[str, ...]
OWN_ALPHA = 'alpha'  # the name of an NBN layer's own alpha parameter


class NBNLayer(NamedTuple):
  """One NBN layer of a model: the alpha it reads, and its epsilon.

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
    params = jax.tree_util.tree_flatten_with_path(variables.get('params', {}))[
        0
    ]
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


def _traced_layers(
    model: nn.Module, input_shape: tuple[int, ...]
) -> tuple[dict[Path, NBNLayer], Any]:
  """(`nbn_layers` of an eval call on `input_shape`, the variable shapes)."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x
  )
  return nbn_layers(model, shapes, x, train=False), shapes


def nbn_layer_paths(
    model: nn.Module, input_shape: tuple[int, ...]
) -> tuple[str, ...]:
  """'/'-joined module paths of the NBN layers, in the order they are called.

  E.g. ('layer4_0/bn3', 'layer4_0/downsample_bn', 'layer4_1/bn3',
  'layer4_2/bn3') for `nbn_jax.models.ResNet50`.

  Args:
    model: a Flax module whose `__call__(x, train=False)` builds the network.
    input_shape: shape of one input batch, e.g. (1, 32, 32, 3).
  """
  return tuple('/'.join(path) for path in _traced_layers(model, input_shape)[0])


def read_alpha_path(path: Path, layer: NBNLayer) -> Path:
  """Where in ``params`` the alpha that an NBN layer reads lives.

  The path of the alpha passed to it, or of its own ``alpha`` parameter.
  """
  return (
      layer.alpha_path if layer.alpha_path is not None else (*path, OWN_ALPHA)
  )


def layer_alphas(
    model: nn.Module, input_shape: tuple[int, ...]
) -> dict[str, str]:
  """{'/'-joined path of each NBN layer: '/'-joined path of its alpha}.

  In call order. Layers that read one shared alpha name the same path; a
  layer with neither scale nor bias reads none and is left out. E.g.
  {'layer4_0/bn3': 'nbn_alpha', ...} for `nbn_jax.models.ResNet50`.

  Args:
    model: a Flax module whose `__call__(x, train=False)` builds the network.
    input_shape: shape of one input batch, e.g. (1, 32, 32, 3).
  """
  layers, shapes = _traced_layers(model, input_shape)
  params = {
      tuple(k.key for k in key_path)
      for key_path, _ in jax.tree_util.tree_flatten_with_path(
          shapes.get('params', {})
      )[0]
  }
  alphas = {}
  for path, layer in layers.items():
    alpha = read_alpha_path(path, layer)
    if alpha in params:
      alphas['/'.join(path)] = '/'.join(alpha)
  return alphas
