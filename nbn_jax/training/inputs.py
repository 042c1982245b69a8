"""The trainer's side of the training data: the two input paths.

`TrainingInput` runs a number of train steps on batches it provides; each
implementation owns how it dispatches them:

* `OnDeviceInput`: the training split lives on the devices; each step draws
  and augments its batch inside the jitted program, several steps per call
  on accelerators (`input_pipeline.on_device`).
* `TfDataInput`: host batches from the tf.data pipeline, one call per step
  (`input_pipeline.tf_pipeline`).

The programs they call come from the run strategy (`nbn_jax.training.runs`),
so both paths serve one run or K alike; K runs read K tf.data streams
stacked on a leading run axis (`train_batches`).
"""

import abc
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

import input_pipeline as ip
from input_pipeline import image_check, on_device
from input_pipeline.samplers import host_positions
from nbn_jax.training import steps

INPUT_PATHS = ('on_device', 'tf_data')
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
      make_steps: n -> jit (state, data, the loop's step) -> (state,
        metrics of n steps) (`runs.Runs.device_steps`).
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
    metrics = []
    step = first_step
    while step < first_step + num_steps:
      left = first_step + num_steps - step
      count = self.steps_per_call if left >= self.steps_per_call else 1
      state, chunk = (self._many if count > 1 else self._single)(
          state, self._data, step
      )
      metrics.append(chunk)
      step += count
    return state, jax.tree.map(lambda *m: jnp.concatenate(m), *metrics)


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
      stream: first step -> this host's batches from that step on
        (`runs.Runs.train_stream`).
      train_step: jit (state, images, labels, the loop's step) -> (state,
        metrics) (`runs.Runs.train_step`).
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
          first_step + len(metrics),
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


def train_batches(
    split: ip.Split,
    preprocessing: ip.Preprocessing,
    sampler: ip.SamplerSpec,
    global_batch_size: int,
    seeds: list[int],
    first_step: int,
) -> Iterator[dict[str, np.ndarray]]:
  """K tf.data training streams, one per seed, stacked.

  Stream k is `tf_data_stream` with `seeds[k]`, the one a single run
  with that seed reads. Yields {'image': (K, per_host_batch, H, W, C)
  uint8, 'label': (K, per_host_batch)}.
  """
  return stack_runs([
      tf_data_stream(
          split, preprocessing, sampler, global_batch_size, s, first_step
      )
      for s in seeds
  ])


def stack_runs(
    streams: Iterable[Iterator[dict[str, np.ndarray]]],
) -> Iterator[dict[str, np.ndarray]]:
  """Zips per-run batch streams into batches with a leading run axis."""
  for batches in zip(*streams):
    yield {name: np.stack([b[name] for b in batches]) for name in batches[0]}
