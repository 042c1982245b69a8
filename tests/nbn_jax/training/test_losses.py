"""The losses: cross-entropy, the prior-adjusted ones, LDAM-DRW and RIDE's.

LDAM-DRW, RIDE's loss and the reference's balanced-softmax RIDE loss are
compared with PyTorch versions written from the facts
(`tests/torch_losses.py`): values and gradients, in float64 (relative
difference within 1e-12) and float32 (within 1e-5). The class constants
are checked against values worked out by hand, and the re-weighting epoch
through `losses.Progress`, the learning-rate schedule and the real train
step.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from nbn_jax import models
from nbn_jax.training import losses, optim, steps
from tests import torch_losses
from tests.nbn_jax.training.builders import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    random_batches,
    tiny_config,
    tiny_step_plan,
)

LOGITS = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
LABELS = jnp.array([0, 2])
COUNTS = np.array([80, 15, 5])
AT_START = losses.Progress(step=jnp.int32(0), epoch=jnp.float32(0))
# CIFAR-10-LT at imbalance factor 100 (the LDAM protocol's class counts).
CIFAR10_LT = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
NUM_EXPERTS = 3
SETTINGS = losses.LossSettings(drw_epoch=3.0)
STEPS_PER_EPOCH = 2.4  # epoch 3 starts at step round(7.2) = 7
REWEIGHT_STEP = 7


def _progress(step):
  return losses.Progress(
      step=jnp.int32(step), epoch=jnp.float32(step / STEPS_PER_EPOCH)
  )


def _ce(logits, labels):
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -log_p[np.arange(len(labels)), labels]


def _relative(ours, oracle):
  """max |ours - oracle| / max |oracle|."""
  ours, oracle = np.asarray(ours, np.float64), np.asarray(oracle, np.float64)
  return float(np.abs(ours - oracle).max() / np.abs(oracle).max())


def _ensemble_outputs(expert_logits):
  return {'logits': expert_logits.mean(0), 'expert_logits': expert_logits}


# --- Cross-entropy and the prior-adjusted losses ------------------------------


def test_cross_entropy_by_hand():
  loss = losses.make_loss('cross_entropy', COUNTS)(LOGITS, LABELS, AT_START)
  np.testing.assert_allclose(
      loss, _ce(np.asarray(LOGITS), np.asarray(LABELS)), rtol=1e-6
  )


@pytest.mark.parametrize(
    'name, tau, effective_tau',
    [
        ('balanced_softmax', 2.5, 1.0),  # balanced softmax ignores tau
        ('logit_adjusted', 2.5, 2.5),
    ],
)
def test_adjusted_losses_add_tau_log_prior(name, tau, effective_tau):
  settings = losses.LossSettings(logit_adjust_tau=tau)
  loss = losses.make_loss(name, COUNTS, settings)(LOGITS, LABELS, AT_START)
  adjusted = np.asarray(LOGITS) + effective_tau * np.log(COUNTS / COUNTS.sum())
  np.testing.assert_allclose(
      loss, _ce(adjusted, np.asarray(LABELS)), rtol=1e-5, atol=1e-6
  )
  # The tail class's loss grows: the model must push its logit harder.
  plain = losses.make_loss('cross_entropy', COUNTS)(LOGITS, LABELS, AT_START)
  assert loss[1] > plain[1]


ENSEMBLE_LOSSES = [
    name
    for name, spec in losses.LOSSES.items()
    if models.EXPERT_LOGITS in spec.reads
]
REWEIGHTING_LOSSES = [
    name for name, spec in losses.LOSSES.items() if spec.switch_epoch
]


def test_the_ride_losses_read_the_experts_and_switch_where_drw_does():
  assert ENSEMBLE_LOSSES == ['ride', 'ride_balanced_softmax']
  assert REWEIGHTING_LOSSES == ['ldam_drw', 'ride']
  assert {losses.LOSSES[n].switch_epoch for n in REWEIGHTING_LOSSES} == {
      'drw_epoch'
  }


@pytest.mark.parametrize(
    'name', [n for n in losses.LOSSES if n not in ENSEMBLE_LOSSES]
)
def test_a_loss_reads_the_logits_among_other_heads(name):
  loss = losses.make_loss(name, COUNTS, SETTINGS, STEPS_PER_EPOCH)
  heads = {'logits': LOGITS, 'other_head': jnp.zeros((2, 7))}
  np.testing.assert_array_equal(
      loss(heads, LABELS, AT_START), loss(LOGITS, LABELS, AT_START)
  )


def test_an_unknown_loss_names_the_choices():
  with pytest.raises(ValueError, match="loss='focal' is not one of"):
    losses.make_loss('focal', COUNTS)


def test_the_defaults_are_those_of_the_losses_sources():
  # RIDE's RIDELoss: max_m 0.5, s 30, beta 0.9999, diversity factor -0.2 at
  # base temperature 1, reweight factor 0.05; LDAM-DRW's (and RIDE's CIFAR)
  # re-weighting epoch 160.
  assert losses.LossSettings() == losses.LossSettings(
      logit_adjust_tau=1.0,
      ldam_max_m=0.5,
      ldam_scale=30.0,
      drw_epoch=160.0,
      drw_beta=0.9999,
      ride_diversity_factor=-0.2,
      ride_diversity_temperature=1.0,
      ride_reweight_factor=0.05,
  )


# --- The class constants, by hand ---------------------------------------------


def test_ldam_margins_fall_as_the_fourth_root_of_the_count():
  # 100, 16, 1 images: n^(-1/4) = 1/sqrt(10), 1/2, 1; the largest is max_m.
  np.testing.assert_allclose(
      losses.ldam_margins([100, 16, 1], max_m=0.5),
      [0.5 / np.sqrt(10), 0.25, 0.5],
      rtol=1e-15,
  )


def test_class_balanced_weights_by_hand():
  # beta 1/2 and 1, 2, 3 images: (1/2) / (1/2, 3/4, 7/8) = 1, 2/3, 4/7,
  # which sum to 47/21; times 3 / (47/21): 63/47, 42/47, 36/47.
  np.testing.assert_allclose(
      losses.class_balanced_weights([1, 2, 3], beta=0.5),
      np.array([63, 42, 36]) / 47,
      rtol=1e-15,
  )
  # beta 0 (LDAM-DRW before re-weighting) weighs every class 1.
  np.testing.assert_array_equal(
      losses.class_balanced_weights(CIFAR10_LT, beta=0.0), np.ones(10)
  )
  # beta 0.9999 on CIFAR-10-LT: the weights are inverse effective numbers
  # (3935 images for the head's 5000, 49.9 for the tail's 50).
  weights = losses.class_balanced_weights(CIFAR10_LT, beta=0.9999)
  assert weights.sum() == pytest.approx(10)
  assert weights[-1] / weights[0] == pytest.approx(
      (1 - 0.9999**5000) / (1 - 0.9999**50), rel=1e-12
  )


def test_ride_diversity_temperatures_by_hand():
  # Priors 0.6, 0.3, 0.1, C = 3, r = 0.05: 3 p r + 0.95 = 1.04, 0.995,
  # 0.965, divided by 1.04. Their mean is 1 / 1.04 (the C p r sum to r).
  temperatures = losses.ride_diversity_temperatures([60, 30, 10], 0.05)
  np.testing.assert_allclose(
      temperatures, np.array([1.04, 0.995, 0.965]) / 1.04, rtol=1e-15
  )
  assert temperatures.mean() == pytest.approx(1 / 1.04, rel=1e-15)
  # r = 0: one temperature for all classes.
  np.testing.assert_array_equal(
      losses.ride_diversity_temperatures([60, 30, 10], 0.0), np.ones(3)
  )


def test_a_reweight_factor_that_makes_a_temperature_non_positive_is_refused():
  # r = 2 with priors 0.9, 0.1: 2 * 0.1 * 2 + 1 - 2 = -0.6 for class 1.
  with pytest.raises(ValueError, match='temperature of class 1 not positive'):
    losses.ride_diversity_temperatures([90, 10], 2.0)


def test_weighted_mean_terms_average_to_pytorchs_weighted_mean():
  # Losses 1, 2, 3 weighted 1, 1, 2: (1 + 2 + 6) / 4 = 2.25.
  terms = losses.weighted_mean(
      jnp.array([1.0, 2.0, 3.0]), jnp.array([1, 1, 2.0])
  )
  assert float(terms.mean()) == pytest.approx(2.25)


def test_ldam_lowers_the_target_logit_by_s_times_its_margin():
  # Classes of 16 and 1 images: margins 0.25 and 0.5; s = 30 lowers the
  # label-1 logit by 15: the loss is -log(e^-15 / (1 + e^-15)).
  loss = losses.ldam_cross_entropy(
      jnp.zeros((1, 2)), jnp.array([1]), losses.ldam_margins([16, 1], 0.5), 30
  )
  np.testing.assert_allclose(loss, [15 + np.log1p(np.exp(-15))], rtol=1e-6)


def test_the_diversity_term_by_hand():
  # Mean logits (log 3, 0): p = (3/4, 1/4); an expert at (0, 0): q = (1/2,
  # 1/2). KL(p || q) = 3/4 log(3/2) + 1/4 log(1/2).
  kl = losses.diversity_kl(
      jnp.zeros((1, 2)), jnp.array([[np.log(3.0), 0.0]]), jnp.float32(1)
  )
  np.testing.assert_allclose(
      kl, [0.75 * np.log(1.5) + 0.25 * np.log(0.5)], rtol=1e-6
  )
  # Doubling T halves the logits: the mean's (log 3)/2 gives p = (a, 1 - a)
  # with a = sqrt(3) / (sqrt(3) + 1).
  a = np.sqrt(3) / (np.sqrt(3) + 1)
  kl = losses.diversity_kl(
      jnp.zeros((1, 2)), jnp.array([[np.log(3.0), 0.0]]), jnp.float32(2)
  )
  expected = a * np.log(2 * a) + (1 - a) * np.log(2 * (1 - a))
  np.testing.assert_allclose(kl, [expected], rtol=1e-6)
  # Into the loss: factor -0.2 times T^2 = 1, summed over two experts.
  settings = losses.LossSettings(ride_diversity_factor=-0.2)
  experts = jnp.array([[[0.0, 0.0]], [[2 * np.log(3.0), 0.0]]])
  loss = losses.make_loss('ride_balanced_softmax', [1, 1], settings)(
      _ensemble_outputs(experts), jnp.array([0]), AT_START
  )
  q2 = np.array([0.9, 0.1])  # softmax(2 log 3, 0)
  kl2 = 0.75 * np.log(0.75 / 0.9) + 0.25 * np.log(0.25 / 0.1)
  balanced = -np.log(0.5) - np.log(q2[0])  # equal counts: plain CE
  np.testing.assert_allclose(
      loss,
      [balanced - 0.2 * (0.75 * np.log(1.5) + 0.25 * np.log(0.5) + kl2)],
      rtol=1e-6,
  )


def test_the_ensembles_distribution_is_a_constant_of_the_diversity_term():
  # No gradient reaches the mean logits (RIDE's no_grad). When they are the
  # experts' own mean, the gradient through them summed over the experts
  # cancels exactly anyway (sum_e log q_e = E log p + a constant), so only
  # other logits in their place show it; the PyTorch comparison cannot.
  expert_logits, _ = _random_ensemble(np.float32)
  other_logits, _ = _random_ensemble(np.float32, seed=1)
  grad = jax.grad(
      lambda mean: losses.diversity_kl(
          jnp.asarray(expert_logits), mean, jnp.float32(2)
      ).sum()
  )(jnp.asarray(other_logits[0]))
  np.testing.assert_array_equal(grad, 0)


# --- Against PyTorch ----------------------------------------------------------


def _random_ensemble(dtype, seed=0, batch=32):
  """(E, B, C) logits of cosine classifiers times 30, and (B,) labels."""
  rng = np.random.default_rng(seed)
  cosines = np.tanh(rng.normal(size=(NUM_EXPERTS, batch, 10)))
  labels = rng.choice(10, batch, p=CIFAR10_LT / CIFAR10_LT.sum())
  labels[:10] = np.arange(10)  # every class present
  return (30 * cosines).astype(dtype), labels.astype(np.int32)


def _ours(name, expert_logits, labels, step, settings=SETTINGS):
  """Our batch loss and its gradient with respect to the experts' logits."""
  loss_fn = losses.make_loss(name, CIFAR10_LT, settings, STEPS_PER_EPOCH)

  def batch_loss(experts):
    return loss_fn(_ensemble_outputs(experts), labels, _progress(step)).mean()

  value, grad = jax.value_and_grad(batch_loss)(jnp.asarray(expert_logits))
  return float(value), np.asarray(grad)


def _oracle(fn, expert_logits, labels, **kwargs):
  experts = torch.tensor(expert_logits, requires_grad=True)
  value = fn(
      experts, torch.tensor(labels, dtype=torch.long), CIFAR10_LT, **kwargs
  )
  value.backward()
  return float(value.detach()), experts.grad.numpy()


DTYPES = [(np.float64, 1e-12), (np.float32, 1e-5)]


@pytest.mark.parametrize('dtype, tolerance', DTYPES)
@pytest.mark.parametrize('step', [REWEIGHT_STEP - 1, REWEIGHT_STEP])
@pytest.mark.parametrize('diversity_factor', [-0.45, 0.0])
def test_ride_loss_equals_pytorch(dtype, tolerance, step, diversity_factor):
  settings = dataclasses.replace(
      SETTINGS,
      ride_diversity_factor=diversity_factor,
      ride_diversity_temperature=1.5,
  )
  expert_logits, labels = _random_ensemble(dtype)
  with jax.enable_x64(dtype == np.float64):
    value, grad = _ours('ride', expert_logits, labels, step, settings)
  oracle_value, oracle_grad = _oracle(
      torch_losses.ride_loss,
      expert_logits,
      labels,
      reweighted=step >= REWEIGHT_STEP,
      diversity_factor=diversity_factor,
      base_temperature=1.5,
  )
  assert _relative(value, oracle_value) < tolerance
  assert _relative(grad, oracle_grad) < tolerance


@pytest.mark.parametrize('dtype, tolerance', DTYPES)
@pytest.mark.parametrize('step', [REWEIGHT_STEP - 1, REWEIGHT_STEP])
def test_ldam_drw_equals_pytorch_on_cosines_times_s(dtype, tolerance, step):
  expert_logits, labels = _random_ensemble(dtype)
  cosines = expert_logits[0] / 30  # the model's logits are s * cos
  with jax.enable_x64(dtype == np.float64):
    loss_fn = losses.make_loss(
        'ldam_drw', CIFAR10_LT, SETTINGS, STEPS_PER_EPOCH
    )
    value, grad = jax.value_and_grad(
        lambda c: loss_fn(30 * c, labels, _progress(step)).mean()
    )(jnp.asarray(cosines))
  torch_cosines = torch.tensor(cosines, requires_grad=True)
  oracle = torch_losses.ldam_drw_loss(
      torch_cosines,
      torch.tensor(labels, dtype=torch.long),
      CIFAR10_LT,
      reweighted=step >= REWEIGHT_STEP,
  )
  oracle.backward()
  assert _relative(value, float(oracle.detach())) < tolerance
  assert _relative(grad, torch_cosines.grad.numpy()) < tolerance


@pytest.mark.parametrize('dtype, tolerance', DTYPES)
def test_ride_balanced_softmax_equals_pytorch(dtype, tolerance):
  settings = dataclasses.replace(SETTINGS, ride_diversity_temperature=2.0)
  expert_logits, labels = _random_ensemble(dtype)
  with jax.enable_x64(dtype == np.float64):
    value, grad = _ours(
        'ride_balanced_softmax', expert_logits, labels, 0, settings
    )
  oracle_value, oracle_grad = _oracle(
      torch_losses.ride_balanced_softmax_loss,
      expert_logits,
      labels,
      base_temperature=2.0,
  )
  assert _relative(value, oracle_value) < tolerance
  assert _relative(grad, oracle_grad) < tolerance


# --- The re-weighting epoch ---------------------------------------------------


@pytest.mark.parametrize('name', REWEIGHTING_LOSSES)
def test_the_value_changes_at_the_reweighting_epoch_and_not_before(name):
  expert_logits, labels = _random_ensemble(np.float32)
  loss_fn = losses.make_loss(name, CIFAR10_LT, SETTINGS, STEPS_PER_EPOCH)
  outputs = _ensemble_outputs(jnp.asarray(expert_logits))
  value = lambda step: float(loss_fn(outputs, labels, _progress(step)).mean())
  before = [value(step) for step in range(REWEIGHT_STEP)]
  assert before == [before[0]] * REWEIGHT_STEP
  after = [value(step) for step in (REWEIGHT_STEP, REWEIGHT_STEP + 5)]
  assert after[0] == after[1]
  assert abs(after[0] - before[0]) > 1e-3 * abs(before[0])


def test_reweighting_starts_at_the_step_the_schedule_starts_the_epoch():
  # Epoch 3 at 2.4 steps per epoch: step 7.2 rounds to 7, where a decay at
  # epoch 3 takes effect too (an epoch-count switch would wait for step 8).
  schedule = optim.learning_rate_schedule(
      'step', 1.0, STEPS_PER_EPOCH, 20, lr_decay_epochs=(3.0,)
  )
  first_decayed = next(s for s in range(20) if float(schedule(s)) < 1.0)
  assert first_decayed == REWEIGHT_STEP
  assert optim.epoch_start(3.0, STEPS_PER_EPOCH) == REWEIGHT_STEP


def test_a_reweighting_loss_needs_the_steps_per_epoch():
  with pytest.raises(ValueError, match='give steps_per_epoch'):
    losses.make_loss('ldam_drw', CIFAR10_LT)


@pytest.mark.parametrize('name', ENSEMBLE_LOSSES)
def test_an_ensemble_loss_on_plain_logits_says_it_needs_an_ensemble(name):
  loss_fn = losses.make_loss(name, COUNTS, SETTINGS, STEPS_PER_EPOCH)
  with pytest.raises(ValueError, match='needs the per-expert logits'):
    loss_fn(LOGITS, LABELS, AT_START)


def test_the_deferred_switch_starts_where_the_schedule_starts_the_epoch():
  switch = losses.EpochSwitch.at_epoch(3.0, STEPS_PER_EPOCH)
  assert switch.step == REWEIGHT_STEP
  before, after = jnp.array([1.0, 1.0]), jnp.array([2.0, 0.5])
  for step in (0, REWEIGHT_STEP - 1):
    assert not switch.reached(_progress(step))
    np.testing.assert_array_equal(
        switch.select(_progress(step), before, after), before
    )
  for step in (REWEIGHT_STEP, REWEIGHT_STEP + 10):
    assert switch.reached(_progress(step))
    np.testing.assert_array_equal(
        switch.select(_progress(step), before, after), after
    )


def test_a_loss_is_given_only_the_settings_its_spec_names():
  given = []
  spec = losses.LossSpec(
      lambda counts, settings, switch: given.append(settings),
      settings=('ldam_scale',),
  )
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(losses.LOSSES, 'spy', spec)
    losses.make_loss('spy', COUNTS, SETTINGS)
  assert given == [{'ldam_scale': 30.0}]


def test_a_setting_the_loss_names_must_be_given():
  spec = losses.LossSpec(
      lambda counts, settings, switch: None, settings=('toy_factor',)
  )
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(losses.LOSSES, 'toy', spec)
    with pytest.raises(
        ValueError, match=r"takes the settings \['toy_factor'\]"
    ):
      losses.make_loss('toy', COUNTS, SETTINGS)
    assert losses.make_loss('toy', COUNTS, {'toy_factor': 2.0}) is not None


# --- Through the real train step ----------------------------------------------

TRAIN_COUNTS = np.array([40, 20, 10, 10, 5, 5, 4, 3, 2, 1])  # 100 images
# 100 images, batch 16: 6.25 steps per epoch; epoch 1 starts at step
# round(6.25) = 6 (an epoch count would wait for step 7).
TRAIN_SETTINGS = losses.LossSettings(drw_epoch=1.0)
STEP_REWEIGHT = 6


class TinyEnsemble(nn.Module):
  """A shared linear layer, then one linear head per expert.

  It keeps one running statistic (training batches seen), the batch_stats
  the train state expects, and no BN, so its logits are the same whatever
  the BN scope. With `ensemble=False` it returns only the mean logits, as a
  plain network does.
  """

  num_classes: int
  num_experts: int = NUM_EXPERTS
  ensemble: bool = True

  @nn.compact
  def __call__(self, x, train: bool = True):
    seen = self.variable('batch_stats', 'batches_seen', jnp.zeros, ())
    if train and not self.is_initializing():
      seen.value += 1
    x = nn.relu(nn.Dense(8, name='shared')(x.reshape(x.shape[0], -1)))
    expert_logits = jnp.stack([
        nn.Dense(self.num_classes, name=f'expert_{e}')(x)
        for e in range(self.num_experts)
    ])
    outputs = _ensemble_outputs(expert_logits)
    return outputs if self.ensemble else outputs['logits']


def _losses_at(core, model, loss_name, steps_at, batch):
  """The train step's reported loss at each step of `steps_at`, from the
  same initial parameters and batch, and the model's outputs on it."""
  step_config = dataclasses.replace(
      core.step_config,
      model=model,
      loss_fn=losses.make_loss(
          loss_name, TRAIN_COUNTS, TRAIN_SETTINGS, core.length.steps_per_epoch
      ),
  )
  train_step = steps.make_train_step(step_config)
  init = functools.partial(
      steps.create_train_state,
      model,
      core.tx,
      jax.random.key(0),
      IMAGE_SHAPE,
      core.topology,
  )
  sharding = core.topology.batch_sharding
  images, labels = (jax.device_put(a, sharding) for a in batch)
  reported = []
  for step in steps_at:
    state = init().replace(step=jnp.int32(step))
    reported.append(float(train_step(state, images, labels)[1]['loss']))
  state = init()
  outputs = model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats},
      step_config.prepare(images),
      train=True,
      mutable=['batch_stats'],
  )[0]
  return reported, outputs, step_config.loss_fn


@pytest.mark.parametrize(
    'loss_name, ensemble', [('ldam_drw', False), ('ride', True)]
)
def test_the_train_step_switches_at_the_epoch_boundary(loss_name, ensemble):
  # The plan's step config, with a tiny model and the loss in place of its
  # ResNet-8 and cross-entropy.
  core = tiny_step_plan(train_counts=TRAIN_COUNTS)
  assert optim.epoch_start(1.0, core.length.steps_per_epoch) == STEP_REWEIGHT
  model = TinyEnsemble(NUM_CLASSES, ensemble=ensemble)
  at = (0, STEP_REWEIGHT - 1, STEP_REWEIGHT)
  (first, before, after), outputs, loss_fn = _losses_at(
      core, model, loss_name, at, random_batches(1)[0]
  )
  labels = random_batches(1)[0][1]
  assert before == first
  assert abs(after - before) > 1e-3 * abs(before)
  for step, reported in zip(at, (first, before, after)):
    expected = loss_fn(outputs, labels, steps.progress(core.step_config, step))
    assert reported == pytest.approx(float(expected.mean()), rel=1e-5)


@pytest.mark.parametrize('bn_scope', ['global', 'device'])
def test_the_weighted_mean_is_over_the_batch_the_loss_sees(bn_scope):
  # Global: one weighted mean over the 16 examples. Per device (8 devices,
  # 2 examples each): the mean of the 8 shards' weighted means, as DDP.
  config = tiny_config(bn_scope=bn_scope)
  core = tiny_step_plan(config, train_counts=TRAIN_COUNTS)
  images, labels = random_batches(1)[0]
  (reported,), outputs, _ = _losses_at(
      core,
      TinyEnsemble(NUM_CLASSES),
      'ldam_drw',
      (STEP_REWEIGHT,),
      (images, labels),
  )
  per_example = np.asarray(
      losses.ldam_cross_entropy(
          outputs['logits'],
          labels,
          losses.ldam_margins(TRAIN_COUNTS, 0.5),
          30.0,
      )
  )
  weights = losses.class_balanced_weights(TRAIN_COUNTS, 0.9999)[labels]
  shards = 1 if bn_scope == 'global' else 8
  shard_means = [
      np.sum(l * w) / np.sum(w)
      for l, w in zip(np.split(per_example, shards), np.split(weights, shards))
  ]
  global_mean = np.sum(per_example * weights) / np.sum(weights)
  assert reported == pytest.approx(np.mean(shard_means), rel=1e-5)
  if bn_scope == 'device':
    assert abs(np.mean(shard_means) - global_mean) > 1e-3 * global_mean


# --- A loss registered here, with no other edit -------------------------------


def _toy_deferred(train_counts, settings, switch):
  """Cross-entropy, times `toy_factor` from the switch on."""

  def toy_deferred(heads, labels, progress):
    ce = optax.softmax_cross_entropy_with_integer_labels(
        heads[models.LOGITS], labels
    )
    return ce * switch.select(progress, 1.0, settings['toy_factor'])

  return toy_deferred


TOY_DEFERRED = losses.LossSpec(
    _toy_deferred, settings=('toy_factor',), switch_epoch='drw_epoch'
)


def test_a_new_loss_trains_through_the_train_step_from_its_entry_alone():
  config = tiny_config(loss='toy_deferred', drw_epoch=1.0)
  config.toy_factor = 3.0  # its new constant: a config field
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(losses.LOSSES, 'toy_deferred', TOY_DEFERRED)
    core = tiny_step_plan(config, train_counts=TRAIN_COUNTS)  # the checks too
  train_step = steps.make_train_step(core.step_config)
  sharding = core.topology.batch_sharding
  images, labels = (jax.device_put(a, sharding) for a in random_batches(1)[0])
  reported = {}
  for step in (0, STEP_REWEIGHT - 1, STEP_REWEIGHT):
    state = core.runs.init_state().replace(step=jnp.int32(step))
    reported[step] = float(train_step(state, images, labels)[1]['loss'])
  assert reported[0] == reported[STEP_REWEIGHT - 1]
  assert reported[STEP_REWEIGHT] == pytest.approx(3 * reported[0], rel=1e-6)
