"""Inspecting models: parameter counts, NBN call sites, per-layer outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nbn_jax import NormalizedBatchNorm


def param_count(variables) -> int:
  return sum(
      int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params'])
  )


def abstract_variables(model, image_shape):
  """Variable shapes without computing anything."""
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(image_shape), train=False)
  )


def nbn_calls(model, image_shape):
  """Paths of the NBN layers in a forward pass, and which got a shared alpha.

  Returns:
    (all NBN paths, paths of those called with an `alpha` argument).
  """
  every, with_alpha = set(), set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, NormalizedBatchNorm) and (
        context.method_name == '__call__'
    ):
      path = '/'.join(context.module.scope.path)
      every.add(path)
      if kwargs.get('alpha') is not None:
        with_alpha.add(path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    abstract_variables(model, image_shape)
  return every, with_alpha


def outputs_in_return_order(model, variables, x, **kwargs):
  """[(module path, output)] of every submodule call, in the order they return.

  A block returns after all of its layers, so everything before a layer's
  entry was computed before that layer's output.
  """
  outputs = []

  def record(next_fun, args, call_kwargs, context):
    y = next_fun(*args, **call_kwargs)
    path = '/'.join(context.module.scope.path)
    if context.method_name == '__call__' and path:
      outputs.append((path, y))
    return y

  with nn.intercept_methods(record):
    model.apply(variables, x, mutable=['batch_stats'], **kwargs)
  return outputs


def assert_alpha_changes_only_from(model, x, first_nbn: str):
  """Changing the shared alpha changes no output computed before `first_nbn`.

  Also checks that the outputs of `first_nbn` and of the whole model change.
  """
  variables = model.init(jax.random.key(0), x, train=False)

  def outputs(alpha):
    params = {**variables['params'], 'nbn_alpha': jnp.asarray(alpha)}
    return outputs_in_return_order(
        model, {**variables, 'params': params}, x, train=True
    )

  before, after = outputs(1.0), outputs(2.5)
  cut = [path for path, _ in before].index(first_nbn)
  for (path, y_before), (_, y_after) in zip(before[:cut], after[:cut]):
    np.testing.assert_array_equal(y_before, y_after, err_msg=path)
  for (path, y_before), (_, y_after) in (before[cut], after[cut]), (
      before[-1],
      after[-1],
  ):
    assert not np.allclose(y_before, y_after), path
