"""The sharded train step on 8 host CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, Mesh

import input_pipeline as ip
from input_pipeline import on_device
from nbn_jax import models
from nbn_jax.training import steps

BATCH = 16
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _mesh_of(devices):
  return jax.make_mesh(
      (len(devices),), ('data',), (AxisType.Auto,), devices=devices
  )


def _setup(mesh: Mesh, bn_scope: str = 'global'):
  model = models.ResNet8(
      num_classes=5, widths=(4, 8, 8), bn_axis_name=steps.bn_axis_name(bn_scope)
  )
  cfg = steps.StepConfig(
      model=model,
      loss_fn=optax.softmax_cross_entropy_with_integer_labels,
      mesh=mesh,
      bn_scope=bn_scope,
      global_batch_size=BATCH,
      mean=MEAN,
      std=STD,
      dtype=jnp.float32,
      num_classes=5,
  )
  state = steps.create_train_state(
      model, optax.sgd(0.1, momentum=0.9), jax.random.key(0), (8, 8, 3), mesh
  )
  return cfg, state


def _batches(count=3):
  rng = np.random.default_rng(0)
  return [
      (
          rng.integers(0, 256, (BATCH, 8, 8, 3), dtype=np.uint8),
          rng.integers(0, 5, BATCH).astype(np.int32),
      )
      for _ in range(count)
  ]


def _train(mesh, bn_scope='global'):
  cfg, state = _setup(mesh, bn_scope)
  step = steps.make_train_step(cfg)
  metrics = []
  for images, labels in _batches():
    sharding = steps.batch_sharding(mesh)
    state, m = step(
        state,
        jax.device_put(images, sharding),
        jax.device_put(labels, sharding),
    )
    metrics.append(m)
  return jax.device_get((state.params, state.batch_stats, metrics))


def _close(a, b, rtol=1e-4, atol=1e-5):
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b
  )


def test_eight_devices_equal_one_device_on_the_same_global_batch():
  one = _train(_mesh_of(jax.devices()[:1]))
  eight = _train(steps.create_mesh('global'))
  _close(eight, one)


def test_bn_scopes_are_wired_as_named():
  mesh8 = steps.create_mesh('global')
  global_scope = _train(mesh8, 'global')
  per_device = _train(mesh8, 'device')
  # One group of all 8 devices is the global batch; groups of 1 are devices.
  _close(_train(steps.create_mesh('group', 8), 'group'), global_scope)
  _close(_train(steps.create_mesh('group', 1), 'group'), per_device)
  # Per-device statistics really differ from global ones.
  kernel = lambda result: result[0]['layer3_0']['conv1']['kernel']
  assert np.abs(kernel(per_device) - kernel(global_scope)).max() > 1e-4


def _toy_split():
  rng = np.random.default_rng(1)
  return ip.Split(
      'toy',
      rng.integers(0, 5, 100).astype(np.int32),
      5,
      images=rng.integers(0, 256, (100, 8, 8, 3), dtype=np.uint8),
  )


def _device_steps(cfg, num_steps):
  return steps.make_device_train_steps(
      cfg,
      jax.random.key(2),
      ip.Preprocessing('cifar', crop_padding=1),
      num_steps,
  )


def test_on_device_steps_are_the_same_on_one_and_eight_devices():
  results = []
  for mesh in (_mesh_of(jax.devices()[:1]), steps.create_mesh('global')):
    cfg, state = _setup(mesh)
    data = on_device.put_on_devices(_toy_split(), ip.SamplerSpec('sqrt'), mesh)
    run = _device_steps(cfg, 4)
    state, metrics = run(state, data)
    assert metrics['loss'].shape == (4,)
    assert int(state.step) == 4
    results.append(jax.device_get((state.params, metrics)))
  _close(results[1], results[0])


def test_one_dispatch_of_four_steps_equals_four_dispatches_of_one():
  # Accelerators run several steps per call, CPU one (`steps_per_dispatch`):
  # both must train on the same batches and end in the same state.
  mesh = steps.create_mesh('global')
  results = []
  for num_steps, calls in ((4, 1), (1, 4)):
    cfg, state = _setup(mesh)
    data = on_device.put_on_devices(_toy_split(), ip.SamplerSpec('sqrt'), mesh)
    run = _device_steps(cfg, num_steps)
    losses = []
    for _ in range(calls):
      state, metrics = run(state, data)
      losses.append(metrics['loss'])
    assert int(state.step) == 4
    results.append(jax.device_get((state.params, jnp.concatenate(losses))))
  _close(results[1], results[0])


def test_eval_step_counts_only_unmasked_examples():
  mesh = steps.create_mesh('global')
  cfg, state = _setup(mesh)
  images, labels = _batches(1)[0]
  mask = np.arange(BATCH) < 11
  sharding = steps.batch_sharding(mesh)
  correct, total = steps.make_eval_step(cfg)(
      state, *(jax.device_put(a, sharding) for a in (images, labels, mask))
  )
  assert int(total.sum()) == 11
  np.testing.assert_array_equal(total, np.bincount(labels[:11], minlength=5))
  assert 0 <= int(correct.sum()) <= 11
