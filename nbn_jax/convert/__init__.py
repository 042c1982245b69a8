"""PyTorch state dicts of the reference's networks -> nbn_jax variables.

The name mapping, `from_torch_state_dict`, takes NumPy arrays and imports
only jax, flax and numpy (an import contract), so a converted model needs
nothing of the trainer. The command line, which reads a ``.pth`` file with
PyTorch and writes a checkpoint that `train.py` evaluates, is the
trainer's (`nbn_jax.training.conversion`):

    python -m nbn_jax.convert --checkpoint=resnet50_nbn.pth \\
        --config=configs/imagenet_lt.py --workdir=WORKDIR [--config.field=...]
    python train.py --workdir=WORKDIR --config.eval_only=True [...]

Names read (method.md, "The reference's checkpoints"):

* ResNet-50/101/152 / ResNeXt-50 (`nbn_jax.models.ResNet`): torchvision's,
  ``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}`` / ``bn{1-3}``,
  ``layer{s}.0.downsample.{0,1}``, ``fc``; plain torchvision BN ResNets
  with ``norm='bn'``, or into NBN with `from_torch_bn_state_dict`.
* CIFAR ResNet-32 (`nbn_jax.models.CifarResNet`): LDAM's, ``conv1``,
  ``bn1``, ``layer{1-3}.{i}.conv{1,2}`` / ``bn{1,2}``, ``linear``
  (option-B shortcuts: ``shortcut.{0,1}``).
* RIDE ensembles (`nbn_jax.models.RIDEEnsemble`): the reference's
  `resnet50_ride_NBN` (and RIDE's own networks): the shared parts named as
  above, expert e's stages ``layer3s.<e>.{i}...`` and ``layer4s.<e>.{i}...``
  (CIFAR: ``layer2s.<e>``, ``layer3s.<e>``) and its head ``linears.<e>``.
* The logit-rectification BN (`logit_norm`), the reference's
  `Linear_fcbn_notaffine`: ``fc.bn`` (RIDE: ``linears.<e>.bn``), its
  running statistics. A cosine classifier's weight (LDAM's and RIDE's
  NormedLinear) is kept as (in, out) by PyTorch, as flax does.
* The NBN scalar: ``scale_factor``, a vector (one entry per BN module of
  the reference's networks: 20 in ResNet-50, 111 in its RIDE ResNet-50) of
  which entry 0 becomes ``nbn_alpha`` and, in a RIDE ensemble, entry e
  expert e's ``expert_{e}/nbn_alpha``; or a scalar ``alpha`` (the PyTorch
  ResNet-32 in tests/torch_resnet32.py).
* BN ``weight``/``bias`` are the raw NBN vectors (NBN layers) or the plain
  BN affine; ``running_mean``/``running_var`` the statistics;
  ``num_batches_tracked`` is ignored; a ``module.`` prefix (DataParallel,
  DDP) is removed.

A checkpoint that does not fit the model is refused with one line naming
the first differing key and the network the checkpoint looks like
(`looks_like`).

A plain-BN network's state dict, such as torchvision's ImageNet ResNets
(``torchvision.models.resnet152(weights='IMAGENET1K_V1').state_dict()``),
converts into the NBN version of that network with
`from_torch_bn_state_dict`: each NBN layer computes what its BN did
(`nbn_jax.folding.unfold_bn`).
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from nbn_jax.folding import unfold_bn
from nbn_jax.models.cifar_resnet import CifarResNet
from nbn_jax.models.common import NBN_ALPHA
from nbn_jax.models.network import CLASSIFIER, LOGIT_NORM, MODELS

Path = tuple[str, ...]
# The reference's NBN scalars; entry 0 is the one its ResNets read, entries
# 0..E-1 those of its RIDE experts.
TORCH_ALPHA = 'scale_factor'
# The same as one scalar (our PyTorch ResNet-32, tests/torch_resnet32.py).
TORCH_SCALAR_ALPHA = 'alpha'
IGNORED_SUFFIXES = ('num_batches_tracked',)
EXPERT = 'expert_'  # the flax module of expert e is expert_{e}


class CheckpointMismatchError(ValueError):
  """The checkpoint does not hold the network the config describes."""


def _expert_of(path: Path) -> int | None:
  """The expert a variable belongs to (its path starts with expert_{e})."""
  if path and path[0].startswith(EXPERT):
    return int(path[0][len(EXPERT) :])
  return None


def _torch_module(name: str, cifar: bool, expert: int | None) -> str:
  """One flax module name -> its PyTorch counterpart.

  `expert`: the RIDE expert the module belongs to, whose stages and head
  are entries of RIDE's ModuleLists (``layer3s.<e>``, ``linears.<e>``).
  """
  head = 'linear' if cifar else 'fc'
  if expert is not None:
    head = f'linears.{expert}'
  if name.startswith('layer'):  # layer2_0 -> layer2.0, or layer2s.<e>.0
    stage, block = name.split('_')
    return (
        f'{stage}s.{expert}.{block}'
        if expert is not None
        else (f'{stage}.{block}')
    )
  shortcut = 'shortcut' if cifar else 'downsample'
  return {
      'downsample_conv': f'{shortcut}.0',
      'downsample_bn': f'{shortcut}.1',
      CLASSIFIER: head,
      LOGIT_NORM: f'{head}.bn',  # the reference's Linear_fcbn_notaffine
  }.get(name, name)


def torch_name(collection: str, path: Path, cifar: bool) -> str:
  """The PyTorch state-dict key of one flax variable.

  Args:
    collection: 'params' or 'batch_stats'.
    path: module names then the variable name, e.g.
      ``('layer4_0', 'downsample_bn', 'scale')`` or, in a RIDE ensemble,
      ``('expert_1', 'layer4_0', 'bn1', 'scale')``.
    cifar: LDAM's CIFAR names (``linear``, ``shortcut``) rather than
      torchvision's.
  """
  *modules, leaf = path
  if leaf == NBN_ALPHA:
    return TORCH_ALPHA
  expert = _expert_of(path)
  if expert is not None:
    modules = modules[1:]
  leaf = {
      'kernel': 'weight',
      'scale': 'weight',
      'bias': 'bias',
      'mean': 'running_mean',
      'var': 'running_var',
  }.get(leaf, leaf)
  del collection  # the leaf names are unique across collections
  return '.'.join([_torch_module(m, cifar, expert) for m in modules] + [leaf])


def alpha_entry(path: Path) -> int:
  """The entry of ``scale_factor`` a flax ``nbn_alpha`` reads.

  Expert e's: entry e (the reference's RIDE model); the network's own:
  entry 0 (its ResNets).
  """
  expert = _expert_of(path)
  return 0 if expert is None else expert


def _to_flax(
    array: np.ndarray, like: Any, torch_key: str, path: Path, cosine: bool
) -> np.ndarray:
  """A PyTorch tensor (as NumPy) in flax's layout and `like`'s dtype.

  `cosine`: the classifier is a cosine one, whose weight PyTorch keeps as
  (in, out) already (NormedLinear).
  """
  if torch_key == TORCH_ALPHA:
    entries = array.reshape(-1)
    entry = alpha_entry(path)
    if entry >= entries.size:
      raise CheckpointMismatchError(
          f'checkpoint key {torch_key!r} has {entries.size} entries, the '
          f'model reads entry {entry} ({"/".join(path)}); check '
          'config.num_experts.'
      )
    array = entries[entry]
  elif array.ndim == 4:  # conv (O, I/g, kh, kw) -> (kh, kw, I/g, O)
    array = array.transpose(2, 3, 1, 0)
  elif array.ndim == 2 and not (cosine and path[-2:] == (CLASSIFIER, 'kernel')):
    array = array.T  # linear (out, in) -> (in, out)
  if array.shape != like.shape:
    raise CheckpointMismatchError(
        f'checkpoint key {torch_key!r} has shape {array.shape} in flax layout'
        f', the model expects {like.shape}; check config.model, '
        'config.reduce_dimension and the dataset (class count).'
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
      the one-line message names the first such key (in sorted order) and
      the network the checkpoint looks like.
  """
  cifar = isinstance(model, CifarResNet)
  cosine = getattr(model, 'classifier', 'linear') == 'cosine'
  state_dict = {
      TORCH_ALPHA if k == TORCH_SCALAR_ALPHA else k: np.asarray(v)
      for k, v in strip_prefix(state_dict).items()
      if not k.endswith(IGNORED_SUFFIXES)
  }
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False),
      _image(in_channels),
  )
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  sources = []  # (torch key, flax path) of each leaf of `flat`
  for key_path, _ in flat:
    collection, *path = (k.key for k in key_path)
    sources.append((torch_name(collection, tuple(path), cifar), tuple(path)))
  _check_keys({key for key, _ in sources}, state_dict, model)
  leaves = [
      _to_flax(state_dict[key], like, key, path, cosine)
      for (key, path), (_, like) in zip(sources, flat)
  ]
  return jax.tree.unflatten(jax.tree.structure(shapes), leaves)


def from_torch_bn_state_dict(
    model: nn.Module, state_dict: Mapping[str, np.ndarray], in_channels: int = 3
) -> dict:
  """A plain-BN network's state dict -> `model`'s variables, the same function.

  `state_dict` holds `model`'s network with plain BN at every norm site
  (torchvision's ImageNet ResNets for `nbn_jax.models.ResNet50`,
  `ResNet101` and `ResNet152`); its NBN layers become layers computing what
  those BNs did (`nbn_jax.folding.unfold_bn`, which also says what that
  means for training). For a model with `norm='bn'` this is
  `from_torch_state_dict`.

  Args:
    model: an `nbn_jax.models` network (a `norm` field).
    state_dict: key -> array of its plain-BN version.
    in_channels: channels of the input images.

  Returns:
    {'params': ..., 'batch_stats': ...} as NumPy arrays.

  Raises:
    CheckpointMismatchError: `state_dict` is not `model`'s plain-BN network
      (one line, as `from_torch_state_dict`).
  """
  bn_variables = from_torch_state_dict(
      model.clone(norm='bn'), state_dict, in_channels
  )
  variables = unfold_bn(model, bn_variables, _image(in_channels), train=False)
  return jax.tree.map(np.asarray, variables)


def _image(in_channels: int) -> jax.ShapeDtypeStruct:
  """A model input's shape: one small image."""
  return jax.ShapeDtypeStruct((1, 32, 32, in_channels), np.float32)


def _check_keys(
    expected: set[str], state_dict: Mapping[str, np.ndarray], model: nn.Module
):
  """Raises CheckpointMismatchError naming the first differing key."""
  found = set(state_dict)
  if expected == found:
    return
  first = min(expected ^ found)
  where = 'missing from the checkpoint' if first in expected else 'unexpected'
  raise CheckpointMismatchError(
      f'checkpoint key {first!r} is {where} for {type(model).__name__}'
      f'(norm={model.norm!r}); the checkpoint looks like '
      f'{looks_like(state_dict)}; check config.model, config.norm and the '
      'NBN placement fields.'
  )


def _blocks(keys: set[str], stage: str) -> int:
  """Blocks of a stage, from keys such as ``layer3.4.conv1.weight``."""
  prefix = f'{stage}.'
  return len(
      {k[len(prefix) :].split('.')[0] for k in keys if k.startswith(prefix)}
  )


def looks_like(state_dict: Mapping[str, np.ndarray]) -> str:
  """The network a state dict seems to hold, as config overrides.

  E.g. ``--config.model=RIDEResNet50 --config.num_experts=3
  --config.logit_norm=True (norm nbn, 1000 classes)``, or a description
  when it is none of this package's networks. Read from the key names and
  shapes alone (the module docstring's layouts); never raises.
  """
  keys = set(state_dict)
  experts = {int(k.split('.')[1]) for k in keys if k.startswith('linears.')}
  imagenet_style = any(k.startswith(('layer4.', 'layer4s.')) for k in keys)
  cifar_style = not imagenet_style and any(
      k.startswith(('linear.', 'linears.')) for k in keys
  )
  if not (imagenet_style or cifar_style):
    return 'none of the ResNets or RIDE ensembles here'
  ride = bool(experts)
  head = 'linears.0' if ride else ('fc' if imagenet_style else 'linear')
  stages = ('layer1', 'layer2', 'layer3', 'layer4')[
      : 4 if imagenet_style else 3
  ]
  owned = [s for s in stages if any(k.startswith(f'{s}s.') for k in keys)]
  sizes = tuple(_blocks(keys, f'{s}s.0' if s in owned else s) for s in stages)
  if imagenet_style:
    conv2 = state_dict.get('layer1.0.conv2.weight')
    groups = conv2.shape[0] // conv2.shape[1] if conv2 is not None else 1
    family = 'ResNeXt' if groups > 1 else 'ResNet'
    depth = {
        (3, 4, 6, 3): 50,
        (3, 4, 23, 3): 101,
        (3, 8, 36, 3): 152,
        (1, 1, 1, 1): 14,
    }.get(sizes)
    # The last conv of the last stage: 4 x 512 filters, RIDE's reduced 4 x 384.
    last_conv, full_width = 'conv3', 2048
  else:
    family = 'ResNet'
    depth = {(5, 5, 5): 32, (1, 1, 1): 8}.get(sizes)
    last_conv, full_width = 'conv1', 64  # RIDE's reduced: 48
  name = f'{"RIDE" if ride else ""}{family}{depth}'
  if depth is None or name not in MODELS:
    return f'a {family} with {sizes} blocks per stage, none of the models here'
  flags = [f'--config.model={name}']
  if ride:
    flags.append(f'--config.num_experts={len(experts)}')
    if len(owned) != 2:
      flags.append(f'(experts own {", ".join(owned)}, not the last 2 stages)')
    last = state_dict.get(f'{stages[-1]}s.0.0.{last_conv}.weight')
    if last is not None and last.shape[0] < full_width:
      flags.append('--config.reduce_dimension=True')
  if f'{head}.bn.running_mean' in keys:
    flags.append('--config.logit_norm=True')
  if f'{head}.weight' in keys and f'{head}.bias' not in keys:
    flags.append('--config.classifier=cosine')
  nbn = TORCH_ALPHA in keys or TORCH_SCALAR_ALPHA in keys
  bias = state_dict.get(f'{head}.bias')
  classes = f', {bias.shape[0]} classes' if bias is not None else ''
  return f'{" ".join(flags)} (norm {"nbn" if nbn else "bn"}{classes})'
