"""CIFAR-100-LT, ResNet-32 with NBN, trained with LDAM-DRW.

    python train.py --config=configs/cifar100_lt_ldam_drw.py --workdir=/tmp/c100ldam \
        --config.data_dir=/path/to/tfds

configs/cifar10_lt_ldam_drw.py on CIFAR-100 (LDAM-DRW's recipe is the same
for both; it reports 42.04 top-1 on CIFAR-100-LT IF 100): see that
docstring for the source of every number and what deviates.

Expected runtime: as configs/cifar100_lt.py.
"""

from configs import cifar10_lt_ldam_drw


def get_config():
  config = cifar10_lt_ldam_drw.get_config()
  config.dataset = 'cifar100'
  return config
