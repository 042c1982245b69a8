"""Train-step time with NBN divided by the same with plain BN, in one run.

    python -m bench.timing.nbn_overhead                      # ResNet-32 and ResNet-50
    python -m bench.timing.nbn_overhead --models=resnet32 --rounds=9

Each model is built twice, identical but for `norm` ('bn' or 'nbn'), and
trained with the trainer's own jitted step, built from a config by the
run plan's builders (`nbn_jax.training.plan`, `steps`:
uint8 input normalisation, softmax cross-entropy, SGD with momentum 0.9 and
coupled weight decay, donated state) on the same synthetic batch. Timings
alternate BN and NBN round by round so drift on the machine hits both; the
ratio printed is the median over rounds of (NBN time / BN time). Absolute
times are printed for context only. `flops` is the ratio of the two compiled
steps' FLOP counts from XLA's cost analysis, which no timing noise affects.

Defaults: ResNet-32 at batch 128 on 32x32 inputs, ResNet-50 at batch 8 on
224x224 inputs on a CPU (--resnet50-batch=256 on a GPU). `--bf16` computes
in bfloat16 (parameters and statistics stay float32); `NBN img/s` is the
NBN model's training throughput on synthetic data:

    python -m bench.timing.nbn_overhead --resnet50-batch=256 --bf16   # on a GPU
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import input_pipeline as ip
from configs import default
from nbn_jax.training import plan, steps

MODELS = {  # name: (config.model, config.dataset, image side)
    'resnet32': ('ResNet32', 'cifar10', 32),
    'resnet50': ('ResNet50', 'imagenet_lt', 224),
}


class Trainer:
  """One model's replicated train state and the trainer's jitted step."""

  def __init__(self, config, images, labels):
    spec = ip.DATASETS[config.dataset]
    core = plan.build_step_plan(
        config, spec, np.ones(spec.num_classes), images.shape[1:]
    )
    self.step = steps.make_train_step(core.step_config)
    self.state = core.runs.init_state()
    sharding = core.topology.batch_sharding
    self.images = jax.device_put(images, sharding)
    self.labels = jax.device_put(labels, sharding)

  def flops(self):
    """FLOPs of one compiled step, from XLA's cost analysis."""
    compiled = self.step.lower(self.state, self.images, self.labels).compile()
    return compiled.cost_analysis()['flops']

  def run(self, num_steps):
    """Seconds per step over `num_steps` steps."""
    start = time.perf_counter()
    for _ in range(num_steps):
      self.state, metrics = self.step(self.state, self.images, self.labels)
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / num_steps


def config_for(name, norm, batch, bf16):
  config = default.get_config()
  config.model, config.dataset, _ = MODELS[name]
  config.norm, config.half_precision = norm, bf16
  config.batch_size = config.lr_batch_size = batch
  config.weight_decay = 5e-4
  return config


def measure(name, batch, rounds, steps_per_round, bf16):
  _, dataset, size = MODELS[name]
  num_classes = ip.DATASETS[dataset].num_classes
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  trainers = {
      norm: Trainer(config_for(name, norm, batch, bf16), images, labels)
      for norm in ('bn', 'nbn')
  }
  flops = {norm: trainer.flops() for norm, trainer in trainers.items()}
  for trainer in trainers.values():  # compile and warm up
    trainer.run(2)
  times = {'bn': [], 'nbn': []}
  for r in range(rounds):
    order = ('bn', 'nbn') if r % 2 == 0 else ('nbn', 'bn')
    for norm in order:
      times[norm].append(trainers[norm].run(steps_per_round))
  ratios = [n / b for n, b in zip(times['nbn'], times['bn'])]
  return {
      'bn_ms': 1e3 * statistics.median(times['bn']),
      'nbn_ms': 1e3 * statistics.median(times['nbn']),
      'ratio': statistics.median(ratios),
      'ratio_min': min(ratios),
      'ratio_max': max(ratios),
      'flops_ratio': flops['nbn'] / flops['bn'],
  }


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--models', default='resnet32,resnet50')
  parser.add_argument('--resnet32-batch', type=int, default=128)
  parser.add_argument('--resnet50-batch', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--steps-per-round', type=int, default=3)
  parser.add_argument(
      '--bf16', action='store_true', help='bfloat16 compute, fp32 parameters'
  )
  args = parser.parse_args()
  dtype = jnp.bfloat16 if args.bf16 else jnp.float32

  print(
      f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
      f'({jax.default_backend()}), {jax.device_count()} device(s), '
      f'{jnp.dtype(dtype).name} compute'
  )
  print(
      f'{"model":10} {"batch":>5} {"BN ms":>9} {"NBN ms":>9} '
      f'{"NBN img/s":>9} {"NBN/BN":>7} {"flops":>7}  '
      f'(NBN/BN min..max over {args.rounds} rounds)'
  )
  for name in args.models.split(','):
    batch = getattr(args, f'{name}_batch')
    r = measure(name, batch, args.rounds, args.steps_per_round, args.bf16)
    print(
        f'{name:10} {batch:5d} {r["bn_ms"]:9.1f} {r["nbn_ms"]:9.1f} '
        f'{1e3 * batch / r["nbn_ms"]:9.0f} {r["ratio"]:7.3f} '
        f'{r["flops_ratio"]:7.4f}  '
        f'({r["ratio_min"]:.3f}..{r["ratio_max"]:.3f})'
    )


if __name__ == '__main__':
  main()
