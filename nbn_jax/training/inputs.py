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
import functools
from typing import Callable, Iterator

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

  Step s's batch depends only on (the run's data key, s): a resumed run
  continues the same stream (`on_device.training_batch`).
  """

  def __init__(
      self,
      data: on_device.DeviceData,
      make_steps: Callable[[int], Callable],
      steps_per_call: int,
  ):
    """
    Args:
      data: the training split on the devices.
      make_steps: n -> jit (state, data) -> (state, metrics of n steps):
        `device_steps` (one run) or `runs.make_device_train_steps`.
      steps_per_call: steps per jitted call on accelerators (1 on CPU).
    """
    self._data = data
    self.steps_per_call = steps_per_dispatch(steps_per_call)
    if self.steps_per_call != steps_per_call:
      logging.info(
          'One step per dispatch on %s (XLA:CPU is slow in loops).',
          jax.default_backend(),
      )
    self._single = make_steps(1)
    self._many = (
        self._single
        if self.steps_per_call == 1
        else make_steps(self.steps_per_call)
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


def device_steps(
    cfg: steps.StepConfig,
    key: jax.Array,
    preprocessing: ip.Preprocessing,
    num_steps: int,
):
  """jit: (state, DeviceData) -> (state, per-step metrics) for `num_steps`."""

  def one_step(state, data):
    images, labels = on_device.training_batch(
        data, key, state.step, cfg.global_batch_size, preprocessing
    )
    return steps.apply_batch(cfg, state, images, labels)

  return jax.jit(
      functools.partial(scan_steps, one_step, num_steps), donate_argnums=0
  )


def scan_steps(one_step, num_steps: int, state, data):
  """`num_steps` of `one_step`, metrics stacked on a leading step axis."""
  if num_steps == 1:  # no loop: see `steps_per_dispatch`
    state, metrics = one_step(state, data)
    return state, jax.tree.map(lambda m: m[None], metrics)
  return jax.lax.scan(lambda s, _: one_step(s, data), state, length=num_steps)


class TfDataInput(TrainingInput):
  """Host batches from tf.data, one jitted call per step.

  The stream is opened at the first `run`, from its first step, so a
  resumed run reads exactly the batches an uninterrupted one would.
  """

  steps_per_call = 1

  def __init__(
      self,
      stream: Callable[[int], Iterator[dict[str, np.ndarray]]],
      train_step: Callable,
      sharding: NamedSharding,
  ):
    """
    Args:
      stream: first step -> this host's batches from that step on:
        `tf_data_stream` (one run) or `runs.train_batches` (K stacked).
      train_step: jit (state, images, labels) -> (state, metrics).
      sharding: the global layout of a batch.
    """
    self._stream = stream
    self._train_step = train_step
    self._sharding = sharding
    self._batches = None
    self._next_step = None

  def run(self, state, first_step, num_steps):
    if self._next_step != first_step:
      self._batches = self._stream(first_step)
    metrics = []
    for _ in range(num_steps):
      batch = next(self._batches)
      state, step_metrics = self._train_step(
          state,
          to_global(batch['image'], self._sharding),
          to_global(batch['label'], self._sharding),
      )
      metrics.append(step_metrics)
    self._next_step = first_step + num_steps
    return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)


def tf_data_stream(
    split: ip.Split,
    preprocessing: ip.Preprocessing,
    sampler: ip.SamplerSpec,
    global_batch_size: int,
    seed: int,
    first_step: int,
) -> Iterator[dict[str, np.ndarray]]:
  """One run's host batches from `first_step` on; names undecodable files."""
  from input_pipeline import tf_pipeline  # imports TensorFlow

  dataset = tf_pipeline.train_dataset(
      split,
      preprocessing,
      global_batch_size=global_batch_size,
      sampler=sampler,
      seed=seed,
      start_step=first_step,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  stream = ip.IndexStream(split.labels, sampler, seed)

  def batch_indices(k: int) -> np.ndarray:
    """This host's example indices of the k-th batch from `first_step`."""
    positions = host_positions(
        first_step + k,
        1,
        global_batch_size,
        jax.process_index(),
        jax.process_count(),
    )
    return stream[positions][0]

  # An image that fails to decode stops the run with one line naming it.
  return image_check.naming_bad_images(
      tf_pipeline.as_numpy(dataset), split, batch_indices
  )


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """Exact long-tail accuracy of each run of a train state on a split.

  Attributes:
    eval_step: jit (state, images, labels, mask) -> per-class (correct,
      total), (C,) each for one run (`steps.make_eval_step`) or (K, C) for
      K stacked runs (`runs.make_eval_step`).
    sharding: the global layout of an eval batch.
    preprocessing: the eval-time resizing of image files.
    batch_size: global eval batch (the last one is padded and masked).
    groups: Many/Medium/Few class ids.
  """

  eval_step: Callable
  sharding: NamedSharding
  preprocessing: ip.Preprocessing
  batch_size: int
  groups: dict[str, np.ndarray]

  def __call__(
      self, state: steps.TrainState, split: ip.Split
  ) -> list[LongTailAccuracy]:
    """One accuracy per run (a list of one for a single run)."""
    correct = total = 0
    for batch in eval_batches(
        split,
        self.preprocessing,
        self.batch_size,
        jax.process_index(),
        jax.process_count(),
    ):
      hits = self.eval_step(
          state,
          *(
              to_global(batch[k], self.sharding)
              for k in ('image', 'label', 'mask')
          ),
      )
      batch_correct, batch_total = jax.device_get(hits)
      correct, total = correct + batch_correct, total + batch_total
    runs = []
    for run_correct, run_total in zip(
        np.atleast_2d(correct), np.atleast_2d(total)
    ):
      accuracy = LongTailAccuracy.empty(len(run_correct), self.groups)
      accuracy.update(run_correct, run_total)
      if accuracy.num_examples != len(split):
        raise RuntimeError(
            f'evaluated {accuracy.num_examples} of {len(split)} examples of '
            f'{split.name}'
        )
      runs.append(accuracy)
    return runs
