"""Train-step time with NBN divided by the same with plain BN, in one run.

    python bench/nbn_overhead.py                      # ResNet-32 and ResNet-50
    python bench/nbn_overhead.py --models=resnet32 --rounds=9

Each model is built twice, identical but for `norm` ('bn' or 'nbn'), and
trained with the same jitted SGD step (softmax cross-entropy, momentum 0.9,
coupled weight decay, donated state) on the same synthetic batch. Timings
alternate BN and NBN round by round so drift on the machine hits both; the
ratio printed is the median over rounds of (NBN time / BN time). Absolute
times are printed for context only. `flops` is the ratio of the two compiled
steps' FLOP counts from XLA's cost analysis, which no timing noise affects.

Defaults: ResNet-32 at batch 128 on 32x32 inputs, ResNet-50 at batch 8 on
224x224 inputs on a CPU (--resnet50-batch=256 on a GPU).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from nbn_jax import models

MODELS = {
    'resnet32': (models.ResNet32, 10, 32),
    'resnet50': (models.ResNet50, 1000, 224),
}


def make_step(model, learning_rate=0.1, weight_decay=5e-4):
  """A jitted (params, batch_stats, opt_state, images, labels) -> same step."""
  tx = optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=0.9),
  )

  def step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': batch_stats},
          images,
          train=True,
          mutable=['batch_stats'],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return loss.mean(), updates['batch_stats']

    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  return jax.jit(step, donate_argnums=(0, 1, 2)), tx


class Trainer:
  """Holds one model's state and times its steps."""

  def __init__(self, model, images, labels):
    variables = jax.jit(
        lambda: model.init(jax.random.key(0), images, train=False)
    )()
    self.step, tx = make_step(model)
    self.state = (variables['params'], variables['batch_stats'])
    self.state += (tx.init(self.state[0]),)
    self.images, self.labels = images, labels

  def flops(self):
    """FLOPs of one compiled step, from XLA's cost analysis."""
    compiled = self.step.lower(*self.state, self.images, self.labels).compile()
    return compiled.cost_analysis()['flops']

  def run(self, steps):
    """Seconds per step over `steps` steps."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state = self.step(*self.state, self.images, self.labels)
    jax.block_until_ready(self.state)
    return (time.perf_counter() - start) / steps


def measure(name, batch, rounds, steps_per_round):
  model_def, num_classes, size = MODELS[name]
  key_images, key_labels = jax.random.split(jax.random.key(1))
  images = jax.random.normal(key_images, (batch, size, size, 3))
  labels = jax.random.randint(key_labels, (batch,), 0, num_classes)
  trainers = {
      norm: Trainer(
          model_def(num_classes=num_classes, norm=norm), images, labels
      )
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
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='resnet32,resnet50')
  parser.add_argument('--resnet32-batch', type=int, default=128)
  parser.add_argument('--resnet50-batch', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--steps-per-round', type=int, default=3)
  args = parser.parse_args()

  print(
      f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
      f'({jax.default_backend()}), {jax.device_count()} device(s)'
  )
  print(
      f'{"model":10} {"batch":>5} {"BN ms":>9} {"NBN ms":>9} '
      f'{"NBN/BN":>7} {"flops":>7}  (NBN/BN min..max over {args.rounds} rounds)'
  )
  for name in args.models.split(','):
    batch = getattr(args, f'{name}_batch')
    r = measure(name, batch, args.rounds, args.steps_per_round)
    print(
        f'{name:10} {batch:5d} {r["bn_ms"]:9.1f} {r["nbn_ms"]:9.1f} '
        f'{r["ratio"]:7.3f} {r["flops_ratio"]:7.4f}  '
        f'({r["ratio_min"]:.3f}..{r["ratio_max"]:.3f})'
    )


if __name__ == '__main__':
  main()
