"""iNaturalist 2018, ResNet-50, NBN on the four layer4 BNs.

    python train.py --config=configs/inat2018.py --workdir=gs://bucket/inat \
        --config.image_root=/data/inat2018 \
        --config.train_list=iNaturalist18_train.txt \
        --config.test_list=iNaturalist18_val.txt

iNaturalist's val set (24,426 images) is its test set: there is no separate
validation split, so nothing is selected and the results are last-epoch
(the best-during-training number on test is reported separately, labelled).
Expected runtime (90 epochs of 437,513 images at batch 512, 76,907 steps):
not measured (no accelerator and no iNaturalist images here); 3.8x
ImageNet-LT's. 200 epochs, also common, is 2.2x that.
"""

from configs import imagenet_lt


def get_config():
  config = imagenet_lt.get_config()
  config.dataset = 'inat2018'
  config.val_list = ''
  config.eval_every_epochs = 10.0
  return config
