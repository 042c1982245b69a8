"""Classifier re-training (cRT): a second stage on top of any benchmark config.

    python train.py --config=configs/crt.py:cifar10_lt --workdir=/tmp/c10-crt \
        --config.finetune_from=/tmp/c10 [--config.data_dir=...]

`configs/crt.py:NAME` is `configs/NAME.py` with the second-stage settings of
Decoupling (Kang et al., ICLR 2020, "cRT") and of the reference's
`train_all: False`: start from the first stage's workdir (`finetune_from`,
required; the same model, norm, dataset and num_runs), a freshly
initialised classifier, only the classifier and NBN's alphas trained (the
reference tunes its `scale_factor` too), class-balanced sampling, 10 epochs
with a cosine schedule from the base rate and no warm-up. BN layers keep
normalising with batch statistics and updating their running statistics,
as in the reference (its model stays in train mode). Everything else (the
rate, batch, weight decay) is the first stage's config's.

Expected runtime: 10 epochs at about the first stage's cost per step (the
backward pass still runs through the network; only the updates are
masked): for CIFAR-10-LT IF 100, 970 steps.
"""

import importlib


def get_config(base: str = 'cifar10_lt'):
  config = importlib.import_module(f'configs.{base}').get_config()
  config.trainable = 'classifier'
  config.reinit_classifier = True
  config.sampler = 'class'
  config.num_epochs = 10.0
  config.schedule = 'cosine'
  config.warmup_epochs = 0.0
  config.lr_decay_epochs = ()
  config.eval_every_epochs = 1.0
  config.checkpoint_every_epochs = 1.0
  return config
