"""The quickstart: long-tailed handwritten digits, no download, a laptop CPU.

    python train.py --config=configs/quickstart.py --workdir=/tmp/quickstart

scikit-learn's bundled 8x8 digits, made long-tailed (imbalance factor 10:
124 training images of digit 0 down to 12 of digit 9; 50 test images per
digit), a ResNet-8 with NBN on its last stage, 60 epochs with the on-device
input path. Runs in under a minute on a 2-core CPU (measured: 16 s wall,
start-up included, on an idle 2-core Intel Xeon at 2.5 GHz; 28 to 57 s on
2-core machines shared with other jobs). The baseline is
`--config.norm=bn`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'digits'
  config.data_source = 'digits'
  config.imbalance_factor = 10.0
  config.many_threshold = 60  # thresholds scaled to this small dataset
  config.few_threshold = 20
  config.model = 'ResNet8'
  config.batch_size = 64
  config.learning_rate = 0.05
  config.lr_batch_size = 64
  config.weight_decay = 5e-4
  config.warmup_epochs = 2.0
  config.lr_decay_epochs = (45.0, 55.0)
  config.lr_decay_factor = 0.1
  config.num_epochs = 60.0
  config.log_every_steps = 50
  config.steps_per_dispatch = 10
  config.eval_every_epochs = 10.0
  config.eval_batch_size = 256
  config.checkpoint_every_epochs = 20.0
  return config
