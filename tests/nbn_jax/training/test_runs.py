"""K runs in one program train exactly as K separate runs (8 CPU devices)."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import input_pipeline as ip
from input_pipeline import on_device
from nbn_jax import models
from nbn_jax.training import inputs, losses, runs, steps
from nbn_jax.training.run_axis import run_seeds, select_run
from nbn_jax.training.topology import make_topology, run_layout

BATCH = 16
SEED = 5
NUM_STEPS = 3
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PREPROCESSING = ip.Preprocessing('cifar', crop_padding=1)
SAMPLER = ip.SamplerSpec('sqrt')


def _step_config(topology):
  return steps.StepConfig(
      model=models.ResNet8(
          num_classes=5, widths=(4, 8, 8), bn_axis_name=topology.bn_axis_name
      ),
      loss_fn=losses.make_loss('cross_entropy', np.ones(5)),
      topology=topology,
      global_batch_size=BATCH,
      prepare=functools.partial(
          on_device.normalize_images, mean=MEAN, std=STD, dtype=jnp.float32
      ),
      num_classes=5,
      steps_per_epoch=100 / BATCH,
  )


TX = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))


def _runs(topology, seed=SEED, num_runs=1, run_axis='vmap'):
  return runs.make_runs(
      _step_config(topology), TX, (8, 8, 3), seed, num_runs, run_axis
  )


def _toy_split():
  rng = np.random.default_rng(1)
  return ip.Split(
      'toy',
      rng.integers(0, 5, 100).astype(np.int32),
      5,
      images=rng.integers(0, 256, (100, 8, 8, 3), dtype=np.uint8),
  )


def _run_topology(num_runs, devices, bn_scope='global', group=1, shards=0):
  layout = run_layout(
      num_runs, len(devices), BATCH, BATCH, bn_scope, group, shards
  )
  return make_topology(
      bn_scope, group, devices, run_shards=layout.mesh_run_shards
  )


def _host_stream(seed):
  """The batches the run with `seed` is fed (the tf.data path's role)."""
  rng = np.random.default_rng(seed)
  for _ in range(NUM_STEPS):
    yield {
        'image': rng.integers(0, 256, (BATCH, 8, 8, 3), dtype=np.uint8),
        'label': rng.integers(0, 5, BATCH).astype(np.int32),
    }


def _device_data(topology):
  return on_device.put_on_devices(
      _toy_split(), SAMPLER, topology.batch_sharding
  )


def _separate_runs(seeds, topology, on_device_input=True):
  """The single-run trainer's state after NUM_STEPS steps, per seed."""
  host_step = _runs(topology).train_step()  # compiled once for all seeds
  results = []
  for seed in seeds:
    single = _runs(topology, seed)
    assert isinstance(single, runs.SingleRun)
    state = single.init_state()
    if on_device_input:
      data = inputs.OnDeviceInput(
          _device_data(topology),
          functools.partial(single.device_steps, PREPROCESSING),
          1,
      )
      state, _ = data.run(state, 0, NUM_STEPS)
    else:
      for step, batch in enumerate(_host_stream(seed)):
        state, _ = host_step(
            state,
            *(
                jax.device_put(batch[k], topology.batch_sharding)
                for k in ('image', 'label')
            ),
            step,
        )
    results.append(jax.device_get(state))
  return results


def _runs_in_one_program(
    topology, num_runs, run_axis='vmap', on_device_input=True
):
  """`num_runs` runs from SEED trained side by side in one program."""
  stacked = _runs(topology, SEED, num_runs, run_axis)
  assert isinstance(stacked, runs.StackedRuns)
  states = stacked.init_state()
  assert states.step.sharding.spec == topology.run_sharding.spec
  if on_device_input:
    data = _device_data(topology)
    train = stacked.device_steps(PREPROCESSING, 1)
    for step in range(NUM_STEPS):
      states, metrics = train(states, data, step)
  else:
    train = stacked.train_step()
    streams = [_host_stream(s) for s in stacked.seeds]
    for step, batch in enumerate(inputs.stack_runs(streams)):
      states, metrics = train(
          states,
          inputs.to_global(batch['image'], stacked.batch_sharding),
          inputs.to_global(batch['label'], stacked.batch_sharding),
          step,
      )
  assert metrics['loss'].shape[-1] == num_runs
  return jax.device_get(states)


def _assert_each_run_equals_its_separate_run(states, separate):
  """Parameters, BN statistics, optimiser state and step, to 1e-5."""
  for k, single in enumerate(separate):
    run = select_run(states, k)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        (run.params, run.batch_stats, run.opt_state, run.step),
        (single.params, single.batch_stats, single.opt_state, single.step),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    'num_devices, run_axis', [(1, 'vmap'), (8, 'vmap'), (1, 'unroll')]
)
def test_three_runs_in_one_program_equal_three_separate_runs(
    num_devices, run_axis
):
  devices = jax.devices()[:num_devices]
  states = _runs_in_one_program(_run_topology(3, devices), 3, run_axis)
  separate = _separate_runs(
      run_seeds(SEED, 3), make_topology('global', devices=devices)
  )
  _assert_each_run_equals_its_separate_run(states, separate)
  # The runs really differ: own initialisation, data and augmentation.
  kernels = states.params['layer1_0']['conv1']['kernel']
  assert np.abs(kernels[0] - kernels[1]).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
    'bn_scope, group', [('global', 1), ('device', 1), ('group', 2)]
)
def test_runs_split_over_devices_equal_separate_runs(bn_scope, group):
  # 2 runs on 8 devices: 2 run shards of 4 devices, each run's batch split
  # over its 4 devices; batches come from the host as on the tf.data path.
  topology = _run_topology(2, jax.devices(), bn_scope, group, shards=2)
  assert topology.run_shards == 2
  states = _runs_in_one_program(topology, 2, on_device_input=False)
  separate = _separate_runs(
      run_seeds(SEED, 2),
      make_topology(bn_scope, group, jax.devices()[:4]),
      on_device_input=False,
  )
  _assert_each_run_equals_its_separate_run(states, separate)


@pytest.mark.slow
@pytest.mark.parametrize('run_axis', ['vmap', 'unroll'])
def test_a_run_with_a_non_finite_loss_stops_alone(run_axis):
  topology = _run_topology(3, jax.devices()[:1])
  stacked = _runs(topology, SEED, 3, run_axis)
  states = stacked.init_state()
  fc = states.params['fc']
  poisoned = {**fc, 'kernel': fc['kernel'].at[1].set(jnp.nan)}
  states = states.replace(params={**states.params, 'fc': poisoned})
  before = jax.device_get(states)
  data = _device_data(topology)
  train = stacked.device_steps(PREPROCESSING, 1)
  for step in range(2):
    states, metrics = train(states, data, step)
  assert np.isnan(metrics['loss'][0, 1])
  assert np.isfinite(metrics['loss'][0, [0, 2]]).all()
  assert stacked.stopped(states, 2) == {1: 0}
  after = jax.device_get(states)
  np.testing.assert_array_equal(after.step, [2, 0, 2])
  jax.tree.map(
      np.testing.assert_array_equal,
      select_run(after, 1),
      select_run(before, 1),
  )


def _one_host_step(num_runs, states_of):
  """One host-fed step of `num_runs` runs on one device from states that
  `states_of(initial states)` makes; (states before, states after)."""
  topology = _run_topology(num_runs, jax.devices()[:1])
  strategy = _runs(topology, SEED, num_runs, 'unroll')
  states = states_of(strategy.init_state())
  before = jax.device_get(states)
  batch = next(_host_stream(0))
  images, labels = (
      np.stack([batch[k]] * num_runs) if num_runs > 1 else batch[k]
      for k in ('image', 'label')
  )
  after, metrics = strategy.train_step()(
      states,
      jax.device_put(images, strategy.batch_sharding),
      jax.device_put(labels, strategy.batch_sharding),
      int(np.max(before.step)),
  )
  return before, jax.device_get(after), jax.device_get(metrics)


@pytest.mark.parametrize('num_runs', [1, 2])
def test_an_update_to_non_finite_parameters_is_dropped_though_the_loss_is_finite(
    num_runs,
):
  def poison_momentum(states):  # the loss is finite, the update is not
    def poison(trace):  # run 0's momentum buffers (every leaf is one)
      return trace.at[0].set(jnp.inf) if num_runs > 1 else trace + jnp.inf

    return states.replace(opt_state=jax.tree.map(poison, states.opt_state))

  before, after, metrics = _one_host_step(num_runs, poison_momentum)
  assert np.isfinite(metrics['loss']).all()
  run_0 = lambda tree: select_run(tree, 0) if num_runs > 1 else tree
  np.testing.assert_array_equal(np.ravel(after.step)[0], 0)
  jax.tree.map(
      np.testing.assert_array_equal, run_0(after.params), run_0(before.params)
  )
  if num_runs > 1:  # the other run trained
    assert np.ravel(after.step)[1] == 1


def test_a_stopped_run_never_trains_again():
  """A run whose step lags the loop's stays put, though it could train."""

  def stopped_at_step_0(states):  # run 1 stopped, run 0 went on
    return states.replace(step=states.step.at[0].set(1))

  before, after, _ = _one_host_step(2, stopped_at_step_0)
  np.testing.assert_array_equal(after.step, [2, 0])
  jax.tree.map(
      np.testing.assert_array_equal,
      select_run(after.params, 1),
      select_run(before.params, 1),
  )


@pytest.mark.slow
def test_eval_step_counts_each_runs_hits():
  topology = _run_topology(2, jax.devices())
  stacked = _runs(topology, SEED, 2)
  states = stacked.init_state()
  batch = next(_host_stream(0))
  batch['mask'] = np.arange(BATCH) < 11
  names = ('image', 'label', 'mask')
  correct, total, correct_top5 = stacked.eval_step()(
      states,
      *(jax.device_put(batch[k], topology.batch_sharding) for k in names),
  )
  assert correct.shape == total.shape == correct_top5.shape == (2, 5)
  single = make_topology('global')
  single_step = steps.make_eval_step(_step_config(single))
  for k in range(2):
    expected = single_step(
        jax.device_put(select_run(states, k), single.replicated),
        *(jax.device_put(batch[n], single.batch_sharding) for n in names),
    )
    np.testing.assert_array_equal(correct[k], expected.correct)
    np.testing.assert_array_equal(total[k], expected.total)
    np.testing.assert_array_equal(correct_top5[k], expected.correct_top5)


def test_k_runs_start_from_their_seeds_single_run_parameters():
  """Run k's initial state is that of a single run with seed + k."""
  devices = jax.devices()[:1]
  variables = lambda state: (state.params, state.batch_stats)
  stacked = _runs(_run_topology(2, devices), SEED, 2, 'unroll')
  states = jax.device_get(variables(stacked.init_state()))
  for k in range(2):
    single = _runs(make_topology('global', devices=devices), SEED + k)
    jax.tree.map(
        np.testing.assert_array_equal,
        select_run(states, k),
        jax.device_get(variables(single.init_state())),
    )
  kernels = states[0]['layer1_0']['conv1']['kernel']
  assert np.abs(kernels[0] - kernels[1]).max() > 1e-3  # different seeds


def test_the_stopped_runs_are_those_behind_the_loops_step():
  def state(step):
    return types.SimpleNamespace(step=np.asarray(step, np.int32))

  k_runs = _runs(_run_topology(3, jax.devices()[:1]), SEED, 3)
  assert k_runs.stopped(state([4, 4, 4]), 4) == {}
  assert k_runs.stopped(state([4, 2, 4]), 4) == {1: 2}
  assert k_runs.stopped(state([0, 2, 4]), 4) == {0: 0, 1: 2}
  one = _runs(make_topology('global', devices=jax.devices()[:1]))
  assert one.stopped(state(4), 4) == {}
  assert one.stopped(state(3), 4) == {0: 3}


def test_one_run_and_k_runs_lay_out_their_outputs():
  one = _runs(make_topology('global', devices=jax.devices()[:1]))
  k_runs = _runs(_run_topology(2, jax.devices()[:2]), SEED, 2)
  assert (one.num_runs, one.seeds, one.summarizes) == (1, [SEED], False)
  assert (k_runs.num_runs, k_runs.seeds, k_runs.summarizes) == (
      2,
      [SEED, SEED + 1],
      True,
  )
  assert one.run_dir('/w', 0) == '/w' and one.name(0) == ''
  assert k_runs.run_dir('/w', 1) == '/w/run_1' and k_runs.name(1) == 'run 1'
  np.testing.assert_array_equal(one.per_run(np.arange(3)), [[0], [1], [2]])
  assert k_runs.per_run(np.zeros((3, 2))).shape == (3, 2)
  tree = {'a': np.arange(4).reshape(2, 2)}
  np.testing.assert_array_equal(k_runs.select(tree, 1)['a'], [2, 3])
  assert one.select(tree, 0) is tree


def test_stack_runs_puts_the_run_axis_first():
  streams = [
      iter([{'label': np.full(4, k * 10 + step)} for step in range(2)])
      for k in range(3)
  ]
  stacked = list(inputs.stack_runs(streams))
  assert len(stacked) == 2
  np.testing.assert_array_equal(stacked[1]['label'][:, 0], [1, 11, 21])
  assert stacked[0]['label'].shape == (3, 4)


@pytest.mark.slow
def test_k_runs_read_each_seeds_own_tf_data_stream():
  """Run k's batches are those tf.data gives a single run with seed + k."""
  from input_pipeline import tf_pipeline  # imports TensorFlow

  kwargs = dict(global_batch_size=BATCH, process_index=0, process_count=1)
  stacked = _runs(_run_topology(2, jax.devices()[:2]), SEED, 2)
  stream = stacked.train_stream(
      _toy_split(), PREPROCESSING, SAMPLER, first_step=0
  )
  first, second = next(stream), next(stream)
  assert first['image'].shape == (2, BATCH, 8, 8, 3)
  for k in range(2):
    alone = tf_pipeline.as_numpy(
        tf_pipeline.train_dataset(
            _toy_split(),
            PREPROCESSING,
            sampler=SAMPLER,
            seed=SEED + k,
            **kwargs,
        )
    )
    for batch in (first, second):
      expected = next(alone)
      np.testing.assert_array_equal(batch['image'][k], expected['image'])
      np.testing.assert_array_equal(batch['label'][k], expected['label'])
  assert (first['image'][0] != first['image'][1]).any()
