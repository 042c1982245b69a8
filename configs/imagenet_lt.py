"""ImageNet-LT, ResNet-50 (or ResNeXt-50 32x4d), NBN on the four layer4 BNs.

    python train.py --config=configs/imagenet_lt.py --workdir=gs://bucket/ilt \
        --config.image_root=/data/imagenet \
        --config.train_list=ImageNet_LT_train.txt \
        --config.val_list=ImageNet_LT_val.txt \
        --config.test_list=ImageNet_LT_test.txt
    # ResNeXt-50: --config.model=ResNeXt50

Selects on val (20,000 images), reports on test (50,000). Expected runtime
(90 epochs of 115,846 images at batch 512, 20,364 steps): not run (no
ImageNet here). The step alone would take about 26 minutes on one H200
(ResNet-50, bf16: 6,760 images/s measured on synthetic data); the input
pipeline decodes about 740 ImageNet-style images/s (with colour jitter)
on 2 CPU cores here, so feeding that GPU needs about 18 such cores.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'imagenet_lt'
  config.data_source = 'lists'
  config.input_path = 'tf_data'
  config.model = 'ResNet50'  # or ResNeXt50
  config.half_precision = True
  config.batch_size = 512
  config.learning_rate = 0.2
  config.lr_batch_size = 512
  config.weight_decay = 5e-4
  config.schedule = 'cosine'
  config.warmup_epochs = 0.0
  config.lr_decay_epochs = ()
  config.num_epochs = 90.0
  config.log_every_steps = 100
  config.steps_per_dispatch = 1
  config.eval_every_epochs = 5.0
  config.eval_batch_size = 1024
  config.checkpoint_every_epochs = 1.0
  return config
