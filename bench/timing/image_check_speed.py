"""Images per second of the pre-training image check, on generated JPEGs.

    python -m bench.timing.image_check_speed                  # 4000 JPEGs in /tmp
    python -m bench.timing.image_check_speed --images=20000 --dir=/mnt/nfs/tmp

Writes `--images` JPEGs (320x240, ImageNet-like smooth content) and their
list file in a temporary folder under `--dir`, then times
`input_pipeline.image_check.check_images` (header and end-marker read of
every file, no cache) with 1, 8 and 32 threads. The files were just
written, so they are in the page cache: this measures the check's own
cost, not a cold disk's or a network file system's.
"""

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

import input_pipeline as ip
from input_pipeline import image_check


def write_jpegs(root: str, count: int, classes: int) -> str:
  """`count` 320x240 JPEGs of smooth random colours and their list file."""
  rng = np.random.default_rng(0)
  lines = []
  for i in range(count):
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((320, 240), Image.BILINEAR)
    path = f'class{i % classes}/{i:06d}.jpg'
    os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
    image.save(os.path.join(root, path), quality=95)
    lines.append(f'{path} {i % classes}\n')
  list_file = os.path.join(root, 'train.txt')
  with open(list_file, 'w') as f:
    f.writelines(lines)
  return list_file


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--images', type=int, default=4000)
  parser.add_argument('--dir', default=None)
  args = parser.parse_args()
  classes = 10
  with tempfile.TemporaryDirectory(dir=args.dir) as root:
    list_file = write_jpegs(root, args.images, classes)
    split = ip.load_list_split(list_file, root, classes, check_images=False)
    size = np.mean(
        [os.path.getsize(os.path.join(root, p)) for p in split.paths[:200]]
    )
    print(
        f'{len(split)} JPEGs of {size / 1e3:.1f} kB on average, '
        f'{os.cpu_count()} CPUs'
    )
    for workers in (1, 8, 32):
      start = time.perf_counter()
      image_check.check_images(split, cache_dir='', workers=workers)
      seconds = time.perf_counter() - start
      print(f'{workers:2d} threads: {len(split) / seconds:.0f} images/s')


if __name__ == '__main__':
  main()
