"""ImageNet-LT, RIDE ensemble (3 experts) with plain BN: the reference's
baseline for its RIDE + NBN configuration (its config/ImageNet_LT/ride.yaml).

    python train.py --config=configs/imagenet_lt_ride.py --workdir=WORKDIR \
        --config.image_root=/data/imagenet \
        --config.train_list=ImageNet_LT_train.txt \
        --config.val_list=ImageNet_LT_val.txt \
        --config.test_list=ImageNet_LT_test.txt

ride.yaml differs from ride_nbn_lr.yaml only in its architecture
(resnet50_ride: BN everywhere, a plain linear head per expert, no logit
rectification); so does this config from configs/imagenet_lt_ride_nbn_lr.py,
whose docstring gives the sources of every other number, the loss chosen
for the reference's unrunnable cross-entropy, and what deviates.

Expected runtime: not run (no ImageNet here).
"""

from configs import imagenet_lt_ride_nbn_lr


def get_config():
  config = imagenet_lt_ride_nbn_lr.get_config()
  config.norm = 'bn'
  config.logit_norm = False
  return config
