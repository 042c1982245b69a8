"""Images/second of our input paths over a naive baseline's, in one run.

    python -m bench.timing.pipeline_throughput                  # all three
    python -m bench.timing.pipeline_throughput --cifar-jpeg=../shared/data/cifar10-jpeg

Measured on this machine in one process, one after the other:

1. CIFAR-LT tf.data (pad-4 crop + flip, uint8 batches of 128).
2. The on-device path (index sampling + crop + flip + normalise inside one
   jitted function) on JAX's default backend.
3. ImageNet-style tf.data on generated 500x375 JPEGs (random-resized crop
   224, flip, colour jitter 0.4, uint8 batches of 64).

The baseline is what a PyTorch DataLoader does: a pool of worker processes
(as many as this machine has cores, like tf.data's threads) each running a
Python loop of PIL + NumPy per image, batches stacked in NumPy. It stops at
uint8 images, leaving out ToTensor/Normalize, which makes it faster than the
real DataLoader: the ratios are conservative. CIFAR data: the real images
(--cifar-jpeg) if given, else random images of the same size and long tail.
"""

import argparse
import itertools
import multiprocessing
import os
import random
import tempfile
import time

import jax
import numpy as np
from PIL import Image, ImageEnhance

import input_pipeline as ip
from input_pipeline import on_device, tf_pipeline
from input_pipeline.datasets import CIFAR_MEAN, CIFAR_STD, Preprocessing
from nbn_jax.training.topology import make_topology

WORKERS = os.cpu_count()


# --- The naive baseline: per-image PIL + NumPy, in worker processes ------


_WORKER_IMAGES = None  # each worker's copy of the dataset, as DataLoader's


def _hold_images(images):
  global _WORKER_IMAGES
  _WORKER_IMAGES = images


def _naive_cifar_batch(args):
  indices, seed = args
  rng = random.Random(seed)
  out = []
  for image in _WORKER_IMAGES[indices]:
    pil = Image.fromarray(image)
    padded = Image.new(pil.mode, (40, 40))
    padded.paste(pil, (4, 4))
    x, y = rng.randint(0, 8), rng.randint(0, 8)
    pil = padded.crop((x, y, x + 32, y + 32))
    if rng.random() < 0.5:
      pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    out.append(np.asarray(pil))
  return np.stack(out)


def _naive_imagenet_batch(args):
  paths, seed = args
  rng = random.Random(seed)
  out = []
  for path in paths:
    pil = Image.open(path).convert('RGB')
    width, height = pil.size
    for _ in range(10):  # torchvision RandomResizedCrop
      area = width * height * rng.uniform(0.08, 1.0)
      ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      w, h = int(round((area * ratio) ** 0.5)), int(
          round((area / ratio) ** 0.5)
      )
      if 0 < w <= width and 0 < h <= height:
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        break
    else:
      x, y, w, h = 0, 0, width, height
    pil = pil.resize((224, 224), Image.BILINEAR, box=(x, y, x + w, y + h))
    if rng.random() < 0.5:
      pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in rng.sample(
        [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color], 3
    ):
      pil = enhance(pil).enhance(rng.uniform(0.6, 1.4))
    out.append(np.asarray(pil))
  return np.stack(out)


def _naive_rate(function, batches, batch_size, images=None):
  """Images/s of `function` over `batches` in a pool of WORKERS processes."""
  context = multiprocessing.get_context('spawn')  # JAX threads forbid fork
  with context.Pool(WORKERS, _hold_images, (images,)) as pool:
    pool.map(function, batches[:WORKERS])  # warm up the workers
    start = time.perf_counter()
    for _ in pool.imap(function, batches, chunksize=1):
      pass
    return len(batches) * batch_size / (time.perf_counter() - start)


# --- Our paths --------------------------------------------------------------


def _tf_data_rate(dataset, num_batches, batch_size):
  iterator = tf_pipeline.as_numpy(dataset)
  for _ in range(3):  # warm up
    next(iterator)
  start = time.perf_counter()
  for _ in itertools.islice(iterator, num_batches):
    pass
  return num_batches * batch_size / (time.perf_counter() - start)


def _on_device_rate(split, num_batches, batch_size):
  topology = make_topology('global', devices=jax.devices()[:1])
  data = on_device.put_on_devices(
      split, ip.SamplerSpec(), topology.batch_sharding
  )

  @jax.jit
  def batch(data, step):
    key = jax.random.key(0)
    images, labels = on_device.sample_batch(data, key, step, batch_size)
    images = on_device.random_crop_flip(
        images, jax.random.fold_in(key, step), 4
    )
    return on_device.normalize_images(images, CIFAR_MEAN, CIFAR_STD), labels

  jax.block_until_ready(batch(data, 0))
  start = time.perf_counter()
  for step in range(num_batches):
    out = batch(data, step)
  jax.block_until_ready(out)
  return num_batches * batch_size / (time.perf_counter() - start)


def _cifar_lt(cifar_jpeg):
  if cifar_jpeg:
    train = ip.load_cifar10_jpeg(cifar_jpeg, 'train')
  else:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 5000).astype(np.int32)
    images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
    train = ip.Split('random-cifar', labels, 10, images=images)
  return train.subset(ip.long_tail_indices(train.labels, 100))


def _jpeg_folder(folder, count):
  rng = np.random.default_rng(0)
  paths = []
  for i in range(count):
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(base).resize((500, 375), Image.BICUBIC))
    noise = rng.normal(0, 12, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    path = os.path.join(folder, f'{i:04d}.jpg')
    Image.fromarray(image).save(path, quality=90)
    paths.append(path)
  return paths


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--cifar-jpeg', default='', help='CIFAR-10 JPEG folder')
  parser.add_argument('--cifar-batches', type=int, default=150)
  parser.add_argument('--imagenet-images', type=int, default=512)
  args = parser.parse_args()
  print(
      f'{WORKERS} CPU cores; baseline: {WORKERS} worker processes; jax '
      f'backend {jax.default_backend()}'
  )
  rows = []

  lt = _cifar_lt(args.cifar_jpeg)
  batch = 128
  rng = np.random.default_rng(0)
  naive_batches = [
      (rng.integers(0, len(lt), batch), seed)
      for seed in range(args.cifar_batches)
  ]
  naive_cifar = _naive_rate(_naive_cifar_batch, naive_batches, batch, lt.images)
  dataset = tf_pipeline.train_dataset(
      lt,
      Preprocessing('cifar'),
      global_batch_size=batch,
      process_index=0,
      process_count=1,
  )
  rows.append((
      'CIFAR-LT tf.data',
      _tf_data_rate(dataset, args.cifar_batches, batch),
      naive_cifar,
  ))
  rows.append((
      'CIFAR-LT on-device',
      _on_device_rate(lt, args.cifar_batches, batch),
      naive_cifar,
  ))

  with tempfile.TemporaryDirectory() as folder:
    paths = _jpeg_folder(folder, args.imagenet_images)
    batch = 64
    naive_batches = [
        (paths[i : i + batch], i) for i in range(0, len(paths), batch)
    ]
    naive_imagenet = _naive_rate(_naive_imagenet_batch, naive_batches, batch)
    split = ip.Split(
        'generated-jpegs',
        np.zeros(len(paths), np.int32),
        1,
        paths=np.array([os.path.basename(p) for p in paths]),
        image_root=folder,
    )
    dataset = tf_pipeline.train_dataset(
        split,
        Preprocessing('imagenet', color_jitter=0.4),
        global_batch_size=batch,
        process_index=0,
        process_count=1,
    )
    ours = _tf_data_rate(dataset, len(paths) // batch, batch)
    rows.append(('ImageNet-style JPEG tf.data', ours, naive_imagenet))

  print(f'{"path":30} {"ours img/s":>11} {"naive img/s":>12} {"ratio":>6}')
  for name, ours, naive in rows:
    print(f'{name:30} {ours:11.0f} {naive:12.0f} {ours / naive:6.1f}')


if __name__ == '__main__':
  main()
