"""Precise BN: BN running statistics re-estimated on training batches.

A BN layer evaluates with running averages of its batch statistics
(``momentum * old + (1 - momentum) * batch``). Early in training, or after
large updates, they trail the statistics the current parameters produce:
they still hold part of their initial values (mean 0, var 1) and of the
statistics of earlier parameters. Eval-mode outputs then differ from
train-mode ones. "Precise BN" (Wu and Johnson, "Rethinking 'Batch' in
BatchNorm", 2021; fvcore's and detectron2's `update_bn_stats`) replaces the
running averages, before an evaluation, by the equal-weight average of the
per-batch means and variances of the current network on some training
batches, each layer's statistics taken in a train-mode forward pass (so
the layers below it normalise with batch statistics, as in training).

    stats = precise_bn.precise_batch_stats(model, variables, batches,
                                           train=True)
    eval_variables = {**variables, 'batch_stats': stats}

Works for every `flax.linen.BatchNorm` and `nbn_jax.NormalizedBatchNorm`
(and their subclasses) in any linen model: each such layer is run with
momentum 0 during the pass (a method interceptor), so its updated
statistics are exactly that batch's. A model whose ``batch_stats`` hold
anything else (another normalisation layer) is refused by name, since
those statistics would silently stay running averages. `update_bn_stats_nnx`
does the same for an NNX model, in place.

The variance is the average of the per-batch (biased) variances, as BN's
running variance and fvcore's precise BN; it leaves out the variance of the
batch means across batches, which is what a train-mode forward never sees.
"""

import contextlib
import functools
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from nbn_jax.normalization import NormalizedBatchNorm

# Layers whose `momentum` field this module sets to 0 for the pass.
BATCH_NORMS = (nn.BatchNorm, NormalizedBatchNorm)
NNX_BATCH_NORMS = (nnx.BatchNorm,)  # nbn_jax.nnx's layer is a subclass

Variables = Mapping[str, Any]


@contextlib.contextmanager
def _batch_statistics_only(norm_types: tuple[type, ...], seen: set):
  """Within: each `norm_types` layer's update stores its batch statistics.

  `seen` collects the paths of the layers run so (for the coverage check).
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not isinstance(module, norm_types):
      return next_fun(*args, **kwargs)
    # The call's `use_running_average` (x, use_running_average) wins.
    frozen = args[1] if len(args) > 1 else kwargs.get('use_running_average')
    if frozen is None:
      frozen = module.use_running_average
    if frozen:
      raise ValueError(
          f'{"/".join(module.path)} normalises with its running statistics: '
          'call the model in train mode (e.g. train=True).'
      )
    seen.add(module.path)
    momentum = module.momentum
    # Bound modules are per-apply clones: this changes only this call.
    object.__setattr__(module, 'momentum', 0.0)
    try:
      return next_fun(*args, **kwargs)
    finally:
      object.__setattr__(module, 'momentum', momentum)

  with nn.intercept_methods(interceptor):
    yield


def _stat_layer_paths(batch_stats) -> set[tuple[str, ...]]:
  """Paths of the modules owning leaves of `batch_stats` (name dropped)."""
  return {
      tuple(k.key for k in path[:-1])
      for path, _ in jax.tree_util.tree_flatten_with_path(batch_stats)[0]
  }


def batch_statistics(
    model: nn.Module,
    variables: Variables,
    inputs: Any,
    *,
    norm_types: tuple[type, ...] = BATCH_NORMS,
    **apply_kwargs,
):
  """Every BN layer's mean and variance on one batch, as ``batch_stats``.

  A train-mode forward (pass the model's own switch in `apply_kwargs`, e.g.
  ``train=True``) in which every `norm_types` layer stores its batch
  statistics instead of a running average. Traceable (jit it).

  Raises:
    ValueError: a layer holding ``batch_stats`` is not of `norm_types`, or
      a `norm_types` layer ran on its running statistics (eval mode).
  """
  seen = set()
  with _batch_statistics_only(norm_types, seen):
    _, updates = model.apply(
        variables, inputs, mutable=['batch_stats'], **apply_kwargs
    )
  stats = updates.get('batch_stats', {})
  others = sorted(_stat_layer_paths(stats) - seen)
  if others:
    raise ValueError(
        f'batch_stats of {["/".join(p) for p in others]} are not kept by '
        f'a layer of {[t.__name__ for t in norm_types]}; pass its class in '
        'norm_types if it updates them as BN does (momentum field).'
    )
  return stats


@jax.jit
def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


def _average(per_batch: Iterable[Any], caller: str):
  """The leaf-wise mean of the statistics trees `per_batch` yields.

  Raises:
    ValueError: it yields none (`caller` names the function asked).
  """
  total, count = None, 0
  for stats in per_batch:
    total = stats if total is None else _add(total, stats)
    count += 1
  if not count:
    raise ValueError(f'{caller} needs at least one batch.')
  return jax.tree.map(lambda s: s / count, total)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_batch_statistics(settings, variables, inputs):
  """`batch_statistics`, compiled once per (model, norm_types, kwargs)."""
  model, norm_types, apply_items = settings
  return batch_statistics(
      model, variables, inputs, norm_types=norm_types, **dict(apply_items)
  )


def precise_batch_stats(
    model: nn.Module,
    variables: Variables,
    batches: Iterable[Any],
    *,
    norm_types: tuple[type, ...] = BATCH_NORMS,
    **apply_kwargs,
):
  """``batch_stats`` re-estimated on `batches` (precise BN).

  Args:
    model: a linen model with BN (or NBN) layers.
    variables: its variables (``params``, ``batch_stats``, any others);
      only the parameters matter, the old statistics are not used.
    batches: model inputs (training batches, augmented as in training);
      each is one `model.apply` call, so all should be of one shape to
      share one compilation.
    norm_types: the layer classes whose statistics are re-estimated.
    **apply_kwargs: passed to `model.apply`, selecting train mode (e.g.
      ``train=True``); fixed for all batches. Hashable values only (with
      the model, they key the one compilation later calls reuse).

  Returns:
    A ``batch_stats`` tree like ``variables['batch_stats']``: per layer, the
    equal-weight average over the batches of the batch means and of the
    batch variances.

  Raises:
    ValueError: no batch, or as `batch_statistics`.
  """
  settings = (model, norm_types, tuple(sorted(apply_kwargs.items())))
  return _average(
      (_jitted_batch_statistics(settings, variables, x) for x in batches),
      'precise_batch_stats',
  )


def _nnx_norms(model: nnx.Module, norm_types: tuple[type, ...]) -> list:
  return [m for _, m in nnx.iter_modules(model) if isinstance(m, norm_types)]


@functools.partial(nnx.jit, static_argnums=2)
def _nnx_batch_statistics(model, inputs, settings):
  """A forward of `model` (its norms at momentum 0): their statistics."""
  norm_types, call_items = settings
  model(inputs, **dict(call_items))
  return [(m.mean[...], m.var[...]) for m in _nnx_norms(model, norm_types)]


def update_bn_stats_nnx(
    model: nnx.Module,
    batches: Iterable[Any],
    *,
    norm_types: tuple[type, ...] = NNX_BATCH_NORMS,
    **call_kwargs,
) -> int:
  """Precise BN for an NNX model, in place: `precise_batch_stats`' average.

  Every `norm_types` layer of `model` (`nnx.BatchNorm` and so
  `nbn_jax.nnx.NormalizedBatchNorm`) gets, as its ``mean`` and ``var``, the
  average over `batches` of its batch statistics in train-mode forward
  passes ``model(inputs, **call_kwargs)`` (hashable values only: they key
  the one compilation later calls reuse). The layers' momentum and mode
  are restored afterwards; the other layers (dropout) run in the mode the
  model is in. If an exception interrupts the passes, the statistics are
  left as they were.

  Returns:
    The number of layers updated.

  Raises:
    ValueError: no batch, or no such layer.
  """
  layers = _nnx_norms(model, norm_types)
  settings = (norm_types, tuple(sorted(call_kwargs.items())))
  if not layers:
    raise ValueError(f'no layer of {[t.__name__ for t in norm_types]}.')
  saved = [(m.momentum, m.use_running_average) for m in layers]
  before = [(m.mean[...], m.var[...]) for m in layers]
  try:
    for m in layers:
      m.momentum, m.use_running_average = 0.0, False
    average = _average(
        (_nnx_batch_statistics(model, x, settings) for x in batches),
        'update_bn_stats_nnx',
    )
  except BaseException:  # the model is left as it was
    for m, (mean, var) in zip(layers, before):
      m.mean[...], m.var[...] = mean, var
    raise
  finally:
    for m, (momentum, use_running_average) in zip(layers, saved):
      m.momentum, m.use_running_average = momentum, use_running_average
  for m, (mean, var) in zip(layers, average):
    m.mean[...], m.var[...] = mean, var
  return len(layers)
