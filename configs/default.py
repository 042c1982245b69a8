"""Every configuration field, with the CIFAR-10-LT recipe as defaults.

The other configs start from this one and change what differs. Any field
can be overridden on the command line, e.g. `--config.norm=bn`; a field not
defined here is an error.

    python train.py --config=configs/default.py --workdir=/tmp/nbn-default
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # --- Data -----------------------------------------------------------------
  config.dataset = 'cifar10'  # cifar10, cifar100, imagenet_lt, inat2018,
  #                             places_lt, digits (input_pipeline.DATASETS)
  config.data_source = 'tfds'  # tfds, jpeg (CIFAR-10 JPEG copy), lists, digits
  config.data_dir = ''  # TFDS data_dir, or the CIFAR-10 JPEG folder
  config.imbalance_factor = 100.0  # CIFAR / digits long tail, n_max / n_min
  config.image_root = ''  # list-file datasets: folder the listed paths are in
  config.train_list = ''  # eval_only: optional, read for the class counts
  config.val_list = ''  # empty: no validation split (select nothing)
  config.test_list = ''
  config.cache_dir = ''  # where decoded CIFAR JPEG arrays are kept
  config.input_path = 'on_device'  # on_device (in-memory data) or tf_data
  # ImageNet-style augmentation (0: the dataset's 224 / 256); antialiased
  # resizing as PIL does (off: 2-4x faster tf.data, as in flax/big_vision).
  config.image_size = 0
  config.resize_size = 0
  config.antialias = False
  config.sampler = 'instance'  # instance, class, sqrt, progressive,
  #                              class_aware
  config.samples_per_class = 4  # class_aware
  config.many_threshold = 100  # Many: more training images than this
  config.few_threshold = 20  # Few: fewer training images than this

  # --- Model ----------------------------------------------------------------
  config.model = 'ResNet32'  # a name in nbn_jax.models.MODELS
  config.norm = 'nbn'  # nbn or bn (the baseline)
  # Where NBN goes. None (the default): the model's own reference placement
  # (ResNet-50/ResNeXt-50: the four layer4 BNs; CIFAR ResNets: the last
  # stage's bn2 and its shortcut BN), all sharing one alpha; RIDE ensembles:
  # every BN of each expert's last stage, one alpha per expert. Set a field to
  # override just that part: 0-based stages, e.g. (2,); block BN names, e.g.
  # ('bn2',); projection-shortcut BN (bool); one shared alpha (bool).
  config.nbn_stages = config_dict.placeholder(tuple)
  config.nbn_block_norms = config_dict.placeholder(tuple)
  config.nbn_shortcut = config_dict.placeholder(bool)
  config.nbn_shared_alpha = config_dict.placeholder(bool)
  config.shortcut = 'A'  # CIFAR ResNets: A (zero-padding, LDAM) or B
  config.logit_norm = False  # the reference's logit-rectification head
  # None (the default): the model's own value. RIDE ensembles (RIDE*
  # models): experts (3), RIDE's narrower experts (off). Every ResNet: the
  # classifier, linear or cosine (LDAM's/RIDE's normalised one times
  # cosine_scale, 30); linear, except RIDEResNet32's cosine.
  config.num_experts = config_dict.placeholder(int)
  config.reduce_dimension = config_dict.placeholder(bool)
  config.classifier = config_dict.placeholder(str)
  config.cosine_scale = config_dict.placeholder(float)
  config.half_precision = False  # bfloat16 compute, float32 parameters
  # BN statistics over: global (the whole batch), device (each device's
  # shard, as the reference's DDP), group (bn_group_size devices).
  config.bn_scope = 'global'
  config.bn_group_size = 1

  # --- Optimisation ---------------------------------------------------------
  config.batch_size = 128  # global, over all devices and hosts
  # Linear scaling rule: the base rate is learning_rate * batch_size /
  # lr_batch_size. The LDAM protocol: 0.1 at batch 128.
  config.learning_rate = 0.1
  config.lr_batch_size = 128
  # The rate of every parameter outside the classifier(s), NBN's alphas
  # included, as a fraction of the one above (the one logged): a pretrained
  # backbone fine-tuned slower than a new classifier, as OLTR's Places-LT
  # recipe (0.001 and 0.1: 0.01).
  config.backbone_lr_factor = 1.0
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 2e-4  # 5e-4 is the other common CIFAR-LT choice
  config.decay_alpha = True  # decay NBN's alpha too (the reference default)
  config.schedule = 'step'  # step (warm-up + steps) or cosine
  config.warmup_epochs = 5.0
  # step: the rate rises every step; epoch: LDAM-DRW's per-epoch staircase
  # lr * (e + 1) / warmup_epochs (its cifar_train.py), for exact parity.
  config.warmup_granularity = 'step'
  config.lr_decay_epochs = (160.0, 180.0)
  config.lr_decay_factor = 0.01
  # cosine: 0, one half cosine over the run; P > 0, PyTorch's
  # CosineAnnealingLR(T_max=P epochs) continued past P (the reference's RIDE
  # configs: T_max 90 in a 200-epoch run, so the rate rises again).
  config.cosine_period_epochs = 0.0
  config.num_epochs = 200.0
  # Stop after this many steps (-1: the whole run). The schedule stays the
  # whole run's, so a later run with a larger value (or -1) continues it.
  config.num_train_steps = -1
  config.loss = 'cross_entropy'  # cross_entropy, balanced_softmax,
  #              logit_adjusted, ldam, ldam_drw; with an ensemble model also
  #              ride (RIDE's loss) and ride_balanced_softmax (the reference's)
  config.logit_adjust_tau = 1.0
  # LDAM (ldam, ldam_drw, ride): class margins ~ n_c^(-1/4), the largest
  # ldam_max_m, taken off the target logit as ldam_scale * m_y; the model's
  # logits count as scaled by s already (RIDE's convention: a cosine
  # classifier with cosine_scale = ldam_scale is LDAM-DRW's own loss).
  config.ldam_max_m = 0.5
  config.ldam_scale = 30.0
  # DRW (ldam_drw, ride): class-balanced weights (1 - beta) / (1 - beta^n_c)
  # from (0-based) epoch drw_epoch on: LDAM-DRW's and RIDE's CIFAR 160;
  # RIDE's ImageNet-LT and iNaturalist 80.
  config.drw_epoch = 160.0
  config.drw_beta = 0.9999
  # RIDE's diversity term, factor * T^2 * KL(ensemble mean || expert), and
  # from drw_epoch on (ride) per-class temperatures following the prior by
  # ride_reweight_factor. RIDE's defaults; its configs: CIFAR-100-LT factor
  # -0.45; ImageNet-LT reweight factor 0.02, iNaturalist 0.015.
  config.ride_diversity_factor = -0.2
  config.ride_diversity_temperature = 1.0
  config.ride_reweight_factor = 0.05

  # --- A second stage: classifier re-training -------------------------------
  # Start from a finished run's workdir (its newest checkpoint); '' starts
  # afresh. trainable='classifier' trains only the classifier(s) and NBN's
  # alphas (the reference's train_all: False; Decoupling's cRT), with a
  # fresh classifier unless reinit_classifier=False. configs/crt.py sets it
  # up for any benchmark config.
  config.finetune_from = ''
  config.trainable = 'all'  # all or classifier
  config.reinit_classifier = True

  # --- Run ------------------------------------------------------------------
  config.seed = 0
  # K runs in one program, seeds seed .. seed + K - 1 (nbn_jax.training.runs):
  # outputs in workdir/run_<k>/ and a summary over runs. run_shards: devices
  # the runs are split over (0: chosen); run_axis: vmap (one batched
  # program), unroll (a loop inside it: XLA:CPU's grouped convolutions are
  # slow) or auto (unroll on CPU, vmap on accelerators).
  config.num_runs = 1
  config.run_shards = 0
  config.run_axis = 'auto'
  # GPU runs bitwise reproducible (XLA's deterministic ops; slower).
  config.deterministic = False
  config.log_every_steps = 50
  # On-device path: steps per jitted call on accelerators (1 on CPU, where
  # XLA runs loops of convolutions slowly).
  config.steps_per_dispatch = 25
  config.eval_every_epochs = 10.0
  config.eval_batch_size = 512
  config.checkpoint_every_epochs = 10.0
  config.keep_checkpoints = 2
  # Evaluate the workdir's latest checkpoint; list-file datasets need only
  # test_list then (train_list, if given, gives Many/Medium/Few).
  config.eval_only = False
  return config
