"""LDAM-DRW's CIFAR training step in PyTorch: the oracle of our trainer.

Written from docs/method.md and the facts of kaidic/LDAM-DRW
(`cifar_train.py`, `models/resnet_cifar.py`), not copied from it:

* `ResNet32`: the CIFAR ResNet-32 with option-A shortcuts; `kaiming_normal_`
  (fan-in, gain sqrt 2) for every Conv2d and Linear weight, PyTorch's default
  Linear bias, PyTorch's default BN (weight 1, bias 0, momentum 0.1, eps
  1e-5). State-dict keys are LDAM's (`conv1`, `bn1`, `layer1.0.conv1`, ...,
  `linear`). With norm='nbn' the last BN of each last-stage block (bn2) is
  NBN, all reading one shared `alpha` (docs/method.md).
* `ldam_learning_rate`: LDAM's `adjust_learning_rate`, set once per epoch.
* `ldam_sgd`: `torch.optim.SGD`, momentum 0.9, coupled weight decay on every
  parameter, alpha included.
* `make_step`: one softmax cross-entropy step.
* `load_flax_variables`, `flax_tree`: our Flax variables in, the oracle's
  state (parameters, BN statistics, momentum buffers) out in our layout.

PyTorch keeps the unbiased batch variance in `running_var`, Flax the biased
one. `running_var='biased'` makes the oracle keep Flax's, so that running
statistics can be compared exactly; the default, 'unbiased', is PyTorch's
own kernel (LDAM's). Training itself never reads the running statistics.

The one PyTorch ResNet-32 of the repository, used by
tests/nbn_jax/training/test_oracle.py (CPU), the conversion tests and the
benchmarks that race or retrain it (bench/timing/jax_vs_torch.py,
bench/gpu/fidelity_gpu.py). It lives with the tests, not in the installed
packages, because PyTorch is a test-only dependency
(requirements-test.txt). Imports only torch, numpy and nbn_jax's name
mapping.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nbn_jax import convert
from nbn_jax.models.common import NBN_ALPHA

RUNNING_VARS = ('unbiased', 'biased')


class BatchNorm2d(nn.BatchNorm2d):
  """PyTorch's BN; `running_var='biased'` keeps the biased batch variance."""

  def __init__(self, num_features: int, running_var: str = 'unbiased'):
    if running_var not in RUNNING_VARS:
      raise ValueError(
          f'running_var={running_var!r} is not one of {RUNNING_VARS}.'
      )
    super().__init__(num_features)
    self.running_var_kind = running_var

  def normalize(self, x, weight, bias):
    """Batch norm of NCHW `x` with the given affine (the module's own or not)."""
    if not self.training or self.running_var_kind == 'unbiased':
      return F.batch_norm(
          x,
          self.running_mean,
          self.running_var,
          weight,
          bias,
          self.training,
          self.momentum,
          self.eps,
      )
    with torch.no_grad():
      var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
      self.running_mean.lerp_(mean, self.momentum)
      self.running_var.lerp_(var, self.momentum)
      self.num_batches_tracked.add_(1)
    return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)

  def forward(self, x):
    return self.normalize(x, self.weight, self.bias)


class NormalizedBatchNorm2d(BatchNorm2d):
  """BN whose weight and bias are unit-normalised and scaled by alpha.

  `torch.linalg.vector_norm` has value and gradient 0 at the zero vector, so
  the zero-initialised bias gets 1e6 times its upstream gradient at step 0
  (docs/method.md, "Trap: the norm of the zero bias").
  """

  def forward(self, x, alpha):
    weight = (
        alpha * self.weight / (torch.linalg.vector_norm(self.weight) + 1e-6)
    )
    bias = alpha * self.bias / (torch.linalg.vector_norm(self.bias) + 1e-6)
    return self.normalize(x, weight, bias)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions; option-A shortcut when the shape changes."""

  def __init__(self, in_planes, planes, stride, nbn, running_var):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = BatchNorm2d(planes, running_var)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    norm = NormalizedBatchNorm2d if nbn else BatchNorm2d
    self.bn2 = norm(planes, running_var)
    self.pad = planes - in_planes if stride != 1 or in_planes != planes else 0
    self.stride = stride

  def forward(self, x, alpha):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.conv2(out)
    out = self.bn2(out, alpha) if alpha is not None else self.bn2(out)
    shortcut = x
    if self.pad:  # option A: subsample, zero-pad channels on both sides
      shortcut = F.pad(
          x[:, :, :: self.stride, :: self.stride],
          (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2),
      )
    return F.relu(out + shortcut)


class ResNet32(nn.Module):
  """LDAM's CIFAR ResNet-32 (3 stages of 5 basic blocks, 16/32/64 wide).

  Args:
    num_classes: logits.
    norm: 'bn' or 'nbn' (NBN on every last-stage bn2, one shared `alpha`).
    running_var: 'unbiased' (PyTorch) or 'biased' (Flax); see the module
      docstring.
  """

  def __init__(self, num_classes=10, norm='nbn', running_var='unbiased'):
    super().__init__()
    if norm not in ('bn', 'nbn'):
      raise ValueError(f"norm={norm!r} is not one of ('bn', 'nbn').")
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = BatchNorm2d(16, running_var)
    in_planes = 16
    for stage, planes in enumerate((16, 32, 64)):
      blocks = []
      for block in range(5):
        stride = 2 if stage > 0 and block == 0 else 1
        nbn = norm == 'nbn' and stage == 2
        blocks.append(BasicBlock(in_planes, planes, stride, nbn, running_var))
        in_planes = planes
      setattr(self, f'layer{stage + 1}', nn.ModuleList(blocks))
    self.alpha = nn.Parameter(torch.ones(())) if norm == 'nbn' else None
    self.linear = nn.Linear(64, num_classes)
    for m in self.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)

  def features(self, x):
    """NCHW images -> the last stage's output, (N, 64, H / 4, W / 4)."""
    x = F.relu(self.bn1(self.conv1(x)))
    for layer in (self.layer1, self.layer2, self.layer3):
      for block in layer:
        nbn = isinstance(block.bn2, NormalizedBatchNorm2d)
        x = block(x, self.alpha if nbn else None)
    return x

  def forward(self, x):
    """NCHW images -> (N, num_classes) logits."""
    return self.linear(
        torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
    )


def torch_inputs(images, mean, std, device=None) -> torch.Tensor:
  """uint8 NHWC images -> float32 NCHW, torchvision's ToTensor + Normalize.

  `images`: a NumPy array or a tensor; the result is on `device` (default:
  where `images` are; NumPy arrays: the CPU).
  """
  x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 255
  mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
  std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
  return (x - mean) / std


def ldam_learning_rate(
    epoch: int,
    base_rate: float,
    warmup_epochs: int = 5,
    decay_epochs: tuple[int, ...] = (160, 180),
    decay_factors: tuple[float, ...] = (0.01, 0.0001),
) -> float:
  """LDAM's `adjust_learning_rate` for 0-based `epoch`.

  base * (epoch + 1) / 5 in epochs 0-4, then base, x0.01 from epoch 160 and
  x0.0001 from epoch 180.
  """
  if epoch < warmup_epochs:
    return base_rate * (epoch + 1) / warmup_epochs
  factor = 1.0
  for start, decayed in zip(decay_epochs, decay_factors):
    if epoch >= start:
      factor = decayed
  return base_rate * factor


def ldam_sgd(model, lr=0.1, weight_decay=2e-4, momentum=0.9):
  """LDAM's optimiser: coupled L2 decay on every parameter, alpha included."""
  return torch.optim.SGD(
      model.parameters(), lr, momentum=momentum, weight_decay=weight_decay
  )


def set_learning_rate(optimizer, rate: float):
  for group in optimizer.param_groups:
    group['lr'] = rate


def make_step(model, optimizer=None, bf16=False):
  """A cross-entropy step: (images NCHW, labels) -> loss (a 0-d tensor).

  `optimizer` defaults to `ldam_sgd(model)` at lr 0.1. `model` may be a
  `torch.compile`d module.
  """
  optimizer = optimizer or ldam_sgd(model)

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
      loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  return step


# --- our Flax variables <-> the oracle's state --------------------------------


def torch_key(path: tuple[str, ...]) -> str:
  """Our variable path (e.g. ('layer3_4', 'bn2', 'scale')) -> state-dict key.

  LDAM's CIFAR names, as the converter writes them (`nbn_jax.convert`),
  except the shared alpha: a scalar parameter 'alpha' here.
  """
  if path == (NBN_ALPHA,):
    return 'alpha'
  return convert.torch_name('params', path, cifar=True)


def to_torch_layout(array: np.ndarray) -> np.ndarray:
  """Conv kernel HWIO -> OIHW, dense (in, out) -> (out, in), else as is."""
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  return array.T if array.ndim == 2 else array


def from_torch_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  return array.T if array.ndim == 2 else array


def _paths(tree, prefix=()):
  """(path, leaf) pairs of a nested dict."""
  for name, value in tree.items():
    if isinstance(value, dict):
      yield from _paths(value, (*prefix, name))
    else:
      yield (*prefix, name), value


def _map_tree(tree, fn, prefix=()):
  return {
      name: (
          _map_tree(value, fn, (*prefix, name))
          if isinstance(value, dict)
          else fn((*prefix, name))
      )
      for name, value in tree.items()
  }


def load_flax_variables(model: nn.Module, params: dict, batch_stats: dict):
  """Copies our variables (nested dicts of arrays) into the oracle.

  Raises ValueError unless every parameter and running statistic of the
  oracle is set exactly once.
  """
  state = model.state_dict()
  loaded = []
  with torch.no_grad():
    for tree in (params, batch_stats):
      for path, value in _paths(tree):
        key = torch_key(path)
        if key not in state:
          raise ValueError(f'{"/".join(path)}: the oracle has no {key!r}.')
        state[key].copy_(torch.from_numpy(to_torch_layout(np.array(value))))
        loaded.append(key)
  expected = [k for k in state if not k.endswith('num_batches_tracked')]
  if sorted(loaded) != sorted(expected):
    raise ValueError(
        f'the variables set {sorted(set(expected) ^ set(loaded))} '
        'not exactly once: is the Flax model the same network and norm?'
    )


def flax_tree(model: nn.Module, like: dict, optimizer=None) -> dict:
  """The oracle's tensors in the structure and layout of our tree `like`.

  With `optimizer`, the SGD momentum buffers of the parameters in `like`
  (the layout of optax's `trace`); else the parameters or running
  statistics themselves.
  """
  state = model.state_dict()
  named = dict(model.named_parameters())

  def fetch(path):
    key = torch_key(path)
    if optimizer is None:
      tensor = state[key]
    else:
      tensor = optimizer.state[named[key]]['momentum_buffer']
    return from_torch_layout(tensor.detach().cpu().numpy())

  return _map_tree(like, fetch)
