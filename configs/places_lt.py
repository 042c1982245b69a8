"""Places-LT: ImageNet-pretrained ResNet-152 fine-tuned, NBN on layer4.

    # Once: torchvision's ImageNet ResNet-152 (plain BN) into a workdir,
    # its four layer4 NBN layers computing what those BNs did.
    python -m nbn_jax.convert --checkpoint=resnet152-394f9c45.pth \
        --source=plain_bn --config=configs/imagenet_lt.py \
        --config.model=ResNet152 --workdir=gs://bucket/r152-imagenet
    python train.py --config=configs/places_lt.py --workdir=gs://bucket/plt \
        --config.finetune_from=gs://bucket/r152-imagenet \
        --config.image_root=/data/places365 \
        --config.train_list=Places_LT_train.txt \
        --config.val_list=Places_LT_val.txt \
        --config.test_list=Places_LT_test.txt
    # The BN baseline: both commands with --config.norm=bn.

`finetune_from` (the converted workdir) is part of the protocol: without it
the network trains from scratch. docs/places_lt.md has the whole path, from
downloading torchvision's weights file to the Many/Medium/Few table and the
classifier re-training stage (`configs/crt.py:places_lt`).

The protocol followed: OLTR's plain model (Liu et al., CVPR 2019,
github.com/zhmiao/OpenLongTailRecognition-OLTR, config/Places_LT/stage_1.py),
which Decoupling (Kang et al., ICLR 2020) follows for its Places-LT
representation (a ResNet-152 pretrained on the full ImageNet-2012): every
layer of the pretrained network fine-tuned on Places-LT
with a new 365-way classifier, cross-entropy, instance-balanced sampling, SGD
with momentum 0.9 and weight decay 5e-4, batch 128, 30 epochs, the rate
x0.1 every 10 epochs (StepLR, step 10), 0.1 for the classifier and 0.001 for
the pretrained network (`backbone_lr_factor` 0.01). Augmentation (OLTR's and
Decoupling's ImageNet transforms): random-resized crop 224, flip, colour
jitter 0.4 (brightness, contrast, saturation); test resize 256, centre crop
224; ImageNet mean and std. Selects on val (7,300 images, 20 a class,
evaluated every epoch as OLTR does), reports on test (36,500, 100 a class).

What deviates: torchvision's ImageNet ResNet-152 (IMAGENET1K_V1, stride on
the 3x3 convolution), where OLTR loads a Caffe-converted one
(caffe_resnet152.pth); OLTR's feature model adds a 512-wide linear layer
before its classifier (use_fc, feature_dim 512), here the 2048-d pooled
features feed the classifier as in Decoupling's Places-LT ResNet-152
(feat_dim 2048); NBN on the four layer4 BNs (the reference's placement, not
in OLTR), which start as the converted BNs' function exactly but whose
shorter raw vectors take the direction of their first gradient (see
`nbn_jax.folding.unfold_bn` and docs/places_lt.md); BN statistics over the
global batch; bfloat16 compute.

Expected runtime: not run (no Places-365 images and no accelerator here).
30 epochs of 62,500 images at batch 128 are 14,649 steps (1.875 M images).
From the ImageNet-LT config's measured ResNet-50 step (6,760 images/s, bf16,
one H200) and ResNet-152's 11.5 GFLOPs per image against ResNet-50's 4.1,
about 2,400 images/s: 13 minutes of steps, plus 30 evaluations of the 7,300
val images and one of the 36,500 test images. The input pipeline decodes
about 370 images/s per CPU core here (with colour jitter), so feeding that
GPU takes about 7 cores.
"""

from configs import imagenet_lt


def get_config():
  config = imagenet_lt.get_config()
  config.dataset = 'places_lt'
  config.model = 'ResNet152'
  config.finetune_from = ''  # the converted ImageNet workdir
  config.reinit_classifier = True  # 365 classes, not ImageNet's 1000
  config.sampler = 'instance'
  config.batch_size = 128
  config.learning_rate = 0.1  # the classifier's
  config.lr_batch_size = 128
  config.backbone_lr_factor = 0.01  # the pretrained network's: 0.001
  config.weight_decay = 5e-4
  config.schedule = 'step'
  config.warmup_epochs = 0.0
  config.lr_decay_epochs = (10.0, 20.0)
  config.lr_decay_factor = 0.1
  config.num_epochs = 30.0
  config.log_every_steps = 50
  config.eval_every_epochs = 1.0
  config.checkpoint_every_epochs = 1.0
  return config
