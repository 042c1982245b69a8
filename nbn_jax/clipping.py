"""Global-norm clipping and logging that NBN's first raw-bias gradient spares.

NBN's raw bias starts at exactly 0, where the gradient of its norm is 0 (the
reference's `torch.norm`): at step 0 the raw bias gets ``alpha / 1e-6`` times
the gradient of the effective bias. With the reference's plain SGD that is
harmless (only the bias direction depends on it, and it is fixed by that
first update), but the global gradient norm is then dominated by it: 2.3e4
against 0.32 for plain BN at step 0 of a CIFAR ResNet-32. So:

* `optax.clip_by_global_norm(c)` divides every other parameter's first
  update by about 1e4 or more;
* adaptive optimisers (Adam, ...) store a huge second moment for those
  coordinates (only for them: the effect stays in the NBN bias);
* a logged gradient norm measures the NBN bias, not the network.

The raw NBN vectors are scale-invariant (the output depends on their
direction only), so their gradient size says nothing about how far the
network moves. The way out here leaves them out of the global norm:

    paths = nbn_layer_paths(model, (1, 32, 32, 3))  # nbn_jax.inspection
    tx = optax.chain(
        clip_by_global_norm_outside_nbn(1.0, paths), optax.sgd(0.1, 0.9)
    )

Everything else is clipped as by `optax.clip_by_global_norm`; the raw NBN
vectors pass through unchanged, exactly as without clipping (the
reference). `global_norm_outside_nbn` is the matching number to log.
"""

from typing import Iterable

import jax
import optax

# Names of an NBN layer's raw, scale-invariant vectors.
RAW_VECTORS = ('scale', 'bias')


def nbn_raw_vector_mask(params, nbn_paths: Iterable[str]):
  """True at the raw ``scale``/``bias`` of the NBN layers, False elsewhere.

  Args:
    params: a parameter tree (nested dicts, as linen's ``params``).
    nbn_paths: '/'-joined module paths of the NBN layers, e.g. from
      `nbn_jax.inspection.nbn_layer_paths`.
  """
  paths = set(nbn_paths)

  def is_raw(path, _):
    names = [str(getattr(k, 'key', k)) for k in path]
    return names[-1] in RAW_VECTORS and '/'.join(names[:-1]) in paths

  return jax.tree_util.tree_map_with_path(is_raw, params)


def _outside(nbn_paths: Iterable[str]):
  paths = tuple(nbn_paths)
  return lambda params: jax.tree.map(
      lambda raw: not raw, nbn_raw_vector_mask(params, paths)
  )


def clip_by_global_norm_outside_nbn(
    max_norm: float, nbn_paths: Iterable[str]
) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm` over all but the raw NBN vectors.

  The global norm is taken over every other gradient, which are clipped as
  usual; the raw NBN ``scale``/``bias`` gradients pass through unclipped.
  """
  return optax.masked(optax.clip_by_global_norm(max_norm), _outside(nbn_paths))


def global_norm_outside_nbn(grads, nbn_paths: Iterable[str]) -> jax.Array:
  """The global L2 norm of `grads` without the raw NBN vectors (for logs)."""
  mask = _outside(nbn_paths)(grads)
  kept = jax.tree.leaves(
      jax.tree.map(lambda g, keep: g if keep else None, grads, mask)
  )
  return optax.tree.norm(kept)
