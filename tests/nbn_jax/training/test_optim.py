"""The optimiser equals PyTorch's SGD; the schedules follow the recipes."""

import jax
import numpy as np
import optax
import pytest

from nbn_jax.training import optim


def _torch_sgd(params, grads_per_step, lr, wd, momentum, decayed):
  """PyTorch's SGD update, written out: d = g + wd p; v = m v + d; p -= lr v."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  velocity = {k: None for k in params}
  for grads in grads_per_step:
    for k in params:
      d = grads[k] + (wd * params[k] if decayed[k] else 0.0)
      velocity[k] = d if velocity[k] is None else momentum * velocity[k] + d
      params[k] = params[k] - lr * velocity[k]
  return params


@pytest.mark.parametrize('decay_alpha', [True, False])
def test_sgd_equals_pytorch_with_coupled_weight_decay(decay_alpha):
  rng = np.random.default_rng(0)
  params = {
      'kernel': rng.normal(size=(3, 2)).astype(np.float32),
      'nbn_alpha': np.float32(1.5),
  }
  grads = [
      {
          k: rng.normal(size=np.shape(v)).astype(np.float32)
          for k, v in params.items()
      }
      for _ in range(3)
  ]
  exempt = () if decay_alpha else [('nbn_alpha',)]
  tx = optim.sgd(lambda step: 0.1, 5e-4, 0.9, exempt=exempt)
  state = tx.init(params)
  ours = params
  for g in grads:
    updates, state = tx.update(g, state, ours)
    ours = optax.apply_updates(ours, updates)
  expected = _torch_sgd(
      params,
      grads,
      0.1,
      5e-4,
      0.9,
      decayed={'kernel': True, 'nbn_alpha': decay_alpha},
  )
  for k in params:
    np.testing.assert_allclose(ours[k], expected[k], rtol=1e-5)


def test_weight_decay_mask_exempts_only_the_given_paths():
  params = {'nbn_alpha': 1.0, 'layer4_0': {'bn3': {'alpha': 1.0, 'scale': 1.0}}}
  exempt = [('nbn_alpha',), ('layer4_0', 'bn3', 'alpha')]
  assert optim.weight_decay_mask(params, exempt) == {
      'nbn_alpha': False,
      'layer4_0': {'bn3': {'alpha': False, 'scale': True}},
  }
  assert all(jax.tree.leaves(optim.weight_decay_mask(params)))


def test_linear_scaling_rule():
  assert optim.base_learning_rate(0.2, 256, 512) == pytest.approx(0.1)


def test_ldam_step_schedule_by_hand():
  # 10 steps per epoch: warm-up over 5 epochs, x0.01 at epochs 160 and 180.
  rate = optim.learning_rate_schedule(
      'step',
      0.1,
      10.0,
      2000,
      warmup_epochs=5,
      lr_decay_epochs=(160, 180),
      lr_decay_factor=0.01,
  )
  expected = {
      0: 0.1 / 50,
      24: 0.1 * 25 / 50,
      49: 0.1,
      50: 0.1,
      1599: 0.1,
      1600: 1e-3,
      1799: 1e-3,
      1800: 1e-5,
      1999: 1e-5,
  }
  for step, value in expected.items():
    assert float(rate(step)) == pytest.approx(value, rel=1e-5), step


def test_cosine_schedule_by_hand():
  rate = optim.learning_rate_schedule('cosine', 0.2, 100.0, 9000)
  assert float(rate(0)) == pytest.approx(0.2)
  assert float(rate(4500)) == pytest.approx(0.1, rel=1e-5)
  assert float(rate(9000)) == pytest.approx(0.0, abs=1e-7)
  warm = optim.learning_rate_schedule(
      'cosine', 0.2, 100.0, 9000, warmup_epochs=1
  )
  assert float(warm(49)) == pytest.approx(0.1)
  assert float(warm(100)) == pytest.approx(0.2)


def test_unknown_schedule():
  with pytest.raises(ValueError, match="schedule='linear' is not one of"):
    optim.learning_rate_schedule('linear', 0.1, 10.0, 100)


def test_epoch_warmup_is_ldams_per_epoch_staircase():
  # LDAM-DRW: lr * (epoch + 1) / 5 for epochs 0-4, held for the whole epoch;
  # x0.01 from epoch 160, x0.0001 from 180. 7 steps per epoch.
  rate = optim.learning_rate_schedule(
      'step',
      0.1,
      7.0,
      1400,
      warmup_epochs=5,
      lr_decay_epochs=(160, 180),
      lr_decay_factor=0.01,
      warmup_granularity='epoch',
  )

  def ldam(epoch):
    if epoch < 5:
      return 0.1 * (epoch + 1) / 5
    return 0.1 * (1e-4 if epoch >= 180 else 1e-2 if epoch >= 160 else 1)

  for step in [*range(0, 42), 1119, 1120, 1259, 1260, 1399]:
    assert float(rate(step)) == pytest.approx(ldam(step // 7), rel=1e-6), step


def test_epoch_warmup_needs_whole_epochs():
  with pytest.raises(ValueError, match='warmup_epochs=2.5 must be a whole'):
    optim.learning_rate_schedule(
        'step', 0.1, 7.0, 100, 2.5, warmup_granularity='epoch'
    )
  with pytest.raises(ValueError, match="warmup_granularity='batch' is not"):
    optim.learning_rate_schedule(
        'step', 0.1, 7.0, 100, 2, warmup_granularity='batch'
    )


def test_a_cosine_period_continues_as_pytorchs_scheduler_past_t_max():
  """T_max 90 epochs in a 200-epoch run (the reference's RIDE configs): 0
  at epoch 90, the base rate again at 180; with period 0, 0 at the end."""
  periodic = optim.learning_rate_schedule(
      'cosine', 0.1, 10.0, 2000, cosine_period_epochs=90.0
  )
  by_epoch = {e: float(periodic(e * 10)) for e in (0, 45, 90, 135, 180, 199)}
  torch_rate = lambda e: 0.05 * (1 + np.cos(np.pi * e / 90))  # closed form
  assert by_epoch == pytest.approx({e: torch_rate(e) for e in by_epoch})
  assert by_epoch[90] == pytest.approx(0.0, abs=1e-9)
  assert by_epoch[180] == pytest.approx(0.1)
  once = optim.learning_rate_schedule('cosine', 0.1, 10.0, 2000)
  assert float(once(1000)) == pytest.approx(0.05)
  assert float(once(2000)) == pytest.approx(0.0, abs=1e-9)
