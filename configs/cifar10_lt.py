"""CIFAR-10-LT, ResNet-32, NBN on the last stage (the LDAM protocol).

    python train.py --config=configs/cifar10_lt.py --workdir=/tmp/c10lt \
        --config.data_dir=/path/to/tfds  # or: --config.data_source=jpeg
        # --config.data_dir=../shared/data/cifar10-jpeg

    # The baseline: --config.norm=bn; other imbalance: --config.imbalance_factor=50

Expected runtime (200 epochs, 12,406 images, batch 128, ~19,400 steps): a
few minutes on one H100 with the on-device input path; several hours on a
2-core CPU (about 1 s per step).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'cifar10'
  return config
