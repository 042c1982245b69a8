r"""Our jitted ResNet-32 NBN train step against the same step in PyTorch.

    pip install -r requirements-test.txt   # PyTorch: test/bench only
    python -m bench.timing.jax_vs_torch [--bf16] [--batch=128] [--rounds=7]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot \
        python -m bench.timing.jax_vs_torch

Both sides train the same network (ResNet-32, NBN on the last stage, batch
128 of 32x32 images, 10 classes) with the same step: forward, softmax
cross-entropy, backward, SGD with momentum and coupled weight decay, BN in
train mode. Ours is `nbn_jax.training.steps` (uint8 input normalised inside
the jitted step, donated state); PyTorch's is `tests/torch_resnet32.py`
(channels_last, its fastest CPU layout, float32 input). `--compile` adds
the same PyTorch step with the model under `torch.compile` (default mode;
the first two steps, compilation included, are timed apart). Rounds
alternate the order of the arms so that drift on the machine hits all;
printed: median ms per step and the median over rounds of JAX time / the
arm's time (< 1: JAX is faster). `--bf16` runs both in bfloat16 compute (JAX: `dtype`; PyTorch:
autocast). On a machine with a GPU both run there (PyTorch eager with
cuDNN autotuning; one jitted call per JAX step, as here):

    python -m bench.timing.jax_vs_torch --steps-per-round=50 --compile
"""

import argparse
import os
import statistics
import time

import jax
import numpy as np
import torch

# nbn_overhead's config is the trainer's for these.
from bench.timing.nbn_overhead import Trainer, config_for
from tests.torch_resnet32 import ResNet32 as TorchResNet32, make_step


def torch_runner(images, labels, bf16, compile_model=False):
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
  step = make_step(torch.compile(model) if compile_model else model, bf16=bf16)

  def run(num_steps):
    start = time.perf_counter()
    for _ in range(num_steps):
      loss = step(x, y)
    loss.item()  # waits for the device
    return (time.perf_counter() - start) / num_steps

  return run


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--steps-per-round', type=int, default=3)
  parser.add_argument('--bf16', action='store_true')
  parser.add_argument(
      '--compile', action='store_true', help='also time torch.compile'
  )
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, args.batch).astype(np.int32)
  arms = {
      'jax': (
          Trainer(
              config_for('resnet32', 'nbn', args.batch, args.bf16),
              images,
              labels,
          ).run
      ),
      'torch': torch_runner(images, labels, args.bf16),
  }
  if args.compile:
    arms['torch.compile'] = torch_runner(images, labels, args.bf16, True)
  first_steps = {}
  for name, run in arms.items():  # compile, warm up
    start = time.perf_counter()
    run(2)
    first_steps[name] = time.perf_counter() - start

  times = {name: [] for name in arms}
  for r in range(args.rounds):
    for name in list(arms) if r % 2 == 0 else list(arms)[::-1]:
      times[name].append(arms[name](args.steps_per_round))
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
  for name in arms:
    ratios = [j / t for j, t in zip(times['jax'], times[name])]
    print(
        f'  {name:14} {1e3 * statistics.median(times[name]):8.1f} ms/step,'
        f' JAX / it = {statistics.median(ratios):.2f} (rounds '
        f'{min(ratios):.2f}..{max(ratios):.2f}); first 2 steps '
        f'{first_steps[name]:.1f} s'
    )


if __name__ == '__main__':
  main()
