"""Our jitted ResNet-32 NBN train step against the same step in PyTorch.

    pip install torch==2.13.0          # bench-only dependency
    python bench/jax_vs_torch.py [--bf16] [--batch=128] [--rounds=7]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot \
        python bench/jax_vs_torch.py

Both sides train the same network (ResNet-32, NBN on the last stage, batch
128 of 32x32 images, 10 classes) with the same step: forward, softmax
cross-entropy, backward, SGD with momentum and coupled weight decay, BN in
train mode. Ours is `nbn_jax.training.steps` (uint8 input normalised inside
the jitted step, donated state); PyTorch's is `bench/torch_resnet32.py`
(channels_last, its fastest CPU layout, float32 input). Rounds alternate
between the two so that drift on the machine hits both; printed: median ms
per step and the median over rounds of JAX time / PyTorch time (> 1: JAX is
slower). `--bf16` runs both in bfloat16 compute (JAX: `dtype`; PyTorch:
autocast). On a machine with a GPU both run there (PyTorch eager with
cuDNN autotuning; one jitted call per JAX step, as here):

    python bench/jax_vs_torch.py --steps-per-round=50
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from nbn_overhead import Trainer  # noqa: E402  (bench/ is not a package)
from torch_resnet32 import ResNet32 as TorchResNet32, make_step  # noqa: E402

from nbn_jax import models  # noqa: E402


def torch_runner(images, labels, bf16):
  """A callable running n PyTorch steps, returning seconds per step."""
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  if device.type == 'cpu':
    torch.set_num_threads(os.cpu_count())
  else:
    torch.backends.cudnn.benchmark = True
  model = (
      TorchResNet32(norm='nbn')
      .to(device, memory_format=torch.channels_last)
      .train()
  )
  mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
  x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / 0.25
  x = x.to(device).contiguous(memory_format=torch.channels_last)
  y = torch.from_numpy(labels).long().to(device)
  step = make_step(model, bf16=bf16)

  def run(num_steps):
    start = time.perf_counter()
    for _ in range(num_steps):
      loss = step(x, y)
    loss.item()  # waits for the device
    return (time.perf_counter() - start) / num_steps

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--steps-per-round', type=int, default=3)
  parser.add_argument('--bf16', action='store_true')
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, args.batch).astype(np.int32)
  dtype = jnp.bfloat16 if args.bf16 else jnp.float32
  ours = Trainer(
      models.ResNet32(num_classes=10, norm='nbn', dtype=dtype),
      images,
      labels,
      10,
  )
  theirs = torch_runner(images, labels, args.bf16)
  ours.run(2), theirs(2)  # compile, warm up

  times = {'jax': [], 'torch': []}
  for r in range(args.rounds):
    order = (('jax', ours.run), ('torch', theirs))
    for name, run in order if r % 2 == 0 else order[::-1]:
      times[name].append(run(args.steps_per_round))
  ratios = [j / t for j, t in zip(times['jax'], times['torch'])]
  print(
      f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
      f'({jax.default_backend()}), torch {torch.__version__} (cuda: '
      f'{torch.cuda.is_available()}), {os.cpu_count()} cores, XLA_FLAGS='
      f'{os.environ.get("XLA_FLAGS", "")!r}'
  )
  print(
      f'ResNet-32 NBN train step, batch {args.batch}, '
      f'{"bfloat16" if args.bf16 else "float32"}:'
  )
  print(f'  JAX     {1e3 * statistics.median(times["jax"]):8.1f} ms/step')
  print(f'  PyTorch {1e3 * statistics.median(times["torch"]):8.1f} ms/step')
  print(
      f'  JAX / PyTorch = {statistics.median(ratios):.2f} (rounds '
      f'{min(ratios):.2f}..{max(ratios):.2f})'
  )


if __name__ == '__main__':
  main()
