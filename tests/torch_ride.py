"""RIDE ensembles in PyTorch, laid out as the checkpoints `nbn_jax.convert`
reads: the oracle of the parameter counts and of the conversion.

Written from docs/method.md ("RIDE with NBN") and the facts of the
reference's `models/ensemble_NBN.py` (`resnet50_ride_NBN`),
`models/LRClassifier.py`, and RIDE's `model/fb_resnets/RIDEResNeXt.py` and
`model/ldam_drw_resnets/ride_resnet_cifar.py`; not copied from them:

* `RIDEResNet`: the stem (``conv1``, ``bn1``), ``layer1`` and ``layer2``
  shared; expert e owns ``layer3s.<e>``, ``layer4s.<e>`` (torchvision
  bottlenecks, ResNeXt's with `groups`) and its head ``linears.<e>``.
  Layer3 / layer4 have 256 / 512 filters, RIDE's `reduce_dimension` 192 /
  384. With ``nbn=True`` it is the reference's NBN variant: every BN module
  is of the NBN class, ``scale_factor`` has one entry per BN module (111
  for ResNet-50 with 3 experts), and the BNs of expert e's layer4 are
  scaled by entry e; the other BNs stay plain.
* `RIDECifarResNet`: RIDE's CIFAR ResNet-32, stem and ``layer1`` shared,
  ``layer2s.<e>`` and ``layer3s.<e>`` (32 / 64 filters, reduced 24 / 48)
  per expert, option-A shortcuts. With ``nbn=True`` (no reference: our
  placement) the BNs of expert e's last stage are scaled by
  ``scale_factor[e]``, a vector of one entry per expert.
* Heads (`head`): 'linear' (``nn.Linear``), 'linear_bn' (the reference's
  `Linear_fcbn_notaffine`: a Linear whose output goes through ``.bn``, a
  BatchNorm1d without affine) or 'cosine' (NormedLinear: weight kept as
  (in, out), features and weight columns L2-normalised, times ``scale``).

Global average pooling is adaptive (the reference's AvgPool2d(7) is the
same at 224x224). Imports only torch and the test models.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tests import torch_models

HEADS = ('linear', 'linear_bn', 'cosine')
NBN_NORMS = ('bn1', 'bn2', 'bn3', 'downsample')


class LinearBN(nn.Linear):
  """The reference's Linear_fcbn_notaffine: linear, then BN over logits."""

  def __init__(self, in_features, out_features):
    super().__init__(in_features, out_features)
    self.bn = nn.BatchNorm1d(out_features, affine=False)

  def forward(self, x):
    return self.bn(super().forward(x))


class NormedLinear(nn.Module):
  """cos(x, column) for each class; weight (in, out) at unit columns."""

  def __init__(self, in_features, out_features, scale):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(in_features, out_features))
    with torch.no_grad():
      self.weight.uniform_(-1, 1)
      self.weight.div_(self.weight.norm(dim=0, keepdim=True))
    self.scale = scale

  def forward(self, x):
    return self.scale * (
        F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)
    )


def make_head(head, in_features, num_classes, scale=30.0):
  if head not in HEADS:
    raise ValueError(f'head={head!r} is not one of {HEADS}.')
  if head == 'cosine':
    return NormedLinear(in_features, num_classes, scale)
  if head == 'linear_bn':
    return LinearBN(in_features, num_classes)
  return nn.Linear(in_features, num_classes)


def pooled(x):
  return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def ensemble_forward(model, features, expert_part):
  """(mean logits, stacked expert logits (E, N, C)) of shared features."""
  experts = torch.stack(
      [expert_part(features, e) for e in range(model.num_experts)]
  )
  return experts.mean(0), experts


class RIDEResNet(nn.Module):
  """The reference's resnet50_ride_NBN (and RIDE's ResNet/ResNeXt ensemble).

  `forward` returns the mean logits; `expert_logits` the (E, N, C) stack.
  """

  def __init__(
      self,
      layers=(3, 4, 6, 3),
      num_classes=1000,
      num_experts=3,
      groups=1,
      width_per_group=64,
      reduce_dimension=False,
      head='linear',
      nbn=True,
  ):
    super().__init__()
    self.num_experts = num_experts
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    nbn_norms = NBN_NORMS if nbn else ()
    norm = torch_models.NBNBatchNorm2d if nbn else nn.BatchNorm2d
    self.bn1 = norm(64)
    planes = (64, 128, 192, 384) if reduce_dimension else (64, 128, 256, 512)

    def make_stage(stage, inplanes):
      blocks = []
      for block in range(layers[stage]):
        blocks.append(
            torch_models.Bottleneck(
                inplanes,
                planes[stage],
                2 if stage > 0 and block == 0 else 1,
                groups,
                width_per_group,
                nbn_norms,
            )
        )
        inplanes = 4 * planes[stage]
      return nn.Sequential(*blocks)

    self.layer1 = make_stage(0, 64)
    self.layer2 = make_stage(1, 4 * planes[0])
    self.layer3s = nn.ModuleList(
        [make_stage(2, 4 * planes[1]) for _ in range(num_experts)]
    )
    self.layer4s = nn.ModuleList(
        [make_stage(3, 4 * planes[2]) for _ in range(num_experts)]
    )
    self.linears = nn.ModuleList([
        make_head(head, 4 * planes[3], num_classes) for _ in range(num_experts)
    ])
    self.nbn = nbn
    if nbn:
      count = sum(isinstance(m, nn.BatchNorm2d) for m in self.modules())
      self.scale_factor = nn.Parameter(torch.ones(count))

  def _expert(self, x, e):
    if self.nbn:
      for m in self.layer4s[e].modules():
        if isinstance(m, torch_models.NBNBatchNorm2d):
          m.alpha = self.scale_factor[e]
    x = self.layer4s[e](self.layer3s[e](x))
    return self.linears[e](pooled(x))

  def expert_logits(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer2(self.layer1(F.max_pool2d(x, 3, 2, 1)))
    return ensemble_forward(self, x, self._expert)

  def forward(self, x):
    return self.expert_logits(x)[0]


class CifarBlock(nn.Module):
  """LDAM's basic block, option-A shortcut; BNs of the NBN class if `nbn`."""

  def __init__(self, in_planes, planes, stride, nbn):
    super().__init__()
    norm = torch_models.NBNBatchNorm2d if nbn else nn.BatchNorm2d
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = norm(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = norm(planes)
    self.pad = planes - in_planes
    self.stride = stride

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x
    if self.stride != 1 or self.pad:
      shortcut = F.pad(
          x[:, :, :: self.stride, :: self.stride],
          (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2),
      )
    return F.relu(out + shortcut)


class RIDECifarResNet(nn.Module):
  """RIDE's CIFAR ResNet-32 ensemble (cosine head x 30 by default)."""

  def __init__(
      self,
      layers=(5, 5, 5),
      num_classes=100,
      num_experts=3,
      reduce_dimension=False,
      head='cosine',
      nbn=True,
  ):
    super().__init__()
    self.num_experts = num_experts
    planes = (16, 24, 48) if reduce_dimension else (16, 32, 64)

    def make_stage(stage, in_planes):
      blocks = []
      for block in range(layers[stage]):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(CifarBlock(in_planes, planes[stage], stride, nbn))
        in_planes = planes[stage]
      return nn.Sequential(*blocks)

    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    self.layer1 = make_stage(0, 16)
    self.layer2s = nn.ModuleList(
        [make_stage(1, planes[0]) for _ in range(num_experts)]
    )
    self.layer3s = nn.ModuleList(
        [make_stage(2, planes[1]) for _ in range(num_experts)]
    )
    self.linears = nn.ModuleList(
        [make_head(head, planes[2], num_classes) for _ in range(num_experts)]
    )
    self.nbn = nbn
    if nbn:
      self.scale_factor = nn.Parameter(torch.ones(num_experts))

  def _expert(self, x, e):
    if self.nbn:
      for m in self.layer3s[e].modules():
        if isinstance(m, torch_models.NBNBatchNorm2d):
          m.alpha = self.scale_factor[e]
    return self.linears[e](pooled(self.layer3s[e](self.layer2s[e](x))))

  def expert_logits(self, x):
    x = self.layer1(F.relu(self.bn1(self.conv1(x))))
    return ensemble_forward(self, x, self._expert)

  def forward(self, x):
    return self.expert_logits(x)[0]


def parameter_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
