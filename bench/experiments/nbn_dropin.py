"""NBN as a drop-in in flax's ImageNet ResNet: zero-init and clipping choices.

    python -m bench.experiments.nbn_dropin [--steps=300] [--seeds=0,1]

flax's examples/imagenet ResNet (tests/flax_imagenet_resnet.py: last BN of
each block zero-initialised, statistics pmean'd over 'batch'), narrowed to
16 filters and stages (1, 1, 1), trained with SGD (lr 0.1, momentum 0.9,
batch 64) on scikit-learn's 8x8 digits (1,497 train / 300 test images,
balanced, no download). Every BN of the network is swapped, as a user of
the drop-in would do. Prints, per variant and seed, the first losses, the
mean loss of steps 1-50 and of the last 20 steps, and the test accuracy:

* BN: `nn.BatchNorm` (the example as shipped).
* NBN, zero start (ours): ``scale_init=zeros`` -> direction ones, alpha 0.
* NBN, ones: the zero init ignored (scale ones, alpha 1; the reference's
  init of every NBN layer).
* NBN, raw zero: the zero vector kept with alpha 1 (what a naive port does).
* NBN + clip_by_global_norm(1): optax's clipping, and the same with the raw
  NBN vectors left out of the global norm (`nbn_jax.clipping`).

Also prints the global gradient norm at step 0 for BN and NBN, with and
without the raw NBN vectors. Numbers, not pass/fail; one CPU device.
"""

import argparse
import functools
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402  (after the platform is chosen)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from nbn_jax import NormalizedBatchNorm  # noqa: E402
from nbn_jax.clipping import (  # noqa: E402
    clip_by_global_norm_outside_nbn,
    global_norm_outside_nbn,
)
from nbn_jax.inspection import nbn_layer_paths  # noqa: E402
from tests import flax_imagenet_resnet  # noqa: E402

BATCH = 64


def digits():
  """(train images, train labels, test images, test labels), NHWC float."""
  data = load_digits()
  images = (data.images[..., None] / 16.0 - 0.3) / 0.37
  order = np.random.default_rng(0).permutation(len(images))
  images, labels = images[order].astype(np.float32), data.target[order]
  return images[300:], labels[300:], images[:300], labels[:300]


def model_for(norm_cls):
  return flax_imagenet_resnet.ResNet(
      stage_sizes=[1, 1, 1],
      block_cls=flax_imagenet_resnet.ResNetBlock,
      num_classes=10,
      num_filters=16,
      norm_cls=norm_cls,
  )


def restart_zero_init_layers(params, scale: float):
  """Each zero-started layer (alpha 0) gets raw scale `scale`, alpha 1."""

  def fix(tree):
    if isinstance(tree, dict):
      if tree.get('alpha') is not None and float(tree['alpha']) == 0.0:
        return {
            **tree,
            'scale': jnp.full_like(tree['scale'], scale),
            'alpha': jnp.ones_like(tree['alpha']),
        }
      return {k: fix(v) for k, v in tree.items()}
    return tree

  return fix(params)


def train(variant: str, seed: int, steps: int, data):
  norm_cls = nn.BatchNorm if variant == 'BN' else NormalizedBatchNorm

  model = model_for(norm_cls)
  x_train, y_train, x_test, y_test = data
  variables = jax.jit(
      lambda x: model.init(jax.random.key(seed), x, train=False)
  )(x_train[:1])
  params, batch_stats = variables['params'], variables['batch_stats']
  if variant in ('NBN, ones', 'NBN, raw zero'):
    params = restart_zero_init_layers(params, variant == 'NBN, ones')
  sgd = optax.sgd(0.1, momentum=0.9)
  paths = nbn_layer_paths(model, (1, 8, 8, 1))
  tx = {
      'NBN + clip 1': optax.chain(optax.clip_by_global_norm(1.0), sgd),
      'NBN + clip 1 outside NBN': optax.chain(
          clip_by_global_norm_outside_nbn(1.0, paths), sgd
      ),
  }.get(variant, sgd)
  step = flax_imagenet_resnet.pmapped_train_step(model, tx)
  state = jax.tree.map(
      lambda a: a[None],
      flax_imagenet_resnet.ExampleState(params, batch_stats, tx.init(params)),
  )
  rng = np.random.default_rng(seed)
  losses = []
  for _ in range(steps):
    batch = rng.choice(len(x_train), BATCH, replace=False)
    state, loss = step(state, x_train[batch][None], y_train[batch][None])
    losses.append(float(loss[0]))
  state = jax.tree.map(lambda a: a[0], state)
  final = {'params': state.params, 'batch_stats': state.batch_stats}
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(final, x_test)
  accuracy = float(np.mean(np.argmax(logits, -1) == y_test))
  return losses, accuracy


def first_gradient_norms(data):
  """Global gradient norm at step 0: BN, NBN, NBN outside its raw vectors."""
  x, y = data[0][:BATCH], data[1][:BATCH]
  norms = {}
  for name, norm_cls in (('BN', nn.BatchNorm), ('NBN', NormalizedBatchNorm)):
    model = model_for(norm_cls)
    variables = model.init(jax.random.key(0), x[:1], train=False)

    @functools.partial(jax.pmap, axis_name='batch')
    def grads(params, images, labels):
      def loss(params):
        logits, _ = model.apply(
            {**variables, 'params': params}, images, mutable=['batch_stats']
        )
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, labels
        ).mean()

      return jax.grad(loss)(params)

    g = jax.tree.map(
        lambda a: a[0],
        grads(
            jax.tree.map(lambda a: a[None], variables['params']),
            x[None],
            y[None],
        ),
    )
    norms[name] = float(optax.tree.norm(g))
    if name == 'NBN':
      paths = nbn_layer_paths(model, (1, 8, 8, 1))
      norms['NBN outside raw vectors'] = float(
          global_norm_outside_nbn(g, paths)
      )
  return norms


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--seeds', default='0,1')
  args = parser.parse_args()
  data = digits()
  for name, value in first_gradient_norms(data).items():
    print(f'step-0 global gradient norm, {name}: {value:.4g}')
  variants = (
      'BN',
      'NBN, zero start',
      'NBN, ones',
      'NBN, raw zero',
      'NBN + clip 1',
      'NBN + clip 1 outside NBN',
  )
  print(
      f'{"variant":26s} seed  first 5 losses                  '
      'steps 1-50  last-20 loss  test acc'
  )
  for variant in variants:
    for seed in (int(s) for s in args.seeds.split(',')):
      losses, accuracy = train(variant, seed, args.steps, data)
      first = ' '.join(f'{l:.3f}' for l in losses[:5])
      print(
          f'{variant:26s} {seed:4d}  {first}  {np.mean(losses[:50]):10.4f}'
          f'  {np.mean(losses[-20:]):12.4f}  {accuracy:8.4f}'
      )


if __name__ == '__main__':
  main()
