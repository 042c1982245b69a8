"""CIFAR-10-LT, ResNet-32 with NBN, trained with LDAM-DRW (the field's
CIFAR-LT baseline, Cao et al. 2019).

    python train.py --config=configs/cifar10_lt_ldam_drw.py --workdir=/tmp/c10ldam \
        --config.data_source=jpeg --config.data_dir=../shared/data/cifar10-jpeg
    # Plain BN: --config.norm=bn; CIFAR-100-LT: configs/cifar100_lt_ldam_drw.py

Sources of the numbers: kaidic/LDAM-DRW's cifar_train.py and losses.py
(docs/method.md): ResNet-32 (option-A shortcuts) with its normalised linear
classifier (classifier='cosine'; LDAM scales the cosines by s = 30 in its
loss, here the head does, RIDE's convention), LDAM with max margin 0.5,
DRW from epoch 160 with beta 0.9999, SGD lr 0.1 at batch 128, momentum 0.9,
weight decay 2e-4, 200 epochs, 5 warm-up epochs, the rate x0.01 after 160
and x0.0001 after 180; imbalance factor 100. LDAM-DRW reports 77.03 top-1
on CIFAR-10-LT IF 100 (the best of its 200 per-epoch test evaluations).

What deviates: the warm-up rises per step (`--config.warmup_granularity=epoch`
is LDAM's staircase), the continuous stream (no partial last batch), NBN on
the last stage's bn2 (the reference's analogue; `--config.norm=bn` is
LDAM's own network).

Expected runtime: as configs/cifar10_lt.py (the same network and steps).
"""

from configs import cifar10_lt


def get_config():
  config = cifar10_lt.get_config()
  config.classifier = 'cosine'
  config.cosine_scale = 30.0
  config.loss = 'ldam_drw'
  config.ldam_max_m = 0.5
  config.ldam_scale = 30.0
  config.drw_epoch = 160.0
  config.drw_beta = 0.9999
  config.weight_decay = 2e-4
  return config
