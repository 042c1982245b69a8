"""The trainer's side of the data: training input and exact evaluation.

`TrainingInput` runs a number of train steps on batches it provides; each
implementation owns how it dispatches them:

* `OnDeviceInput`: the training split lives on the devices; each step draws
  and augments its batch inside the jitted program, several steps per call
  on accelerators (`input_pipeline.on_device`).
* `TfDataInput`: host batches from the tf.data pipeline, one call per step
  (`input_pipeline.tf_pipeline`).

`Evaluator` counts per-class hits over a split's padded, host-sharded
batches, so no example is dropped or counted twice.
"""

import abc
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

import input_pipeline as ip
from input_pipeline import image_check, on_device
from input_pipeline.evaluation import eval_batches
from input_pipeline.samplers import host_positions
from nbn_jax.training import steps
from nbn_jax.training.metrics import LongTailAccuracy

Metrics = dict[str, jax.Array]  # per-step arrays, left on the devices


def to_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """This host's slice of a batch -> the global batch laid out by `sharding`."""
  return jax.make_array_from_process_local_data(sharding, array)


class TrainingInput(abc.ABC):
  """Runs train steps on the batches of one input path.

  Attributes:
    steps_per_call: steps one jitted call runs; the loop asks for at most
      this many at a time, so it can stop between calls (a preemption).
  """

  steps_per_call: int

  @abc.abstractmethod
  def run(
      self, state: steps.TrainState, first_step: int, num_steps: int
  ) -> tuple[steps.TrainState, Metrics]:
    """Runs steps `first_step` .. `first_step + num_steps - 1`.

    Returns:
      (new state, {'loss': (num_steps,), 'correct': (num_steps,)}).
    """


def steps_per_dispatch(requested: int) -> int:
  """Steps per jitted call of the on-device path on this backend.

  On accelerators several steps run in one `lax.scan`, which saves a
  dispatch per step. XLA:CPU runs the convolutions inside a loop body about
  35x slower than outside one (measured: ResNet-32, 1.1 s vs 37 to 41 s per
  step), so on CPU every step is its own call.
  """
  return 1 if jax.default_backend() == 'cpu' else requested


class OnDeviceInput(TrainingInput):
  """Batches drawn and augmented on the devices, inside the train step.

  Step s's batch depends only on (key, s): a resumed run continues the same
  stream. Augmentation: 'cifar' pad-crop-flip, 'none' as stored.
  """

  def __init__(
      self,
      cfg: steps.StepConfig,
      split: ip.Split,
      sampler: ip.SamplerSpec,
      preprocessing: ip.Preprocessing,
      key: jax.Array,
      steps_per_call: int,
  ):
    if preprocessing.kind not in ('cifar', 'none'):
      raise ValueError(
          'the on-device path augments in-memory data only; preprocessing '
          f'kind={preprocessing.kind!r} needs the tf.data path.'
      )
    self._data = on_device.put_on_devices(
        split, sampler, cfg.topology.batch_sharding
    )
    self.steps_per_call = steps_per_dispatch(steps_per_call)
    if self.steps_per_call != steps_per_call:
      logging.info(
          'One step per dispatch on %s (XLA:CPU is slow in loops).',
          jax.default_backend(),
      )
    self._single = _device_steps(cfg, key, preprocessing, 1)
    self._many = (
        self._single
        if self.steps_per_call == 1
        else _device_steps(cfg, key, preprocessing, self.steps_per_call)
    )

  def run(self, state, first_step, num_steps):
    del first_step  # the state's own step keys the batches
    metrics = []
    while num_steps:
      count = self.steps_per_call if num_steps >= self.steps_per_call else 1
      state, chunk = (self._many if count > 1 else self._single)(
          state, self._data
      )
      metrics.append(chunk)
      num_steps -= count
    return state, jax.tree.map(lambda *m: jnp.concatenate(m), *metrics)


def _device_steps(
    cfg: steps.StepConfig,
    key: jax.Array,
    preprocessing: ip.Preprocessing,
    num_steps: int,
):
  """jit: (state, DeviceData) -> (state, per-step metrics) for `num_steps`."""
  sample_key, crop_key = jax.random.split(key)

  def one_step(state, data):
    images, labels = on_device.sample_batch(
        data, sample_key, state.step, cfg.global_batch_size
    )
    if preprocessing.kind == 'cifar':
      images = on_device.random_crop_flip(
          images,
          jax.random.fold_in(crop_key, state.step),
          preprocessing.crop_padding,
      )
    return steps.apply_batch(cfg, state, images, labels)

  def run(state, data):
    if num_steps == 1:  # no loop: see `steps_per_dispatch`
      state, metrics = one_step(state, data)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(lambda s, _: one_step(s, data), state, length=num_steps)

  return jax.jit(run, donate_argnums=0)


class TfDataInput(TrainingInput):
  """Host batches from tf.data, one jitted call per step.

  The pipeline is built at the first `run`, from its first step, so a
  resumed run reads exactly the batches an uninterrupted one would.
  """

  steps_per_call = 1

  def __init__(
      self,
      cfg: steps.StepConfig,
      split: ip.Split,
      sampler: ip.SamplerSpec,
      preprocessing: ip.Preprocessing,
      seed: int,
  ):
    self._cfg = cfg
    self._split = split
    self._sampler = sampler
    self._preprocessing = preprocessing
    self._seed = seed
    self._train_step = steps.make_train_step(cfg)
    self._batches = None
    self._next_step = None

  def _stream(self, first_step: int):
    from input_pipeline import tf_pipeline  # imports TensorFlow

    dataset = tf_pipeline.train_dataset(
        self._split,
        self._preprocessing,
        global_batch_size=self._cfg.global_batch_size,
        sampler=self._sampler,
        seed=self._seed,
        start_step=first_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    stream = ip.IndexStream(self._split.labels, self._sampler, self._seed)

    def batch_indices(k: int) -> np.ndarray:
      """This host's example indices of the k-th batch from `first_step`."""
      positions = host_positions(
          first_step + k,
          1,
          self._cfg.global_batch_size,
          jax.process_index(),
          jax.process_count(),
      )
      return stream[positions][0]

    # An image that fails to decode stops the run with one line naming it.
    return image_check.naming_bad_images(
        tf_pipeline.as_numpy(dataset), self._split, batch_indices
    )

  def run(self, state, first_step, num_steps):
    if self._next_step != first_step:
      self._batches = self._stream(first_step)
    sharding = self._cfg.topology.batch_sharding
    metrics = []
    for _ in range(num_steps):
      batch = next(self._batches)
      state, step_metrics = self._train_step(
          state,
          to_global(batch['image'], sharding),
          to_global(batch['label'], sharding),
      )
      metrics.append(step_metrics)
    self._next_step = first_step + num_steps
    return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """Exact long-tail accuracy of a train state on a split.

  Attributes:
    cfg: the step settings (model, topology, input preparation).
    preprocessing: the eval-time resizing of image files.
    batch_size: global eval batch (the last one is padded and masked).
    groups: Many/Medium/Few class ids.
  """

  cfg: steps.StepConfig
  preprocessing: ip.Preprocessing
  batch_size: int
  groups: dict[str, np.ndarray]
  _step: Any = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    object.__setattr__(self, '_step', steps.make_eval_step(self.cfg))

  def __call__(
      self, state: steps.TrainState, split: ip.Split
  ) -> LongTailAccuracy:
    sharding = self.cfg.topology.batch_sharding
    accuracy = LongTailAccuracy.empty(self.cfg.num_classes, self.groups)
    for batch in eval_batches(
        split,
        self.preprocessing,
        self.batch_size,
        jax.process_index(),
        jax.process_count(),
    ):
      correct, total = self._step(
          state,
          *(to_global(batch[k], sharding) for k in ('image', 'label', 'mask')),
      )
      accuracy.update(*jax.device_get((correct, total)))
    if accuracy.num_examples != len(split):
      raise RuntimeError(
          f'evaluated {accuracy.num_examples} of {len(split)} examples of '
          f'{split.name}'
      )
    return accuracy
