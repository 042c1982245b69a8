"""The run plan: every config field reaches the code that acts on it."""

import dataclasses
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import input_pipeline as ip
from configs import cifar10_lt, cifar100_lt, default, imagenet_lt, inat2018
from configs import places_lt, quickstart
from nbn_jax import models
from nbn_jax.training import checks, losses, optim, plan, steps
from nbn_jax.training.errors import ConfigError
from tests.nbn_jax.training.builders import (
    random_batches,
    tiny_config,
    tiny_step_plan,
)

# --- Models and NBN placement ---------------------------------------------------

LAYER4 = (
    'layer4_0/bn3',
    'layer4_0/downsample_bn',
    'layer4_1/bn3',
    'layer4_2/bn3',
)
RESNET32_LAST_STAGE = tuple(f'layer3_{b}/bn2' for b in range(5))


def _sites(config, image_shape):
  core = tiny_step_plan(config, image_shape=image_shape)
  return core.model, core.nbn.paths


@pytest.mark.parametrize('model_name', ['ResNet50', 'ResNeXt50'])
def test_imagenet_models_get_the_reference_layer4_placement_from_a_cifar_config(
    model_name,
):
  config = cifar10_lt.get_config()
  config.model = model_name
  model, sites = _sites(config, (32, 32, 3))
  assert sites == LAYER4
  assert model.nbn_placement == models.LAYER4_NBN


def test_resnet32_gets_its_own_placement_from_an_imagenet_config():
  config = imagenet_lt.get_config()
  config.model = 'ResNet32'
  _, sites = _sites(config, (32, 32, 3))
  assert sites == RESNET32_LAST_STAGE  # option A: no shortcut BN


def test_placement_fields_override_the_models_own_one_by_one():
  config = imagenet_lt.get_config()
  config.nbn_block_norms = ('bn2',)
  model, sites = _sites(config, (32, 32, 3))
  assert model.nbn_placement.stages == (3,)  # still the model's
  assert sites == tuple(s.replace('bn3', 'bn2') for s in LAYER4)
  config.nbn_shortcut = False
  assert _sites(config, (32, 32, 3))[1] == (
      'layer4_0/bn2',
      'layer4_1/bn2',
      'layer4_2/bn2',
  )


def test_a_bn_model_reports_the_same_sites_as_plain_bns():
  config = cifar10_lt.get_config()
  config.norm = 'bn'
  model, sites = _sites(config, (32, 32, 3))
  assert sites == RESNET32_LAST_STAGE
  assert plan.nbn_sites(model, (32, 32, 3)).alphas == dict.fromkeys(sites)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  )
  assert 'nbn_alpha' not in variables['params']


def test_a_placement_the_model_lacks_is_a_config_error():
  config = cifar10_lt.get_config()
  config.nbn_stages = (3,)
  with pytest.raises(ConfigError, match=r'config.nbn_\*: .*stages \[3\]'):
    _sites(config, (32, 32, 3))


def test_the_model_follows_norm_and_bn_scope():
  config = default.get_config()
  config.bn_scope, config.bn_group_size = 'group', 2
  model, _ = _sites(config, (32, 32, 3))
  assert model.bn_axis_name == 'bn_group'
  config.norm, config.bn_scope = 'bn', 'device'
  model, _ = _sites(config, (32, 32, 3))
  assert (model.norm, model.bn_axis_name) == ('bn', None)


# ResNet-101 and ResNet-152 are ResNet-50 with more blocks (their layout:
# tests/nbn_jax/models/test_resnet.py) and take 30 to 40 s each here: they
# build for the config that uses them, Places-LT's.
DEEP_RESNETS = ('ResNet101', 'ResNet152')


@pytest.mark.slow
@pytest.mark.parametrize(
    'config_module, model_name',
    [
        *itertools.product(
            (cifar10_lt, cifar100_lt, imagenet_lt, inat2018, quickstart),
            [name for name in models.MODELS if name not in DEEP_RESNETS],
        ),
        *itertools.product((places_lt,), DEEP_RESNETS),
    ],
)
def test_every_model_builds_for_every_dataset_config(config_module, model_name):
  config = config_module.get_config()
  config.model = model_name
  checks.check_config(config, device_count=8, process_count=1)
  shape = (32, 32, 3) if config.dataset != 'digits' else (8, 8, 3)
  core = tiny_step_plan(config, image_shape=shape)
  sites = core.nbn.paths
  assert sites and len(sites) == len(set(sites))
  variables = jax.eval_shape(
      lambda: core.model.init(
          jax.random.key(0), jnp.zeros((1, *shape)), train=False
      )
  )
  # The model's own placement reads at least one alpha.
  assert core.nbn.alpha_paths
  for path in core.nbn.alpha_paths:
    leaf = variables['params']
    for name in path.split('/'):
      leaf = leaf[name]
    assert leaf.shape == ()


def test_a_ride_ensemble_gets_one_alpha_per_expert_from_the_config():
  config = tiny_config(model='RIDEResNet8')
  core = tiny_step_plan(config)
  assert core.nbn.alpha_paths == tuple(
      f'expert_{e}/nbn_alpha' for e in range(3)
  )
  assert core.nbn.paths == tuple(
      f'expert_{e}/layer3_0/bn{i}' for e in range(3) for i in (1, 2)
  )
  assert (core.model.num_experts, core.model.classifier) == (3, 'cosine')


def test_the_ensemble_and_head_fields_reach_the_model_when_set():
  config = tiny_config(
      model='RIDEResNet8',
      num_experts=2,
      reduce_dimension=True,
      classifier='linear',
      cosine_scale=16.0,
  )
  model = plan.build_model(config, 10)
  assert (
      model.num_experts,
      model.reduce_dimension,
      model.classifier,
      model.cosine_scale,
  ) == (2, True, 'linear', 16.0)
  plain = plan.build_model(tiny_config(classifier='cosine'), 10)
  assert (plain.classifier, plain.cosine_scale) == ('cosine', 30.0)


def test_the_configs_cosine_scale_scales_every_experts_cosines():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)))

  def expert_logits(cosine_scale):
    config = tiny_config(model='RIDEResNet8', cosine_scale=cosine_scale)
    model = plan.build_model(config, 10)
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, train=False)['expert_logits']

  cosines = expert_logits(1.0)
  assert float(jnp.abs(cosines).max()) <= 1.0 + 1e-6
  np.testing.assert_allclose(
      expert_logits(16.0), 16 * cosines, rtol=1e-5, atol=1e-5
  )


def test_a_config_recorded_before_the_ensemble_fields_still_builds():
  """trained.load of an older workdir: its config.json lacks them."""
  config = tiny_config().to_dict()
  for field in checks.MODEL_OPTIONS:
    del config[field]
  model = plan.build_model(ml_collections.ConfigDict(config), 10)
  assert model.classifier == 'linear'


@pytest.mark.parametrize('decay_alpha', [True, False])
def test_expert_alphas_are_decayed_unless_decay_alpha_is_off(decay_alpha):
  core = tiny_step_plan(
      tiny_config(model='RIDEResNet8', decay_alpha=decay_alpha)
  )
  params = {f'expert_{e}': {'nbn_alpha': jnp.float32(1.5)} for e in range(3)}
  params['w'] = jnp.float32(1.5)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = core.tx.update(zeros, core.tx.init(params), params)
  assert float(updates['w']) != 0.0  # decay alone moves a parameter
  for e in range(3):
    assert (float(updates[f'expert_{e}']['nbn_alpha']) != 0.0) == decay_alpha


# --- The optimiser and schedule ---------------------------------------------


@pytest.mark.parametrize(
    'nesterov, decay_alpha', list(itertools.product((False, True), repeat=2))
)
def test_the_plans_optimiser_carries_nesterov_and_decay_alpha(
    nesterov, decay_alpha
):
  config = tiny_config(
      nesterov=nesterov,
      decay_alpha=decay_alpha,
      momentum=0.8,
      weight_decay=0.05,
      learning_rate=0.3,
  )
  core = tiny_step_plan(config)
  params = {'nbn_alpha': jnp.float32(1.5), 'w': jnp.array([1.0, -2.0])}
  grads = {'nbn_alpha': jnp.float32(0.5), 'w': jnp.array([0.25, 0.5])}
  exempt = () if decay_alpha else [('nbn_alpha',)]  # ResNet-8's one alpha
  expected_tx = optim.sgd(
      core.learning_rate, 0.05, 0.8, nesterov=nesterov, exempt=exempt
  )
  results = []
  for tx in (core.tx, expected_tx):
    opt_state, p = tx.init(params), params
    for _ in range(2):  # the second step shows momentum and Nesterov
      updates, opt_state = tx.update(grads, opt_state, p)
      p = optax.apply_updates(p, updates)
    results.append(p)
  jax.tree.map(np.testing.assert_allclose, *results)
  # And the settings matter: the other choice gives another update.
  other = optim.sgd(core.learning_rate, 0.05, 0.8, not nesterov, exempt)
  updates, _ = other.update(grads, other.init(params), params)
  updates_plan, _ = core.tx.update(grads, core.tx.init(params), params)
  assert not np.allclose(updates['w'], updates_plan['w'])


def test_the_backbone_steps_at_backbone_lr_factor_times_the_rate():
  """As two parameter groups of one torch.optim.SGD: the classifier at the
  rate, everything else (NBN's alpha included) at 0.01 times it."""
  import torch  # pylint: disable=g-import-not-at-top

  config = tiny_config(
      backbone_lr_factor=0.01,
      momentum=0.8,
      weight_decay=0.05,
      learning_rate=0.3,
      schedule='cosine',
      lr_decay_epochs=(),
  )
  tx = tiny_step_plan(config).tx
  rng = np.random.default_rng(0)
  params = {
      'fc': {'kernel': rng.normal(size=(3, 2)), 'bias': rng.normal(size=2)},
      'layer1_0': {'conv1': {'kernel': rng.normal(size=(3, 3))}},
      'nbn_alpha': np.float32(1.5),
  }
  params = jax.tree.map(lambda p: np.asarray(p, np.float32), params)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params)] * 3
  grads = [jax.tree.map(lambda g: np.asarray(g, np.float32), g) for g in grads]
  ours, state = params, tx.init(params)
  for step_grads in grads:
    updates, state = tx.update(step_grads, state, ours)
    ours = optax.apply_updates(ours, updates)

  flat = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
  tensors = {
      jax.tree_util.keystr(k): torch.tensor(np.array(v), requires_grad=True)
      for k, v in flat(params)
  }
  head = [t for name, t in tensors.items() if "'fc'" in name]
  body = [t for name, t in tensors.items() if "'fc'" not in name]
  rates = tiny_step_plan(config).learning_rate
  sgd = torch.optim.SGD(
      [{'params': head, 'lr': 1.0}, {'params': body, 'lr': 0.01}],
      lr=1.0,
      momentum=0.8,
      weight_decay=0.05,
  )
  for step, step_grads in enumerate(grads):
    rate = float(rates(step))
    sgd.param_groups[0]['lr'], sgd.param_groups[1]['lr'] = rate, 0.01 * rate
    for (name, _), g in zip(flat(params), jax.tree.leaves(step_grads)):
      tensors[jax.tree_util.keystr(name)].grad = torch.from_numpy(np.array(g))
    sgd.step()
  for name, leaf in flat(ours):
    np.testing.assert_allclose(
        leaf, tensors[jax.tree_util.keystr(name)].detach().numpy(), rtol=1e-5
    )


def test_classifier_training_moves_only_the_heads_and_the_alphas():
  """cRT's optimiser (trainable='classifier'): gradients and weight decay
  reach every expert's fc and alpha; the rest stays exactly as it was."""
  config = tiny_config(
      model='RIDEResNet8',
      trainable='classifier',
      finetune_from='/first/stage',
      weight_decay=0.1,
      momentum=0.0,
  )
  core = tiny_step_plan(config)
  shapes = jax.eval_shape(
      lambda: core.model.init(
          jax.random.key(0), jnp.zeros((1, *core.image_shape)), train=False
      )
  )['params']
  params = jax.tree.map(lambda s: jnp.full(s.shape, 1.5, s.dtype), shapes)
  rate = float(core.learning_rate(0))
  heads_and_alphas = {
      f"['expert_{e}']{leaf}"
      for e in range(3)
      for leaf in ("['fc']['kernel']", "['nbn_alpha']")
  }
  for gradient in (0.0, 1.0):  # weight decay alone, then with a gradient
    grads = jax.tree.map(lambda p: jnp.full_like(p, gradient), params)
    updates, _ = core.tx.update(grads, core.tx.init(params), params)
    new = jax.tree_util.tree_flatten_with_path(
        optax.apply_updates(params, updates)
    )[0]
    assert heads_and_alphas < {jax.tree_util.keystr(p) for p, _ in new}
    for path, value in new:
      name = jax.tree_util.keystr(path)
      expected = (
          1.5 - rate * (gradient + 0.1 * 1.5)
          if name in heads_and_alphas
          else 1.5
      )
      np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=name)


def test_the_schedule_follows_the_config():
  config = tiny_config(
      learning_rate=0.2,
      batch_size=32,
      lr_batch_size=16,
      warmup_epochs=1.0,
      lr_decay_epochs=(2.0,),
      lr_decay_factor=0.5,
      num_epochs=3.0,
  )
  core = tiny_step_plan(config)  # 100 images, batch 32: 3.125 steps/epoch
  assert core.length.steps_per_epoch == pytest.approx(100 / 32)
  assert core.length.total_steps == 10
  assert float(core.learning_rate(0)) == pytest.approx(0.4 / 3)
  assert float(core.learning_rate(4)) == pytest.approx(0.4)
  assert float(core.learning_rate(7)) == pytest.approx(0.2)


# --- The loss -------------------------------------------------------------


def test_the_losses_constants_are_config_fields():
  values = dict(
      logit_adjust_tau=2.0,
      ldam_max_m=0.3,
      ldam_scale=16.0,
      drw_epoch=1.0,
      drw_beta=0.999,
      ride_diversity_factor=-0.45,
      ride_diversity_temperature=1.5,
      ride_reweight_factor=0.02,
  )
  given = dataclasses.asdict(losses.LossSettings(**values))
  # Each loss gets the fields its spec names: RIDE's all but the prior
  # adjustment's strength, logit-adjusted cross-entropy that one.
  assert plan.loss_settings(tiny_config(loss='ride', **values)) == {
      field: given[field] for field in given if field != 'logit_adjust_tau'
  }
  assert plan.loss_settings(tiny_config(loss='logit_adjusted', **values)) == {
      'logit_adjust_tau': 2.0
  }
  # The defaults of the config and of the losses are the same (RIDE's).
  defaults = dataclasses.asdict(losses.LossSettings())
  for name, spec in losses.LOSSES.items():
    assert plan.loss_settings(tiny_config(loss=name)) == {
        field: defaults[field] for field in spec.setting_names
    }


def _ldam_drw_loss_by_step(**overrides):
  """step -> the plan's mean LDAM-DRW loss on fixed logits, drw_epoch 1.

  100 images, batch 16: epoch 1 starts at step round(6.25) = 6.
  """
  counts = np.array([40, 20, 10, 10, 5, 5, 4, 3, 2, 1])
  config = tiny_config(loss='ldam_drw', drw_epoch=1.0, **overrides)
  core = tiny_step_plan(config, train_counts=counts)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(16, 10)))
  labels = jnp.arange(16) % 10
  return lambda step: float(
      core.step_config.loss_fn(
          logits, labels, steps.progress(core.step_config, jnp.int32(step))
      ).mean()
  )


def test_the_plans_loss_reweights_from_the_schedules_epoch_start():
  value = _ldam_drw_loss_by_step()
  assert value(0) == value(5) != value(6)


@pytest.mark.parametrize(
    'loss, switch',
    [
        (
            'ldam_drw',
            plan.LossSwitch(
                # The quickstart's 503 digits, batch 64: epoch 2 at step 16.
                17,
                'loss ldam_drw switches to its re-weighting from this step '
                'on (config.drw_epoch=2.0)',
            ),
        ),
        ('cross_entropy', None),
    ],
)
def test_the_plan_names_its_loss_and_where_it_switches(loss, switch):
  config = quickstart.get_config()
  config.update(loss=loss, drw_epoch=2.0)
  built = plan.build_plan(config)
  assert built.label == f'ResNet8 NBN, loss {loss}, on digits-lt:train'
  assert built.loss_switch == switch


@pytest.mark.parametrize('drw_beta, reweights', [(0.0, False), (0.9999, True)])
def test_drw_beta_0_is_no_reweighting(drw_beta, reweights):
  """Beta 0 weighs every class 1: from drw_epoch on the loss is LDAM's."""
  value = _ldam_drw_loss_by_step(drw_beta=drw_beta)
  assert (value(6) != value(0)) == reweights


def test_a_reweight_factor_the_class_counts_refuse_is_a_config_error():
  config = tiny_config(loss='ride', ride_reweight_factor=2.0)
  core = tiny_step_plan()
  with pytest.raises(
      ConfigError, match='config.ride_reweight_factor=2.0 makes the diversity'
  ):
    plan.build_step_config(
        config,
        core.model,
        core.topology,
        ip.DATASETS['cifar10'],
        np.array([90, 2, 2, 2, 1, 1, 1, 1, 1, 1]),
        core.length,
    )


# --- Group statistics, end to end -------------------------------------------


@pytest.mark.slow
def test_group_scope_statistics_are_each_groups_own():
  """8 devices in groups of 2: BN normalises with each group's mean and
  variance; the running statistics average the four groups' statistics."""
  config = tiny_config(bn_scope='group', bn_group_size=2, norm='bn')
  core = tiny_step_plan(config)
  state = core.runs.init_state()
  images, labels = random_batches(1)[0]
  # The stem's output, by hand: conv1 on the normalised batch.
  inputs = core.step_config.prepare(jnp.asarray(images))
  conv = nn.Conv(
      16, (3, 3), padding=1, use_bias=False, dtype=jnp.float32
  ).apply({'params': state.params['conv1']}, inputs)
  groups = np.asarray(conv).reshape(4, 4, -1, conv.shape[-1])  # 4 groups of 4
  group_mean = groups.mean(axis=(1, 2))
  group_var = groups.var(axis=(1, 2))
  momentum = core.model.bn_momentum
  sharding = core.topology.batch_sharding
  new_state, _ = steps.make_train_step(core.step_config)(
      state, jax.device_put(images, sharding), jax.device_put(labels, sharding)
  )
  stats = jax.device_get(new_state.batch_stats['bn1'])
  np.testing.assert_allclose(
      stats['mean'], (1 - momentum) * group_mean.mean(0), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
      stats['var'],
      momentum + (1 - momentum) * group_var.mean(0),
      rtol=1e-4,
      atol=1e-6,
  )
  # Not the global statistics: the groups' variances average to less.
  global_var = np.asarray(conv).reshape(-1, conv.shape[-1]).var(0)
  assert np.abs(group_var.mean(0) - global_var).max() > 1e-3


def test_deterministic_asks_xla_for_deterministic_gpu_ops():
  config = default.get_config()
  assert plan.xla_flags(config) == ''
  config.deterministic = True
  assert '--xla_gpu_deterministic_ops=true' in plan.xla_flags(config)


def test_epoch_warmup_is_ldams_staircase():
  config = tiny_config(
      warmup_granularity='epoch', warmup_epochs=2.0, num_epochs=4.0
  )
  core = tiny_step_plan(config)  # 100 images, batch 16: 6.25 steps/epoch
  rates = [float(core.learning_rate(s)) for s in range(14)]
  assert rates[:6] == pytest.approx([0.05] * 6)  # epoch 0: lr * 1 / 2
  assert rates[6:12] == pytest.approx([0.1] * 6)  # epoch 1 starts at 6


def test_k_runs_get_a_runs_axis_and_stacked_states():
  config = tiny_config(num_runs=4)
  core = tiny_step_plan(config)
  assert tiny_step_plan().topology.mesh.axis_names == ('data',)
  assert core.topology.mesh.axis_names == ('runs', 'data')
  assert core.topology.run_shards == 4
  state = core.runs.init_state()
  assert state.step.shape == (4,)
  assert state.params['nbn_alpha'].shape == (4,)
