"""CIFAR-10-LT, RIDE's CIFAR ensemble (3 experts) with NBN, RIDE's recipe.

    python train.py --config=configs/cifar10_lt_ride.py --workdir=/tmp/c10ride \
        --config.data_source=jpeg --config.data_dir=../shared/data/cifar10-jpeg
    # The RIDE baseline with BN: --config.norm=bn

configs/cifar100_lt_ride.py on CIFAR-10 (RIDE ships no CIFAR-10 config; its
CIFAR-100 recipe is applied unchanged): see that docstring for the source
of every number and what deviates.

Expected runtime: not measured for 200 epochs.
"""

from configs import cifar100_lt_ride


def get_config():
  config = cifar100_lt_ride.get_config()
  config.dataset = 'cifar10'
  return config
