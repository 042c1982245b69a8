"""Eval-mode against train-mode accuracy in this repository's trainer.

    python -m bench.experiments.eval_lag_trainer [--config=configs.quickstart]
        [--norms=nbn,bn] [--seeds=0,1,2] [--epochs=1,2,3,4,5,10,20]

`bench.experiments.eval_lag`'s comparison for a config of `train.py` (default the
quickstart: ResNet-8 on the long-tailed digits, SGD, BN momentum 0.9),
built by the run plan and trained by its on-device steps, one step per
call, exactly as `train.py` trains it. After the given epochs, the test
accuracy (%) with BN on:

* eval: the running statistics (what `train.py` evaluates);
* train: batch statistics of test batches (about 100 images each, drawn
  in a fixed shuffled order: test splits are often sorted by class);
* precise: running statistics re-estimated on the next 20 training
  batches of the run's own stream (`nbn_jax.precise_bn`).

The trainer's batches are not changed by the measurement.
"""

import argparse
import importlib

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import on_device
from nbn_jax import precise_bn
from nbn_jax.training import plan as plan_lib

TEST_BATCH = 100
PRECISE_BATCHES = 20


def measure(config, epochs: list[float]) -> dict[float, dict[str, float]]:
  plan = plan_lib.build_plan(config)
  core = plan.core
  cfg = core.step_config
  state = plan.runs.init_state()
  data_key = plan.runs.keys()[1]
  data = on_device.put_on_devices(
      plan.benchmark.train, plan.sampler, core.topology.batch_sharding
  )
  run_step = plan.runs.device_steps(plan.preprocessing, 1)
  # Two evaluators: each remembers its latest step's evaluation.
  evaluator, precise_evaluator = plan.evaluator(), plan.evaluator()
  test = plan.benchmark.test
  # Test splits are often in class order: batches of a shuffled order.
  order = np.random.default_rng(0).permutation(len(test))

  @jax.jit
  def train_mode_hits(variables, images, labels):
    logits, _ = cfg.model.apply(
        variables, cfg.prepare(images), train=True, mutable=['batch_stats']
    )
    return jnp.sum(jnp.argmax(logits, -1) == labels)

  @jax.jit
  def batch(step):
    images, _ = on_device.training_batch(
        data, data_key, step, cfg.global_batch_size, plan.preprocessing
    )
    return cfg.prepare(images)

  out, step = {}, 0
  for epoch in epochs:
    target = int(round(epoch * core.length.steps_per_epoch))
    while step < target:
      state, _ = run_step(state, data, jnp.int32(step))
      step += 1
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    hits = sum(
        int(train_mode_hits(variables, test.images[idx], test.labels[idx]))
        for idx in np.array_split(order, len(test) // TEST_BATCH)
    )
    stats = precise_bn.precise_batch_stats(
        cfg.model,
        variables,
        (batch(jnp.int32(step + k)) for k in range(PRECISE_BATCHES)),
        train=True,
    )
    precise_state = state.replace(batch_stats=stats)
    out[epoch] = {
        'eval': 100 * evaluator(state, test)[0].summary()['top1'],
        'train': 100 * hits / len(test),
        'precise': (
            100 * precise_evaluator(precise_state, test)[0].summary()['top1']
        ),
        'step': step,
    }
  return out


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
      '--config', default='configs.quickstart', help='a config module'
  )
  parser.add_argument('--norms', default='nbn,bn')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--epochs', default='1,2,3,4,5,10,20')
  args = parser.parse_args()
  epochs = [float(e) for e in args.epochs.split(',')]
  seeds = [int(s) for s in args.seeds.split(',')]
  print(
      f'jax {jax.__version__}, {jax.devices()[0].device_kind}; '
      f'{args.config}; test accuracy %, seeds {seeds} separated by /',
      flush=True,
  )
  for norm in args.norms.split(','):
    results = []
    for seed in seeds:
      config = importlib.import_module(args.config).get_config()
      config.norm, config.seed = norm, seed
      results.append(measure(config, epochs))
    print(
        f'\n{norm}: {"epoch":>6} {"step":>5} '
        + ' '.join(f'{m:>12}' for m in ('eval', 'train', 'precise'))
    )
    for epoch in epochs:
      cells = [
          '/'.join(f'{r[epoch][m]:.0f}' for r in results)
          for m in ('eval', 'train', 'precise')
      ]
      print(
          f'{"":{len(norm) + 1}} {epoch:6.1f} {results[0][epoch]["step"]:5d} '
          + ' '.join(f'{c:>12}' for c in cells),
          flush=True,
      )


if __name__ == '__main__':
  main()
