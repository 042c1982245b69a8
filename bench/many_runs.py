"""K training runs in one program against one run alone, in one process.

    python bench/many_runs.py                          # K = 1, 2, 4, 8, 16
    python bench/many_runs.py --runs=1,2 --run-axis=vmap,unroll   # both maps

ResNet-32 (NBN) trains on synthetic CIFAR-10-LT-sized data (12,406 32x32
images, IF 100 class counts) with the on-device input path, batch 128,
SGD with momentum, weight decay and the step schedule, as the trainer does
(`nbn_jax.training.runs`; JAX only, no TensorFlow). The baseline 'single' is
the single-run trainer's on-device input (`inputs.OnDeviceInput`).

Every program is compiled and warmed up first; then rounds time each
program for `--dispatches` calls in turn (so drift on the machine hits all)
and the medians are printed:

* step ms: wall time of one step of all K runs;
* img/s: images per second summed over the runs;
* per-run: step ms / K divided by the single run's step ms (the goal on a
  CPU: <= 1.1 at K = 2; on an accelerator well below 1);
* 200 ep s: the implied wall time of K full 200-epoch runs (97 steps per
  epoch), training steps only;
* 1st call s: the first call: compiling, plus one dispatch.

`--run-axis` maps the runs with `jax.vmap` (convolutions become grouped
convolutions) or unrolls them in the one program ('unroll').
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import input_pipeline as ip
from input_pipeline import on_device
from nbn_jax import models
from nbn_jax.training import inputs, losses, optim, runs, steps
from nbn_jax.training.topology import make_topology

NUM_CLASSES = 10
COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # IF 100
STEPS_PER_EPOCH = 97
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def synthetic_split() -> ip.Split:
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(NUM_CLASSES), COUNTS).astype(np.int32)
  images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
  return ip.Split('synthetic CIFAR-10-LT', labels, NUM_CLASSES, images=images)


def step_config(topology, batch, dtype) -> steps.StepConfig:
  return steps.StepConfig(
      model=models.ResNet32(num_classes=NUM_CLASSES, dtype=dtype),
      loss_fn=losses.make_loss('cross_entropy', np.array(COUNTS)),
      topology=topology,
      global_batch_size=batch,
      prepare=functools.partial(
          on_device.normalize_images,
          mean=CIFAR_MEAN,
          std=CIFAR_STD,
          dtype=dtype,
      ),
      num_classes=NUM_CLASSES,
  )


def optimiser(batch: int) -> optax.GradientTransformation:
  schedule = optim.learning_rate_schedule(
      'step',
      0.1 * batch / 128,
      STEPS_PER_EPOCH,
      200 * STEPS_PER_EPOCH,
      5.0,
      (160.0, 180.0),
      0.01,
  )
  return optim.sgd(schedule, 2e-4)


class Program:
  """One training program and its state: `num_runs` runs side by side, or
  the single-run trainer's on-device input (num_runs None)."""

  def __init__(self, split, num_runs, run_axis, batch, dispatch, dtype):
    self.num_runs = num_runs or 1
    self.steps_per_call = dispatch
    preprocessing = ip.Preprocessing('cifar', crop_padding=4)
    sampler = ip.SamplerSpec('instance')
    tx = optimiser(batch)
    if num_runs is None:
      topology = make_topology('global')
      cfg = step_config(topology, batch, dtype)
      init_key, data_key = jax.random.split(jax.random.key(0))
      self.state = steps.create_train_state(
          cfg.model, tx, init_key, (32, 32, 3), topology
      )
      single = inputs.OnDeviceInput(
          on_device.put_on_devices(split, sampler, topology.batch_sharding),
          functools.partial(inputs.device_steps, cfg, data_key, preprocessing),
          dispatch,
      )
      self._call = lambda state: single.run(state, 0, dispatch)
    else:
      layout = runs.run_layout(
          num_runs, jax.device_count(), batch, batch, 'global'
      )
      topology = make_topology('global', run_shards=layout.run_shards)
      cfg = step_config(topology, batch, dtype)
      init_keys, data_keys = runs.run_keys(0, num_runs)
      self.state = runs.create_train_states(
          cfg.model, tx, init_keys, (32, 32, 3), topology
      )
      data = on_device.put_on_devices(split, sampler, topology.batch_sharding)
      train = runs.make_device_train_steps(
          cfg, data_keys, preprocessing, dispatch, run_axis
      )
      self._call = lambda state: train(state, data)

  def time(self, calls: int) -> float:
    """Seconds per step over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
      self.state, metrics = self._call(self.state)
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / (calls * self.steps_per_call)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs', default='1,2,4,8,16')
  parser.add_argument(
      '--run-axis',
      default=runs.default_run_axis(),
      help='vmap, unroll or both (default: unroll on CPU, else vmap)',
  )
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--dispatches', type=int, default=2)
  parser.add_argument(
      '--steps-per-dispatch',
      type=int,
      default=25,
      help='steps per jitted call on accelerators (always 1 on a CPU)',
  )
  parser.add_argument('--bf16', action='store_true')
  args = parser.parse_args()
  dtype = jnp.bfloat16 if args.bf16 else jnp.float32
  dispatch = inputs.steps_per_dispatch(args.steps_per_dispatch)

  print(
      f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
      f'({jax.default_backend()}), {jax.device_count()} device(s), ResNet-32 '
      f'batch {args.batch} per run, {jnp.dtype(dtype).name}, {dispatch} '
      'step(s) per dispatch'
  )
  split = synthetic_split()
  specs = [('single', None, None)] + [
      (f'{run_axis} K={k}', int(k), run_axis)
      for run_axis in args.run_axis.split(',')
      for k in args.runs.split(',')
  ]
  programs, first_call = {}, {}
  for name, num_runs, run_axis in specs:
    programs[name] = Program(
        split, num_runs, run_axis, args.batch, dispatch, dtype
    )
    start = time.perf_counter()
    programs[name].time(1)
    first_call[name] = time.perf_counter() - start
    print(f'  {name}: first call {first_call[name]:.1f} s', flush=True)
  times = {name: [] for name in programs}
  for r in range(args.rounds):
    names = list(programs) if r % 2 == 0 else list(programs)[::-1]
    for name in names:
      times[name].append(programs[name].time(args.dispatches))
    print(f'  round {r + 1} of {args.rounds} done', flush=True)
  single = statistics.median(times['single'])
  print(
      f'{"program":14} {"step ms":>9} {"img/s":>8} {"per-run":>8} '
      f'{"200 ep s":>9} {"1st call s":>10}'
  )
  for name, program in programs.items():
    step = statistics.median(times[name])
    k = program.num_runs
    print(
        f'{name:14} {1e3 * step:9.1f} {k * args.batch / step:8.0f} '
        f'{step / k / single:8.3f} {200 * STEPS_PER_EPOCH * step:9.0f} '
        f'{first_call[name]:10.1f}'
    )


if __name__ == '__main__':
  main()
