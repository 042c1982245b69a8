"""Eval-mode against train-mode accuracy early in training, BN and NBN.

    python -m bench.experiments.eval_lag [--seeds=0,1,2] [--steps=400] [--arms=...]

flax's NNX MNIST tutorial CNN (conv 32 -> dropout 0.025 -> BN -> relu ->
avg pool, conv 64 -> BN -> relu -> avg pool, dense 256 -> dropout -> relu,
dense 10; adamw(0.005, b1=0.9), batch 32) with `nnx.BatchNorm` or
`nbn_jax.nnx.NormalizedBatchNorm`, trained on scikit-learn's bundled 8x8
digits (no download): 1,437 training and 360 test images (a stratified
80/20 split, seed 0), upsampled to 28x28 (bilinear) so the network is the
tutorial's (3136 features into the first dense layer).

At each evaluation step, test accuracy (%) with the BN layers in:

* eval: running statistics (what `model.eval()` uses);
* train: batch statistics of the test batches (40 images each), dropout
  off: what the parameters can do;
* precise: running statistics re-estimated on 20 training batches
  (`nbn_jax.precise_bn.update_bn_stats_nnx`);
* fix mean / fix var: only the means (the running variances kept), or
  only the variances, re-estimated: which of the two statistics is stale.

And per BN layer: the running variance / the precise one (channel mean),
the running mean's error in precise standard deviations, and the
per-channel |effective bias| / |effective scale| (channel mean; NBN: its
alpha cancels). An arm is a norm, a momentum (the tutorial: flax's 0.99)
and an NBN bias init; `--arms` picks from ARMS.
"""

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from nbn_jax import precise_bn
from nbn_jax.nnx import NormalizedBatchNorm
from nbn_jax.normalization import effective_params

BATCH = 32
TEST_BATCH = 40
PRECISE_BATCHES = 20


@dataclasses.dataclass(frozen=True)
class Arm:
  norm: str  # 'bn' or 'nbn'
  momentum: float = 0.99
  bias_init: str = 'zeros'  # zeros, small (N(0, 0.01)), signs (+-1), none


ARMS = {
    'bn': Arm('bn'),
    'nbn': Arm('nbn'),
    'bn_m0.9': Arm('bn', 0.9),
    'nbn_m0.9': Arm('nbn', 0.9),
    'nbn_bias_small': Arm('nbn', bias_init='small'),
    'nbn_no_bias': Arm('nbn', bias_init='none'),
    'bn_bias_signs': Arm('bn', bias_init='signs'),
}


def _signs(key, shape, dtype):
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(
      dtype
  )


BIAS_INITS = {
    'zeros': nnx.initializers.zeros_init(),
    'small': nnx.initializers.normal(0.01),
    'signs': _signs,
}


def norm_layer(arm: Arm, features: int, rngs: nnx.Rngs):
  kwargs = dict(momentum=arm.momentum, rngs=rngs)
  if arm.bias_init == 'none':
    kwargs['use_bias'] = False
  else:
    kwargs['bias_init'] = BIAS_INITS[arm.bias_init]
  cls = nnx.BatchNorm if arm.norm == 'bn' else NormalizedBatchNorm
  return cls(features, **kwargs)


class CNN(nnx.Module):
  """flax's NNX MNIST tutorial CNN with a choice of BN layer."""

  def __init__(self, arm: Arm, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm1 = norm_layer(arm, 32, rngs)
    self.dropout1 = nnx.Dropout(rate=0.025)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm2 = norm_layer(arm, 64, rngs)
    self.avg_pool = functools.partial(
        nnx.avg_pool, window_shape=(2, 2), strides=(2, 2)
    )
    self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
    self.dropout2 = nnx.Dropout(rate=0.025)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x, rngs=None):
    x = self.avg_pool(
        nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs)))
    )
    x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
    return self.linear2(x)


def digits():
  """(train images, test images, train labels, test labels), 28x28x1."""
  data = load_digits()
  images = (data.images / 16.0).astype(np.float32)[..., None]
  images = np.asarray(
      jax.image.resize(images, (len(images), 28, 28, 1), 'bilinear')
  )
  labels = data.target.astype(np.int32)
  return train_test_split(
      images, labels, test_size=0.2, random_state=0, stratify=labels
  )


def batch_indices(num_train: int, seed: int, steps: int) -> np.ndarray:
  """(steps, BATCH) training indices: a new permutation every epoch."""
  rng = np.random.default_rng(seed)
  per_epoch = num_train // BATCH
  epochs = -(-steps // per_epoch)
  order = np.concatenate(
      [rng.permutation(num_train)[: per_epoch * BATCH] for _ in range(epochs)]
  )
  return order[: steps * BATCH].reshape(steps, BATCH)


def loss_fn(model, rngs, images, labels):
  logits = model(images, rngs)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return loss.mean(), logits


@nnx.jit
def train_step(model, optimizer, rngs, images, labels):
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, rngs, images, labels)
  optimizer.update(model, grads)
  return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


@nnx.jit
def predict(model, images):
  return jnp.argmax(model(images), -1)


def norms(model):
  return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]


def accuracy(model, images, labels) -> float:
  hits = 0
  for start in range(0, len(images), TEST_BATCH):
    batch = slice(start, start + TEST_BATCH)
    hits += int(
        np.sum(np.asarray(predict(model, images[batch])) == labels[batch])
    )
  return 100.0 * hits / len(images)


def in_mode(model, batch_statistics: bool):
  """A copy with dropout off and BN on batch or running statistics."""
  model = nnx.clone(model)
  model.eval()
  if batch_statistics:
    for m in norms(model):
      m.use_running_average = False
  return model


def effective_ratio(layer) -> float:
  """Channel mean of |effective bias| / |effective scale|."""
  if layer.bias is None:
    return 0.0
  params = {'scale': layer.scale[...], 'bias': layer.bias[...]}
  if isinstance(layer, NormalizedBatchNorm):
    params = effective_params(params, layer.alpha[...], layer.norm_epsilon)
  return float(jnp.mean(jnp.abs(params['bias']) / jnp.abs(params['scale'])))


def evaluate(model, train_x, precise_idx, test_x, test_y) -> dict:
  running = in_mode(model, False)
  precise = in_mode(model, False)
  precise_bn.update_bn_stats_nnx(precise, (train_x[i] for i in precise_idx))
  out = {
      'eval': accuracy(running, test_x, test_y),
      'train': accuracy(in_mode(model, True), test_x, test_y),
      'precise': accuracy(precise, test_x, test_y),
  }
  for name, keep in (('fix mean', 'var'), ('fix var', 'mean')):
    hybrid = nnx.clone(precise)
    for h, r in zip(norms(hybrid), norms(running)):
      getattr(h, keep)[...] = getattr(r, keep)[...]
    out[name] = accuracy(hybrid, test_x, test_y)
  layers = []
  for r, p in zip(norms(running), norms(precise)):
    layers.append({
        'var ratio': float(jnp.mean(r.var[...] / p.var[...])),
        'mean err': float(
            jnp.mean(jnp.abs(r.mean[...] - p.mean[...]) / jnp.sqrt(p.var[...]))
        ),
        '|b|/|w|': effective_ratio(r),
    })
  out['layers'] = layers
  return out


def run(arm: Arm, seed: int, steps: int, eval_steps, data) -> dict:
  train_x, test_x, train_y, test_y = data
  model = CNN(arm, rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.adamw(0.005, 0.9), wrt=nnx.Param)
  rngs = nnx.Rngs(dropout=seed)
  order = batch_indices(len(train_x), seed, steps)
  precise_idx = batch_indices(len(train_x), 1000 + seed, PRECISE_BATCHES)
  history, train_acc = {}, []
  for step in range(1, steps + 1):
    idx = order[step - 1]
    _, acc = train_step(model, optimizer, rngs, train_x[idx], train_y[idx])
    train_acc.append(float(acc))
    if step in eval_steps:
      history[step] = evaluate(model, train_x, precise_idx, test_x, test_y)
      history[step]['train batches'] = 100 * np.mean(train_acc[-10:])
  return history


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=400)
  parser.add_argument('--eval-steps', default='25,50,100,200,400')
  parser.add_argument('--arms', default=','.join(ARMS))
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  eval_steps = [int(s) for s in args.eval_steps.split(',')]
  data = digits()
  print(
      f'jax {jax.__version__}, {jax.devices()[0].device_kind}; digits '
      f'{len(data[0])} train / {len(data[1])} test, 28x28; seeds {seeds}',
      flush=True,
  )
  modes = ('eval', 'train', 'precise', 'fix mean', 'fix var')
  for name in args.arms.split(','):
    start = time.perf_counter()
    runs = [run(ARMS[name], s, args.steps, eval_steps, data) for s in seeds]
    print(
        f'\n{name} ({ARMS[name]}), {time.perf_counter() - start:.0f} s; '
        'test accuracy %, seeds separated by /'
    )
    print(
        f'{"step":>5} '
        + ' '.join(f'{m:>17}' for m in modes)
        + f' {"train batches":>17}'
    )
    for step in eval_steps:
      cells = [
          '/'.join(f'{r[step][m]:.0f}' for r in runs)
          for m in (*modes, 'train batches')
      ]
      print(f'{step:5d} ' + ' '.join(f'{c:>17}' for c in cells))
    print('  per BN layer (seed mean): var ratio, mean err, |b|/|w|')
    for step in eval_steps:
      layers = []
      for i in range(2):
        values = [
            np.mean([r[step]['layers'][i][k] for r in runs])
            for k in ('var ratio', 'mean err', '|b|/|w|')
        ]
        layers.append(' '.join(f'{v:6.2f}' for v in values))
      print(f'{step:5d}   bn1 {layers[0]}   bn2 {layers[1]}')


if __name__ == '__main__':
  main()
