"""Statistics scopes of NormalizedBatchNorm on 8 host CPU devices.

Global statistics under a sharded `jax.jit` or under `shard_map` with
`axis_name` must reproduce one device with the whole batch (outputs, gradients
and running statistics); per-device and grouped scopes must give each shard
(or group of shards) the statistics of its own examples.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from nbn_jax import NormalizedBatchNorm

NUM_DEVICES = 8
PER_DEVICE = 4
GLOBAL_BATCH = NUM_DEVICES * PER_DEVICE
NUM_CLASSES = 5


class TinyNet(nn.Module):
  """conv -> NBN -> relu -> conv -> NBN -> pool -> dense; one shared alpha."""

  axis_name: str | None = None
  axis_index_groups: tuple | None = None

  @nn.compact
  def __call__(self, x):
    alpha = self.param('alpha', nn.initializers.ones, ())
    norm = lambda: NormalizedBatchNorm(
        use_running_average=False,
        momentum=0.9,
        axis_name=self.axis_name,
        axis_index_groups=self.axis_index_groups,
    )
    x = nn.relu(norm()(nn.Conv(6, (3, 3))(x), alpha=alpha))
    x = norm()(nn.Conv(6, (3, 3))(x), alpha=alpha)
    return nn.Dense(NUM_CLASSES)(x.mean((1, 2)))


def _data():
  kx, ky = jax.random.split(jax.random.key(0))
  images = jax.random.normal(kx, (GLOBAL_BATCH, 6, 6, 3)) * 2 + 0.5
  labels = jax.random.randint(ky, (GLOBAL_BATCH,), 0, NUM_CLASSES)
  return images, labels


def _variables():
  images, _ = _data()
  variables = TinyNet().init(jax.random.key(1), images)
  # Move the running statistics off their init values.
  return jax.tree.map(lambda v: v + 0.1, variables)


def _loss_sum(net, params, batch_stats, images, labels):
  """Sum of per-example losses / GLOBAL_BATCH (so shards add up)."""
  logits, updates = net.apply(
      {'params': params, 'batch_stats': batch_stats},
      images,
      mutable=['batch_stats'],
  )
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return loss.sum() / GLOBAL_BATCH, (logits, updates['batch_stats'])


def _step(net):
  """(params, stats, images, labels) -> (loss, logits, grads, new stats)."""

  def step(params, batch_stats, images, labels):
    (loss, (logits, new_stats)), grads = jax.value_and_grad(
        lambda p: _loss_sum(net, p, batch_stats, images, labels), has_aux=True
    )(params)
    return loss, logits, grads, new_stats

  return step


def _single_device_reference():
  variables, (images, labels) = _variables(), _data()
  return jax.jit(_step(TinyNet()))(
      variables['params'], variables['batch_stats'], images, labels
  )


def _assert_trees_close(actual, expected, rtol=2e-5, atol=2e-6):
  jax.tree.map(
      lambda a, e: np.testing.assert_allclose(
          np.asarray(a), np.asarray(e), rtol=rtol, atol=atol
      ),
      actual,
      expected,
  )


def test_eight_devices_are_visible():
  assert jax.device_count() == NUM_DEVICES


@pytest.mark.parametrize('axis_type', [AxisType.Auto, AxisType.Explicit])
def test_sharded_jit_equals_one_device_with_the_whole_batch(axis_type):
  mesh = jax.make_mesh((NUM_DEVICES,), ('data',), axis_types=(axis_type,))
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  variables, (images, labels) = _variables(), _data()
  args = (
      jax.device_put(variables['params'], replicated),
      jax.device_put(variables['batch_stats'], replicated),
      jax.device_put(images, batch),
      jax.device_put(labels, batch),
  )
  step = jax.jit(
      _step(TinyNet()),
      out_shardings=(replicated, batch, replicated, replicated),
  )
  with jax.set_mesh(mesh):
    result = step(*args)
  assert result[1].sharding.spec == P('data')
  _assert_trees_close(result, _single_device_reference())


def _shard_mapped(local_step, mesh, data_axes, out_specs):
  """Runs `local_step(params, batch_stats, images, labels)` under shard_map.

  Parameters and statistics are replicated; the batch is split over
  `data_axes` of `mesh`.
  """
  variables, (images, labels) = _variables(), _data()
  step = jax.jit(
      jax.shard_map(
          local_step,
          mesh=mesh,
          in_specs=(P(), P(), P(data_axes), P(data_axes)),
          out_specs=out_specs,
      )
  )
  batch = NamedSharding(mesh, P(data_axes))
  return step(
      variables['params'],
      variables['batch_stats'],
      jax.device_put(images, batch),
      jax.device_put(labels, batch),
  )


def test_shard_map_with_axis_name_equals_one_device_with_the_whole_batch():
  mesh = jax.make_mesh((NUM_DEVICES,), ('data',))

  def local_step(params, batch_stats, images, labels):
    loss, logits, grads, stats = _step(TinyNet(axis_name='data'))(
        params, batch_stats, images, labels
    )
    # With check_vma, the gradient of replicated params is already summed
    # over devices; only the loss needs an explicit sum.
    return jax.lax.psum(loss, 'data'), logits, grads, stats

  result = _shard_mapped(local_step, mesh, 'data', (P(), P('data'), P(), P()))
  _assert_trees_close(result, _single_device_reference())


def _stats_of_example_groups(group_size):
  """Logits and new stats computed on one device per group of examples."""
  variables, (images, labels) = _variables(), _data()
  step = jax.jit(_step(TinyNet()))
  logits, stats = [], []
  for start in range(0, GLOBAL_BATCH, group_size):
    sl = slice(start, start + group_size)
    _, group_logits, _, group_stats = step(
        variables['params'], variables['batch_stats'], images[sl], labels[sl]
    )
    logits.append(group_logits)
    stats.append(group_stats)
  return jnp.concatenate(logits), jax.tree.map(lambda *s: jnp.stack(s), *stats)


def _logits_and_shard_stats(net):
  """A local step returning logits and its shard's statistics, stacked."""

  def local_step(params, batch_stats, images, labels):
    _, logits, _, stats = _step(net)(params, batch_stats, images, labels)
    return logits, jax.tree.map(lambda v: v[None], stats)

  return local_step


def test_per_device_statistics_are_those_of_each_shard():
  mesh = jax.make_mesh((NUM_DEVICES,), ('data',))
  logits, stats = _shard_mapped(
      _logits_and_shard_stats(TinyNet(axis_name=None)),
      mesh,
      'data',
      (P('data'), P('data')),
  )
  _assert_trees_close((logits, stats), _stats_of_example_groups(PER_DEVICE))
  # The scopes really differ: per-shard means are not all the same.
  mean0 = np.asarray(stats['NormalizedBatchNorm_0']['mean'])
  assert np.abs(mean0[0] - mean0[1]).max() > 1e-3


def test_groups_of_four_devices_under_shard_map_use_a_two_axis_mesh():
  group = 4
  mesh = jax.make_mesh((NUM_DEVICES // group, group), ('replica', 'bn_group'))
  # Every device of a group holds the same statistics: one per replica.
  data_axes = ('replica', 'bn_group')
  logits, stats = _shard_mapped(
      _logits_and_shard_stats(TinyNet(axis_name='bn_group')),
      mesh,
      data_axes,
      (P(data_axes), P('replica')),
  )
  _assert_trees_close(
      (logits, stats), _stats_of_example_groups(group * PER_DEVICE)
  )


def test_groups_of_two_devices_under_pmap_use_axis_index_groups():
  groups = tuple(tuple(range(i, i + 2)) for i in range(0, NUM_DEVICES, 2))
  variables, (images, labels) = _variables(), _data()
  net = TinyNet(axis_name='data', axis_index_groups=groups)

  def local_step(params, batch_stats, images, labels):
    _, logits, _, stats = _step(net)(params, batch_stats, images, labels)
    return logits, stats

  replicate = lambda tree: jax.tree.map(
      lambda v: jnp.broadcast_to(v, (NUM_DEVICES, *v.shape)), tree
  )
  split = lambda v: v.reshape(NUM_DEVICES, PER_DEVICE, *v.shape[1:])
  logits, stats = jax.pmap(local_step, axis_name='data')(
      replicate(variables['params']),
      replicate(variables['batch_stats']),
      split(images),
      split(labels),
  )
  expected_logits, expected_stats = _stats_of_example_groups(2 * PER_DEVICE)
  # Both devices of a group hold the group's statistics.
  _assert_trees_close(
      (logits.reshape(GLOBAL_BATCH, -1), jax.tree.map(lambda s: s[::2], stats)),
      (expected_logits, expected_stats),
  )
  _assert_trees_close(jax.tree.map(lambda s: s[1::2], stats), expected_stats)
