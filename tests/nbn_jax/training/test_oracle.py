"""Our train step equals LDAM-DRW's recipe written in PyTorch (the oracle).

The oracle (`tests/torch_resnet32.py`) is ResNet-32 with PyTorch's BN, SGD
with coupled weight decay on every parameter and LDAM's per-epoch warm-up,
written from the reference's facts. Both sides start from our initial
variables and train on the same uint8 batches: our step normalises inside;
the oracle gets the same normalised images (augmentation and normalisation
happen once, outside the oracle; `torch_inputs`, torchvision's ToTensor +
Normalize, is checked against our normalisation separately). A tiny epoch
of 4 steps lets 30 steps cross every stair of the 5-epoch warm-up and both
decays (epochs 6 and 7 stand for LDAM's 160 and 180).

Both sides compute in float64, and every step starts both from the
oracle's state (parameters, BN statistics, momentum buffers; the step count,
and so the learning rate, stays each side's own). In float32 the two differ
by rounding (about 1e-7), and then a ReLU input within rounding of 0 gets
gradient 1 on one side and 0 on the other: measured here, one such flip in
60 steps gave a 1.6e-3 momentum difference, and free-running float32
trajectories of this small network drift apart from step 8 on, for no
reason in the recipe. (Float32, re-synchronised, BN: worst 4.3e-6.)

"Relative difference" of two arrays is max |ours - oracle| / max |oracle|;
a quantity's difference is the worst over its arrays and the 30 steps.
Everything must be within 1e-10 (measured: 4e-14 at worst, float64
rounding); each recipe error in `MUTATIONS` must exceed ten times that.

PyTorch keeps the unbiased batch variance in `running_var`, Flax the biased
one. The oracle is compared in its `running_var='biased'` mode, and a
separate test shows that PyTorch's own mode trains identically and differs
in `running_var` by exactly the factor n / (n - 1) on every batch's
contribution (n: values per channel in the batch).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import input_pipeline as ip
from tests import torch_resnet32 as oracle
from configs import default
from input_pipeline import on_device
from nbn_jax.training import plan, steps

NUM_CLASSES = 10
BATCH = 8
IMAGE_SHAPE = (8, 8, 3)  # the last stage runs at 2 x 2
STEPS_PER_EPOCH = 4  # a 32-image epoch: no partial last batch
TRAIN_COUNTS = np.array([5, 5, 4, 3, 3, 3, 3, 2, 2, 2])  # 32 images
NUM_STEPS = 30
BASE_RATE = 0.1
WEIGHT_DECAY = 2e-4
WARMUP_EPOCHS = 5
DECAY_EPOCHS = (6, 7)  # LDAM's 160 and 180: x0.01, then x0.0001
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
TOLERANCE = 1e-10

pytestmark = pytest.mark.slow


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What our side may get wrong (the defaults are LDAM's recipe)."""

  bn_momentum: float = 0.9  # Flax's name for PyTorch's momentum 0.1
  decay_alpha: bool = True
  warmup_epochs: int = WARMUP_EPOCHS
  warmup_granularity: str = 'epoch'


def _our_trainer(norm: str, recipe: Recipe):
  """(step config, initial state, jitted step): our trainer for `recipe`.

  The one place that builds the JAX side: the trainer's own builders
  (`plan.build_step_plan` from a config) on one device, then in float64
  (call under `jax.enable_x64(True)`; see the top).
  """
  config = default.get_config()
  config.update(
      model='ResNet32',
      norm=norm,
      batch_size=BATCH,
      lr_batch_size=BATCH,
      eval_batch_size=BATCH,
      learning_rate=BASE_RATE,
      weight_decay=WEIGHT_DECAY,
      decay_alpha=recipe.decay_alpha,
      schedule='step',
      warmup_epochs=float(recipe.warmup_epochs),
      warmup_granularity=recipe.warmup_granularity,
      lr_decay_epochs=DECAY_EPOCHS,
      lr_decay_factor=0.01,
      num_epochs=NUM_STEPS / STEPS_PER_EPOCH,
  )
  core = plan.build_step_plan(
      config,
      ip.DATASETS['cifar10'],
      TRAIN_COUNTS,
      IMAGE_SHAPE,
      jax.devices()[:1],
  )
  model = core.model.clone(bn_momentum=recipe.bn_momentum, dtype=jnp.float64)
  cfg = dataclasses.replace(
      core.step_config,
      model=model,
      prepare=functools.partial(core.step_config.prepare, dtype=jnp.float64),
  )
  state = steps.create_train_state(
      model, core.tx, jax.random.key(0), IMAGE_SHAPE, core.topology
  )
  params, batch_stats = jax.tree.map(
      lambda v: v.astype(jnp.float64), (state.params, state.batch_stats)
  )
  state = state.replace(
      params=params, batch_stats=batch_stats, opt_state=core.tx.init(params)
  )
  return cfg, state, steps.make_train_step(cfg)


def _batches():
  """NUM_STEPS (uint8 images, labels) batches: 8 epochs of 4 batches."""
  rng = np.random.default_rng(0)
  images = rng.integers(
      0, 256, (STEPS_PER_EPOCH * BATCH, *IMAGE_SHAPE), dtype=np.uint8
  )
  labels = rng.integers(0, NUM_CLASSES, len(images)).astype(np.int32)
  batches = []
  for epoch in range(-(-NUM_STEPS // STEPS_PER_EPOCH)):
    order = rng.permutation(len(images))  # a fresh shuffle every epoch
    for b in range(STEPS_PER_EPOCH):
      index = order[b * BATCH : (b + 1) * BATCH]
      batches.append((images[index], labels[index]))
  return batches[:NUM_STEPS]


def _eval_images():
  rng = np.random.default_rng(1)
  return rng.integers(0, 256, (16, *IMAGE_SHAPE), dtype=np.uint8)


def _oracle_trainer(norm: str, running_var: str, params, batch_stats):
  """(oracle model, its LDAM SGD, its step) from our initial variables."""
  model = oracle.ResNet32(NUM_CLASSES, norm, running_var)
  oracle.load_flax_variables(model, params, batch_stats)
  model.double()
  optimizer = oracle.ldam_sgd(model, BASE_RATE, WEIGHT_DECAY)
  return model.train(), optimizer, oracle.make_step(model, optimizer)


def _oracle_step(step, optimizer, index: int, images, labels) -> float:
  """Step `index` of LDAM's loop: the epoch's rate, then the update."""
  rate = oracle.ldam_learning_rate(
      index // STEPS_PER_EPOCH, BASE_RATE, WARMUP_EPOCHS, DECAY_EPOCHS
  )
  oracle.set_learning_rate(optimizer, rate)
  return step(_normalized(images), torch.as_tensor(labels).long()).item()


def _normalized(images) -> torch.Tensor:
  """Our step's normalisation of uint8 NHWC images, as float64 NCHW."""
  x = on_device.normalize_images(images, MEAN, STD, jnp.float64)
  return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


def _oracle_state(model, optimizer, like) -> dict:
  """The oracle's variables and momentum in the layout of our state `like`."""
  return {
      'params': oracle.flax_tree(model, like.params),
      'batch_stats': oracle.flax_tree(model, like.batch_stats),
      'momentum': oracle.flax_tree(model, like.params, optimizer),
  }


def _our_state(state) -> dict:
  return jax.device_get({
      'params': state.params,
      'batch_stats': state.batch_stats,
      'momentum': optax.tree_utils.tree_get(state.opt_state, 'trace'),
  })


def _synced(state, theirs: dict):
  """Our `state` holding the oracle's variables and momentum buffers."""
  theirs = jax.tree.map(jnp.asarray, theirs)
  return state.replace(
      params=theirs['params'],
      batch_stats=theirs['batch_stats'],
      opt_state=optax.tree_utils.tree_set(
          state.opt_state, trace=theirs['momentum']
      ),
  )


@functools.cache
@jax.enable_x64(True)
def _compare(
    norm: str, recipe: Recipe = Recipe(), until: tuple[str, float] | None = None
) -> dict[str, float]:
  """Worst relative difference of each quantity over the 30 steps.

  Float64, every step from the oracle's state (see the top). `until`
  (quantity, difference): stop at the first step where that quantity
  differs by more (the eval logits are then not compared).
  """
  cfg, state, our_step = _our_trainer(norm, recipe)
  params, batch_stats = jax.device_get((state.params, state.batch_stats))
  model, optimizer, their_step = _oracle_trainer(
      norm, 'biased', params, batch_stats
  )
  worst = {}
  for index, (images, labels) in enumerate(_batches()):
    if index:
      state = _synced(state, _oracle_state(model, optimizer, state))
    state, metrics = our_step(state, images, labels)
    their_loss = _oracle_step(their_step, optimizer, index, images, labels)
    found = differences(
        {'loss': float(metrics['loss']), **_our_state(state)},
        {'loss': their_loss, **_oracle_state(model, optimizer, state)},
    )
    worst = {k: max(v, worst.get(k, 0.0)) for k, v in found.items()}
    if until is not None and worst[until[0]] > until[1]:
      return worst
  ours = cfg.model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats},
      on_device.normalize_images(_eval_images(), MEAN, STD, jnp.float64),
      train=False,
  )
  with torch.no_grad():
    theirs = model.eval()(_normalized(_eval_images()))
  worst['eval_logits'] = _relative(ours, theirs.numpy())
  return worst


def _relative(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def _leaves(tree) -> dict[tuple[str, ...], np.ndarray]:
  return {
      tuple(key.key for key in path): leaf
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _worst(ours, theirs) -> float:
  ours, theirs = _leaves(ours), _leaves(theirs)
  assert ours.keys() == theirs.keys()
  return max(_relative(ours[k], theirs[k]) for k in ours)


def differences(ours: dict, theirs: dict) -> dict[str, float]:
  """Relative difference of each quantity after one step (see the top)."""
  result = {
      'loss': abs(ours['loss'] - theirs['loss']) / abs(theirs['loss']),
      'params': _worst(ours['params'], theirs['params']),
      'batch_stats': _worst(ours['batch_stats'], theirs['batch_stats']),
      'momentum': _worst(ours['momentum'], theirs['momentum']),
  }
  if 'nbn_alpha' in ours['params']:
    for quantity in ('params', 'momentum'):
      result[f'alpha {quantity}'] = _relative(
          ours[quantity]['nbn_alpha'], theirs[quantity]['nbn_alpha']
      )
  return result


@pytest.fixture(autouse=True)
def _one_torch_thread():
  """PyTorch's threads spin-wait on a busy 2-core machine (measured: 50x)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.mark.parametrize('norm', ['bn', 'nbn'])
def test_train_step_equals_ldams_recipe_in_pytorch(norm):
  worst = _compare(norm)
  print(
      f'\n{norm}: worst relative difference',
      {k: f'{v:.1e}' for k, v in worst.items()},
  )
  assert max(worst.values()) < TOLERANCE, worst


# Recipe errors on our side, and the quantity that must show each one.
MUTATIONS = {
    'alpha not decayed': ('nbn', Recipe(decay_alpha=False), 'alpha momentum'),
    'BN momentum 0.99': ('bn', Recipe(bn_momentum=0.99), 'batch_stats'),
    'warm-up one epoch short': ('bn', Recipe(warmup_epochs=4), 'params'),
    'warm-up rising every step': (
        'bn',
        Recipe(warmup_granularity='step'),
        'params',
    ),
}


@pytest.mark.parametrize('mutation', MUTATIONS)
def test_comparison_fails_for_a_recipe_error(mutation):
  norm, recipe, quantity = MUTATIONS[mutation]
  shown = (quantity, 10 * TOLERANCE)  # the comparison stops once it is
  difference = _compare(norm, recipe, until=shown)[quantity]
  print(f'\n{mutation}: {quantity} differs by {difference:.1e}')
  assert difference > 10 * TOLERANCE


def _values_per_channel(path: tuple[str, ...]) -> int:
  """n of a BN layer's batch: batch x positions (stages halve the side)."""
  stage = int(path[0][len('layer')]) if path[0].startswith('layer') else 1
  side = IMAGE_SHAPE[0] // 2 ** (stage - 1)
  return BATCH * side * side


@jax.enable_x64(True)
def test_pytorch_running_var_differs_only_by_n_over_n_minus_1():
  _, state, _ = _our_trainer('bn', Recipe())
  params, batch_stats = jax.device_get((state.params, state.batch_stats))
  runs = {}
  for kind in oracle.RUNNING_VARS:
    model, optimizer, step = _oracle_trainer('bn', kind, params, batch_stats)
    losses = [
        _oracle_step(step, optimizer, index, images, labels)
        for index, (images, labels) in enumerate(_batches())
    ]
    runs[kind] = (losses, _oracle_state(model, optimizer, state))
  (losses, unbiased), (biased_losses, biased) = runs['unbiased'], runs['biased']
  # Training never reads the running statistics.
  np.testing.assert_array_equal(losses, biased_losses)
  assert _worst(unbiased['params'], biased['params']) == 0
  # running = 0.9^t * 1 + sum_k 0.1 * 0.9^(t-1-k) * var_k * factor.
  initial = 0.9**NUM_STEPS
  biased_stats, unbiased_stats = (
      _leaves(biased['batch_stats']),
      _leaves(unbiased['batch_stats']),
  )
  for path, value in biased_stats.items():
    if path[-1] == 'mean':
      np.testing.assert_allclose(unbiased_stats[path], value, rtol=1e-5)
    else:
      n = _values_per_channel(path)
      np.testing.assert_allclose(
          unbiased_stats[path] - initial,
          n / (n - 1) * (value - initial),
          rtol=1e-5,
      )
  assert min(map(_values_per_channel, biased_stats)) == BATCH * 2 * 2


def test_oracle_inputs_are_our_normalisation():
  images = _eval_images()
  theirs = oracle.torch_inputs(images, MEAN, STD).permute(0, 2, 3, 1)
  ours = on_device.normalize_images(images, MEAN, STD)
  np.testing.assert_allclose(theirs.numpy(), ours, rtol=0, atol=1e-6)
