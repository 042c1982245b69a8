"""The sharded train and eval steps on 1 and 8 host CPU devices."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import input_pipeline as ip
from input_pipeline import on_device
from nbn_jax.training import inputs, losses, steps
from tests.nbn_jax.training.builders import (
    IMAGE_SHAPE,
    first_devices,
    random_batches,
    tiny_config,
    tiny_step_plan,
)


def _steps(core, step_config, num_steps):
  """(state, per-step metrics) after `num_steps` of the plain train step."""
  state = core.runs.init_state()
  step = steps.make_train_step(step_config)
  sharding = core.topology.batch_sharding
  metrics = []
  for images, labels in random_batches(num_steps):
    state, m = step(
        state,
        jax.device_put(images, sharding),
        jax.device_put(labels, sharding),
    )
    metrics.append(m)
  return state, metrics


def _train(devices=None, **overrides):
  core = tiny_step_plan(tiny_config(**overrides), devices)
  state, metrics = _steps(core, core.step_config, 3)
  return jax.device_get((state.params, state.batch_stats, metrics))


def _close(a, b, rtol=1e-4, atol=1e-5):
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b
  )


@pytest.mark.slow
def test_eight_devices_equal_one_device_on_the_same_global_batch():
  _close(_train(), _train(first_devices(1)))


@pytest.mark.slow
def test_bn_scopes_are_wired_as_named():
  global_scope = _train(bn_scope='global')
  per_device = _train(bn_scope='device')
  # One group of all 8 devices is the global batch; groups of 1 are devices.
  _close(_train(bn_scope='group', bn_group_size=8), global_scope)
  _close(_train(bn_scope='group', bn_group_size=1), per_device)
  # Per-device statistics really differ from global ones.
  kernel = lambda result: result[0]['layer3_0']['conv1']['kernel']
  assert np.abs(kernel(per_device) - kernel(global_scope)).max() > 1e-4


def _toy_split():
  rng = np.random.default_rng(1)
  return ip.Split(
      'toy',
      rng.integers(0, 5, 100).astype(np.int32),
      5,
      images=rng.integers(0, 256, (100, *IMAGE_SHAPE), dtype=np.uint8),
  )


def _on_device_input(core, steps_per_call, monkeypatch):
  # Force the requested steps per call on CPU too (it normally runs one).
  monkeypatch.setattr(inputs, 'steps_per_dispatch', lambda requested: requested)
  return inputs.OnDeviceInput(
      on_device.put_on_devices(
          _toy_split(), ip.SamplerSpec('sqrt'), core.topology.batch_sharding
      ),
      functools.partial(
          core.runs.device_steps, ip.Preprocessing('cifar', crop_padding=1)
      ),
      steps_per_call,
  )


@pytest.mark.slow
def test_on_device_steps_are_the_same_on_one_and_eight_devices(monkeypatch):
  results = []
  for devices in (first_devices(1), None):
    core = tiny_step_plan(devices=devices)
    training_input = _on_device_input(core, 1, monkeypatch)
    state, metrics = training_input.run(core.runs.init_state(), 0, 3)
    assert metrics['loss'].shape == (3,)
    assert int(state.step) == 3
    results.append(jax.device_get((state.params, metrics)))
  _close(results[1], results[0])


@pytest.mark.slow
def test_one_dispatch_of_four_steps_equals_four_dispatches_of_one(monkeypatch):
  # Accelerators run several steps per call, CPU one (`steps_per_dispatch`):
  # both must train on the same batches and end in the same state.
  results = []
  for steps_per_call in (4, 1):
    core = tiny_step_plan()
    training_input = _on_device_input(core, steps_per_call, monkeypatch)
    state, metrics = training_input.run(core.runs.init_state(), 0, 4)
    assert int(state.step) == 4
    results.append(jax.device_get((state.params, metrics['loss'])))
  _close(results[1], results[0])


def test_eval_step_counts_only_unmasked_examples():
  core = tiny_step_plan()
  state = core.runs.init_state()
  images, labels = random_batches(1)[0]
  mask = np.arange(16) < 11
  sharding = core.topology.batch_sharding
  correct, total, correct_top5 = steps.make_eval_step(core.step_config)(
      state, *(jax.device_put(a, sharding) for a in (images, labels, mask))
  )
  assert int(total.sum()) == 11
  np.testing.assert_array_equal(total, np.bincount(labels[:11], minlength=10))
  assert 0 <= int(correct.sum()) <= int(correct_top5.sum()) <= 11


def test_the_loss_is_told_the_epoch_and_sees_the_models_whole_output():
  """A toy loss worth 1 per example before epoch 1.5 and 3 from then on, and
  the mean of the logits itself, through the real train step."""
  core = tiny_step_plan()  # 100 images, batch 16: 6.25 steps per epoch
  seen = []

  def toy_loss(outputs, labels, progress):
    seen.append(jnp.shape(outputs))  # at trace time: the logits, whole
    weight = jnp.where(progress.epoch >= 1.5, 3.0, 1.0)
    return (
        jnp.zeros(labels.shape) + weight + 0 * losses.logits_of(outputs)[:, 0]
    )

  cfg = dataclasses.replace(core.step_config, loss_fn=toy_loss)
  _, metrics = _steps(core, cfg, 12)
  loss = [float(m['loss']) for m in metrics]
  assert seen[0] == (16, 10)
  # Step 9 is at epoch 1.44, step 10 at 1.6.
  np.testing.assert_allclose(loss, [1.0] * 10 + [3.0] * 2)


def test_progress_is_the_step_and_the_epochs_seen_before_it():
  core = tiny_step_plan()
  progress = steps.progress(core.step_config, jnp.int32(25))
  assert int(progress.step) == 25
  assert float(progress.epoch) == pytest.approx(25 / 6.25)


# XLA's default optimisation settings, which the tests' global
# jax_disable_most_optimizations lowers (and which change the last bits).
XLA_DEFAULT_OPTIMIZATION = {
    'xla_backend_optimization_level': 3,
    'xla_llvm_disable_expensive_passes': False,
}


@pytest.mark.slow
@pytest.mark.parametrize('num_runs', [1, 2])
def test_the_fast_compiled_initial_state_is_bitwise_xlas_default(num_runs):
  """`init_compiler_options` makes the init compile faster, nothing else."""
  core = tiny_step_plan(tiny_config(num_runs=num_runs))
  init = jax.jit(
      functools.partial(
          steps.initial_train_state,
          core.model,
          core.tx,
          image_shape=IMAGE_SHAPE,
      ),
      compiler_options=XLA_DEFAULT_OPTIMIZATION,
  )
  made = core.runs.init_state()
  keys = core.runs.keys()[0]
  for k in range(num_runs):
    default = init(keys[k] if num_runs > 1 else keys)
    run_k = made if num_runs == 1 else jax.tree.map(lambda x: x[k], made)
    jax.tree.map(np.testing.assert_array_equal, run_k, default)
