"""PyTorch models laid out as the checkpoints `nbn_jax.convert` reads.

Written from docs/method.md ("The reference's checkpoints"), test-only:

* `ResNet`: torchvision names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
  ``layer4.0.downsample.1``, ``fc``). With ``nbn=True`` it is the
  reference's ResNet-50 / ResNeXt-50 NBN: every bottleneck's ``bn3`` and
  every shortcut BN are of the NBN class, ``scale_factor`` has one entry per
  such module (20), and only the layer4 ones are scaled, all by entry 0.

LDAM's CIFAR ResNet-32 in PyTorch is the trainer's oracle,
`tests.torch_resnet32.ResNet32` (LDAM's names, the NBN scalar ``alpha``);
the RIDE ensembles are `tests.torch_ride`.

`randomize` gives every parameter and statistic random values, so a
converted model can only match if every tensor lands in the right place.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tests import torch_resnet32


class NBNBatchNorm2d(torch_resnet32.NormalizedBatchNorm2d):
  """The reference's NBN class: plain BN until its model sets `alpha`."""

  alpha = None

  def forward(self, x):
    if self.alpha is None:
      return self.normalize(x, self.weight, self.bias)
    return super().forward(x, self.alpha)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (stride on the 3x3), ResNeXt's with groups.

  `nbn_norms`: which of 'bn1', 'bn2', 'bn3', 'downsample' are of the NBN
  class (plain BN until their model sets alpha).
  """

  def __init__(self, inplanes, planes, stride, groups, base_width, nbn_norms):
    super().__init__()
    width = int(planes * base_width / 64) * groups
    out = planes * 4
    norm = lambda name, channels: (
        NBNBatchNorm2d if name in nbn_norms else nn.BatchNorm2d
    )(channels)
    self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
    self.bn1 = norm('bn1', width)
    self.conv2 = nn.Conv2d(
        width, width, 3, stride, 1, groups=groups, bias=False
    )
    self.bn2 = norm('bn2', width)
    self.conv3 = nn.Conv2d(width, out, 1, bias=False)
    self.bn3 = norm('bn3', out)
    self.downsample = None
    if stride != 1 or inplanes != out:
      self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, out, 1, stride, bias=False),
          norm('downsample', out),
      )

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(y + residual)


class ResNet(nn.Module):
  """torchvision's ResNet/ResNeXt; the reference's NBN variant if `nbn`."""

  def __init__(
      self,
      layers=(3, 4, 6, 3),
      num_classes=1000,
      groups=1,
      width_per_group=64,
      nbn=True,
  ):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    inplanes = 64
    for stage, num_blocks in enumerate(layers):
      blocks = []
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(
            Bottleneck(
                inplanes,
                64 * 2**stage,
                stride,
                groups,
                width_per_group,
                ('bn3', 'downsample') if nbn else (),
            )
        )
        inplanes = 64 * 2**stage * 4
      setattr(self, f'layer{stage + 1}', nn.Sequential(*blocks))
    self.fc = nn.Linear(inplanes, num_classes)
    self.nbn = nbn
    if nbn:
      count = sum(isinstance(m, NBNBatchNorm2d) for m in self.modules())
      self.scale_factor = nn.Parameter(torch.ones(count))

  def forward(self, x):
    if self.nbn:
      for m in self.layer4.modules():
        if isinstance(m, NBNBatchNorm2d):
          m.alpha = self.scale_factor[0]
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage in range(1, 5):
      x = getattr(self, f'layer{stage}')(x)
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random values for every parameter and BN statistic; eval mode."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if name.endswith('num_batches_tracked'):
        continue
      noise = torch.randn(tensor.shape, generator=generator)
      if name.endswith('running_var'):
        tensor.copy_(0.5 + noise.abs())
      elif name in ('scale_factor', 'alpha'):
        tensor.copy_(1.5 + 0.3 * noise)
      elif name.endswith(('bn1.weight', 'bn2.weight', 'bn3.weight')) or (
          name.endswith('downsample.1.weight')
      ):
        tensor.copy_(1 + 0.2 * noise)
      elif name.endswith(('.bias', 'running_mean')):
        tensor.copy_(0.1 * noise)
      else:  # convolution and linear weights: He-normal scale
        fan_in = tensor[0].numel()
        tensor.copy_(noise * (2 / fan_in) ** 0.5)
  return model.eval()
