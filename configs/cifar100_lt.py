"""CIFAR-100-LT, ResNet-32, NBN on the last stage (the LDAM protocol).

    python train.py --config=configs/cifar100_lt.py --workdir=/tmp/c100lt \
        --config.data_dir=/path/to/tfds --config.imbalance_factor=100

Expected runtime (200 epochs, 10,847 images at IF 100, batch 128, 16,949
steps): about 4.7 hours on a 2-core CPU at the 1.0 s per step measured for
CIFAR-10-LT; on one H200 about 1.5 minutes at the rate measured for
CIFAR-10-LT (not run: no CIFAR-100 here).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'cifar100'
  config.imbalance_factor = 100.0  # 10, 50 and 100 are the usual settings
  return config
