r"""LDAM-DRW's CIFAR-10-LT training end to end in PyTorch, and the comparison.

    python -m bench.gpu.fidelity_gpu oracle --data-dir=../shared/data/cifar10-jpeg \
        --cache-dir=/tmp/fid/cache --out=/tmp/fid/oracle --seed=0
    python -m bench.gpu.fidelity_gpu summary --root=/tmp/fid

`oracle` trains the PyTorch oracle (`tests/torch_resnet32.py`) exactly as
LDAM-DRW's `cifar_train.py` does with `--loss_type CE --train_rule None`:
its own initialisation (seeded), 200 epochs of the long-tailed subset in a
fresh random order each epoch with the last, partial batch kept (97 batches
of 128 for IF 100, the last of 118 images), random crop 32 with 4 pixels of
zero padding and a horizontal flip (done on the device, per image),
torchvision's normalisation, the learning rate of `ldam_learning_rate` set
at the start of each epoch, and the test set evaluated after every epoch:
`best_acc1` is the best of those evaluations, as LDAM reports it, `last`
the final one. The images are the same decoded JPEG copy our trainer reads.
cudnn.benchmark is on, as in LDAM. A run checkpoints after every epoch and
stops cleanly at `--deadline` (Unix time); started again with the same
`--out`, it continues (each epoch's order and crops are keyed by (seed,
epoch), so a resumed run draws what an uninterrupted one would).

`summary` gathers the oracle's runs under ROOT/oracle and our trainer's
runs (`bench/experiments/cifar10_lt_accuracy.py` workdirs under ROOT/ours) into one
Markdown table: best-of-every-epoch and last top-1, Many/Medium/Few, epochs
done.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import input_pipeline as ip
from input_pipeline.files import write_atomically
from nbn_jax.training.metrics import LongTailAccuracy, shot_groups
from nbn_jax.training.reporting import percent
from tests import torch_resnet32 as oracle

BATCH = 128
EVAL_BATCH = 1000
BASE_RATE = 0.1
WEIGHT_DECAY = 2e-4


def random_crop_flip(images, padding, generator):
  """torchvision's RandomCrop(padding, zeros) + RandomHorizontalFlip.

  Args:
    images: (B, H, W, C) uint8 on any device.
    padding: zero pixels added on each side before cropping back to H x W.
    generator: torch.Generator on the images' device.
  """
  batch, height, width, _ = images.shape
  device = images.device
  padded = F.pad(images, (0, 0, padding, padding, padding, padding))
  offsets = torch.randint(
      0, 2 * padding + 1, (batch, 2), generator=generator, device=device
  )
  rows = offsets[:, :1] + torch.arange(height, device=device)
  cols = offsets[:, 1:] + torch.arange(width, device=device)
  crops = padded[
      torch.arange(batch, device=device)[:, None, None],
      rows[:, :, None],
      cols[:, None, :],
  ]
  flip = torch.rand(batch, generator=generator, device=device) < 0.5
  return torch.where(flip[:, None, None, None], crops.flip(2), crops)


def evaluate(
    model, images, labels, num_classes, groups, mean, std
) -> LongTailAccuracy:
  """Top-1, Many/Medium/Few and per-class accuracy in eval mode (uint8)."""
  model.eval()
  correct = torch.zeros(num_classes, dtype=torch.long, device=images.device)
  total = torch.zeros(num_classes, dtype=torch.long, device=images.device)
  with torch.no_grad():
    for start in range(0, len(images), EVAL_BATCH):
      x = oracle.torch_inputs(images[start : start + EVAL_BATCH], mean, std)
      y = labels[start : start + EVAL_BATCH]
      hits = (model(x).argmax(1) == y).long()
      correct.index_add_(0, y, hits)
      total.index_add_(0, y, torch.ones_like(hits))
  model.train()
  accuracy = LongTailAccuracy.empty(num_classes, groups)
  accuracy.update(correct.cpu().numpy(), total.cpu().numpy())
  return accuracy


def train_oracle(args):
  device = torch.device(args.device)
  torch.backends.cudnn.benchmark = True
  benchmark = ip.load_benchmark(
      'cifar10',
      source='jpeg',
      data_dir=args.data_dir,
      imbalance_factor=args.imbalance_factor,
      cache_dir=args.cache_dir,
  )
  spec = benchmark.spec
  train_counts = benchmark.train_counts()
  groups = shot_groups(train_counts)
  x_train = torch.from_numpy(benchmark.train.images).to(device)
  y_train = torch.from_numpy(benchmark.train.labels.astype(np.int64)).to(device)
  x_test = torch.from_numpy(benchmark.test.images).to(device)
  y_test = torch.from_numpy(benchmark.test.labels.astype(np.int64)).to(device)
  num_train = len(y_train)

  torch.manual_seed(args.seed)
  model = oracle.ResNet32(spec.num_classes, args.norm).to(
      device, memory_format=torch.channels_last
  )
  model.train()
  optimizer = oracle.ldam_sgd(model, BASE_RATE, WEIGHT_DECAY)
  step = oracle.make_step(model, optimizer)
  os.makedirs(args.out, exist_ok=True)
  checkpoint = os.path.join(args.out, 'checkpoint.pt')
  history, start_epoch = [], 0
  if os.path.exists(checkpoint):
    saved = torch.load(checkpoint, map_location=device)
    model.load_state_dict(saved['model'])
    optimizer.load_state_dict(saved['optimizer'])
    history, start_epoch = saved['history'], saved['epoch']
    print(f'resuming {args.out} at epoch {start_epoch}', flush=True)

  started = time.time()
  for epoch in range(start_epoch, args.epochs):
    if time.time() > args.deadline:
      print(f'deadline: stopped before epoch {epoch}', flush=True)
      return 3
    oracle.set_learning_rate(
        optimizer, oracle.ldam_learning_rate(epoch, BASE_RATE)
    )
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed * 1_000_003 + epoch)
    order = torch.randperm(num_train, generator=generator, device=device)
    loss_sum = torch.zeros((), device=device)
    for start in range(0, num_train, BATCH):  # drop_last off
      index = order[start : start + BATCH]
      images = random_crop_flip(x_train[index], 4, generator)
      x = oracle.torch_inputs(images, spec.mean, spec.std, device)
      loss_sum += step(x, y_train[index]).detach() * len(index)
    test = evaluate(
        model, x_test, y_test, spec.num_classes, groups, spec.mean, spec.std
    )
    history.append({
        'epoch': epoch + 1,
        'train_loss': float(loss_sum) / num_train,
        'test': test.summary(),
        'test_per_class': test.per_class().tolist(),
    })
    with write_atomically(checkpoint, 'wb') as f:
      torch.save(
          {
              'model': model.state_dict(),
              'optimizer': optimizer.state_dict(),
              'history': history,
              'epoch': epoch + 1,
          },
          f,
      )
    if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
      print(
          f'epoch {epoch + 1}: loss {history[-1]["train_loss"]:.4f} test '
          f'top-1 {100 * history[-1]["test"]["top1"]:.2f} '
          f'({time.time() - started:.0f} s this call)',
          flush=True,
      )
  best = max(history, key=lambda h: h['test']['top1'])
  results = {
      'source': 'PyTorch oracle (tests/torch_resnet32.py), LDAM-DRW loop',
      'seed': args.seed,
      'norm': args.norm,
      'imbalance_factor': args.imbalance_factor,
      'epochs': args.epochs,
      'train_counts': train_counts.tolist(),
      'best_acc1': {'epoch': best['epoch'], 'test': best['test']},
      'last': {'epoch': history[-1]['epoch'], 'test': history[-1]['test']},
      'last_test_per_class': history[-1]['test_per_class'],
      'history': [
          {'epoch': h['epoch'], 'top1': h['test']['top1']} for h in history
      ],
      'torch': torch.__version__,
      'device': (
          torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'
      ),
  }
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  print(
      f'results: best_acc1 {100 * best["test"]["top1"]:.2f} (epoch '
      f'{best["epoch"]}), last {100 * history[-1]["test"]["top1"]:.2f}',
      flush=True,
  )
  return 0


# --- summary -------------------------------------------------------------------


def _oracle_rows(root):
  rows = []
  base = os.path.join(root, 'oracle')
  for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
    path = os.path.join(base, name, 'results.json')
    if os.path.exists(path):
      with open(path) as f:
        r = json.load(f)
      rows.append((
          'PyTorch oracle (LDAM loop)',
          r['seed'],
          r['epochs'],
          r['best_acc1'],
          r['last'],
      ))
    elif os.path.exists(os.path.join(base, name, 'checkpoint.pt')):
      saved = torch.load(
          os.path.join(base, name, 'checkpoint.pt'), map_location='cpu'
      )
      rows.append((
          f'PyTorch oracle, unfinished ({name})',
          '',
          saved['epoch'],
          None,
          None,
      ))
  return rows


def _our_rows(root):
  rows = []
  for arm_dir, _, files in sorted(os.walk(os.path.join(root, 'ours'))):
    if 'results.json' not in files:
      continue
    with open(os.path.join(arm_dir, 'results.json')) as f:
      r = json.load(f)
    best = r.get('best_test_during_training')
    epochs = r['config']['num_epochs']
    rows.append((
        f'ours, norm={r["config"]["norm"]}',
        r['config']['seed'],
        epochs,
        best and {'epoch': best['epoch'], 'test': best['test']},
        {'epoch': epochs, 'test': r['last']['test']},
    ))
  return rows


def _pct(summary, key):
  return percent(summary['test'][key] if summary else None)


def summary(args):
  rows = _oracle_rows(args.root) + _our_rows(args.root)
  lines = [
      (
          '| run | seed | epochs | best top-1 (epoch) | last top-1 | last '
          'Many / Medium / Few |'
      ),
      '| --- | --- | --- | --- | --- | --- |',
  ]
  for name, seed, epochs, best, last in rows:
    best_cell = f'{_pct(best, "top1")} ({best["epoch"]:g})' if best else 'n/a'
    groups = ' / '.join(_pct(last, g) for g in ('many', 'medium', 'few'))
    lines.append(
        f'| {name} | {seed} | {epochs:g} | {best_cell} | {_pct(last, "top1")}'
        f' | {groups if last else "n/a"} |'
    )
  text = '\n'.join(lines)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')


def main():
  parser = argparse.ArgumentParser(
      prog='python -m bench.gpu.fidelity_gpu',
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest='command', required=True)
  run = sub.add_parser('oracle', help='train the PyTorch oracle as LDAM does')
  run.add_argument('--data-dir', required=True, help='CIFAR-10 JPEG folder')
  run.add_argument('--cache-dir', default=None, help='decoded-array cache')
  run.add_argument('--out', required=True, help='folder of this run')
  run.add_argument('--seed', type=int, default=0)
  run.add_argument('--norm', choices=('bn', 'nbn'), default='bn')
  run.add_argument('--imbalance-factor', type=float, default=100.0)
  run.add_argument('--epochs', type=int, default=200)
  run.add_argument(
      '--deadline',
      type=float,
      default=float('inf'),
      help='Unix time after which no new epoch starts',
  )
  run.add_argument(
      '--device', default='cuda' if torch.cuda.is_available() else 'cpu'
  )
  report = sub.add_parser('summary', help='one table of oracle and ours')
  report.add_argument('--root', required=True)
  report.add_argument('--out', default='', help='also write the table here')
  args = parser.parse_args()
  if args.command == 'oracle':
    sys.exit(train_oracle(args))
  summary(args)


if __name__ == '__main__':
  main()
