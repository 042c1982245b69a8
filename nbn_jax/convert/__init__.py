"""PyTorch state dicts of the reference's networks -> nbn_jax variables.

The name mapping, `from_torch_state_dict`, takes NumPy arrays and imports
only jax, flax and numpy (an import contract), so a converted model needs
nothing of the trainer. The command line, which reads a ``.pth`` file with
PyTorch and writes a checkpoint that `train.py` evaluates, is the
trainer's (`nbn_jax.training.conversion`):

    python -m nbn_jax.convert --checkpoint=resnet50_nbn.pth \\
        --config=configs/imagenet_lt.py --workdir=WORKDIR [--config.field=...]
    python train.py --config=configs/imagenet_lt.py --workdir=WORKDIR \\
        --config.eval_only=True [...]

Names read (method.md, "The reference's checkpoints"):

* ResNet-50 / ResNeXt-50 (`nbn_jax.models.ResNet`): torchvision's,
  ``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}`` / ``bn{1-3}``,
  ``layer{s}.0.downsample.{0,1}``, ``fc``; plain torchvision BN ResNets
  with ``norm='bn'``.
* CIFAR ResNet-32 (`nbn_jax.models.CifarResNet`): LDAM's, ``conv1``,
  ``bn1``, ``layer{1-3}.{i}.conv{1,2}`` / ``bn{1,2}``, ``linear``
  (option-B shortcuts: ``shortcut.{0,1}``).
* The NBN scalar: ``scale_factor``, a vector of which only entry 0 is read
  (the reference's layout), or a scalar ``alpha`` (the PyTorch ResNet-32 in
  bench/torch_resnet32.py), becomes ``nbn_alpha``.
* BN ``weight``/``bias`` are the raw NBN vectors (NBN layers) or the plain
  BN affine; ``running_mean``/``running_var`` the statistics;
  ``num_batches_tracked`` is ignored; a ``module.`` prefix (DataParallel,
  DDP) is removed.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from nbn_jax.models.cifar_resnet import CifarResNet
from nbn_jax.models.common import NBN_ALPHA

Path = tuple[str, ...]
# The reference's NBN scalars; entry 0 is the one its ResNets read.
TORCH_ALPHA = 'scale_factor'
# The same as one scalar (our PyTorch ResNet-32, bench/torch_resnet32.py).
TORCH_SCALAR_ALPHA = 'alpha'
IGNORED_SUFFIXES = ('num_batches_tracked',)


class CheckpointMismatchError(ValueError):
  """The checkpoint does not hold the network the config describes."""


def _torch_module(name: str, cifar: bool) -> str:
  """One flax module name -> its PyTorch counterpart."""
  if name.startswith('layer'):  # layer2_0 -> layer2.0
    return name.replace('_', '.')
  shortcut = 'shortcut' if cifar else 'downsample'
  return {
      'downsample_conv': f'{shortcut}.0',
      'downsample_bn': f'{shortcut}.1',
      'fc': 'linear' if cifar else 'fc',
  }.get(name, name)


def torch_name(collection: str, path: Path, cifar: bool) -> str:
  """The PyTorch state-dict key of one flax variable.

  Args:
    collection: 'params' or 'batch_stats'.
    path: module names then the variable name, e.g.
      ``('layer4_0', 'downsample_bn', 'scale')``.
    cifar: LDAM's CIFAR names (``linear``, ``shortcut``) rather than
      torchvision's.
  """
  if path == (NBN_ALPHA,):
    return TORCH_ALPHA
  *modules, leaf = path
  leaf = {
      'kernel': 'weight',
      'scale': 'weight',
      'bias': 'bias',
      'mean': 'running_mean',
      'var': 'running_var',
  }.get(leaf, leaf)
  del collection  # the leaf names are unique across collections
  return '.'.join([_torch_module(m, cifar) for m in modules] + [leaf])


def _to_flax(array: np.ndarray, like: Any, torch_key: str) -> np.ndarray:
  """A PyTorch tensor (as NumPy) in flax's layout and `like`'s dtype."""
  if torch_key == TORCH_ALPHA:
    array = array.reshape(-1)[0]
  elif array.ndim == 4:  # conv (O, I/g, kh, kw) -> (kh, kw, I/g, O)
    array = array.transpose(2, 3, 1, 0)
  elif array.ndim == 2:  # linear (out, in) -> (in, out)
    array = array.T
  if array.shape != like.shape:
    raise CheckpointMismatchError(
        f'checkpoint key {torch_key!r} has shape {array.shape} in flax layout'
        f', the model expects {like.shape}; check config.model and the '
        'dataset (class count).'
    )
  return np.asarray(array, like.dtype)


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Removes DataParallel/DDP's ``module.`` prefix from every key."""
  prefix = 'module.'
  if state_dict and all(k.startswith(prefix) for k in state_dict):
    return {k[len(prefix) :]: v for k, v in state_dict.items()}
  return dict(state_dict)


def from_torch_state_dict(
    model: nn.Module, state_dict: Mapping[str, np.ndarray], in_channels: int = 3
) -> dict:
  """A PyTorch state dict (NumPy arrays) -> `model`'s flax variables.

  Args:
    model: an `nbn_jax.models` network whose PyTorch counterpart saved
      `state_dict` (see the module docstring for the names).
    state_dict: key -> array; a ``module.`` prefix is allowed.
    in_channels: channels of the input images.

  Returns:
    {'params': ..., 'batch_stats': ...} as NumPy arrays.

  Raises:
    CheckpointMismatchError: a key is missing or extra, or a shape differs;
      the one-line message names the first such key (in sorted order).
  """
  if getattr(model, 'logit_norm', False):
    raise CheckpointMismatchError(
        'config.logit_norm=True: the reference ResNets have no logit BN to '
        'convert; set config.logit_norm=False.'
    )
  cifar = isinstance(model, CifarResNet)
  state_dict = {
      TORCH_ALPHA if k == TORCH_SCALAR_ALPHA else k: np.asarray(v)
      for k, v in strip_prefix(state_dict).items()
      if not k.endswith(IGNORED_SUFFIXES)
  }
  image = jax.ShapeDtypeStruct((1, 32, 32, in_channels), np.float32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), image
  )
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  names = {}
  for key_path, like in flat:
    collection, *path = (k.key for k in key_path)
    names[torch_name(collection, tuple(path), cifar)] = (key_path, like)
  _check_keys(set(names), set(state_dict), model)
  leaves = [
      _to_flax(state_dict[name], like, name)
      for name, (_, like) in names.items()
  ]
  treedef = jax.tree.structure(shapes)
  by_path = dict(zip((kp for kp, _ in names.values()), leaves))
  return jax.tree.unflatten(treedef, [by_path[kp] for kp, _ in flat])


def _check_keys(expected: set[str], found: set[str], model: nn.Module):
  """Raises CheckpointMismatchError naming the first differing key."""
  if expected == found:
    return
  first = min(expected ^ found)
  where = 'missing from the checkpoint' if first in expected else 'unexpected'
  raise CheckpointMismatchError(
      f'checkpoint key {first!r} is {where} for {type(model).__name__}'
      f'(norm={model.norm!r}); check config.model, config.norm and the NBN '
      'placement fields.'
  )
