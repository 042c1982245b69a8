"""ResNet-32 with NBN in PyTorch, written from docs/method.md (bench only).

The same network as `nbn_jax.models.ResNet32(norm='nbn')`: LDAM's CIFAR
ResNet-32 (option-A shortcuts), NBN on the last BN of each last-stage block,
one shared alpha. Used only to time a PyTorch train step against ours.
"""

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedBatchNorm2d(nn.BatchNorm2d):
  """BN whose weight and bias are unit-normalised and scaled by alpha."""

  def forward(self, x, alpha):
    weight = (
        alpha * self.weight / (torch.linalg.vector_norm(self.weight) + 1e-6)
    )
    bias = alpha * self.bias / (torch.linalg.vector_norm(self.bias) + 1e-6)
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


class BasicBlock(nn.Module):

  def __init__(self, in_planes, planes, stride, nbn):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = NormalizedBatchNorm2d(planes) if nbn else nn.BatchNorm2d(planes)
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

  def __init__(self, num_classes=10, norm='nbn'):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    blocks, in_planes = [], 16
    for stage, planes in enumerate((16, 32, 64)):
      for block in range(5):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(
            BasicBlock(
                in_planes, planes, stride, nbn=norm == 'nbn' and stage == 2
            )
        )
        in_planes = planes
    self.blocks = nn.ModuleList(blocks)
    self.alpha = nn.Parameter(torch.ones(())) if norm == 'nbn' else None
    self.fc = nn.Linear(64, num_classes)
    for m in self.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    for block in self.blocks:
      x = block(
          x,
          self.alpha if isinstance(block.bn2, NormalizedBatchNorm2d) else None,
      )
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make_step(model, lr=0.1, weight_decay=2e-4, bf16=False):
  """An SGD (momentum 0.9, coupled decay) cross-entropy step: (x, y) -> loss."""
  optimizer = torch.optim.SGD(
      model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay
  )

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
      loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  return step
