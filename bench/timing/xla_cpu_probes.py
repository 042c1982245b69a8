"""Three facts about XLA:CPU that shaped this code, re-measurable in one run.

    python -m bench.timing.xla_cpu_probes

1. Weight gradient of a 3x3 convolution: XLA's own lowering against nine
   shifted matmuls (one per kernel tap), on ResNet-32's three stage shapes.
   Printed: shifted / XLA time (> 1: the alternative is slower).
2. A ResNet-32 train step inside `lax.scan` (what the on-device path uses to
   run several steps per dispatch on accelerators) against the same step
   jitted on its own. Printed: scan / plain time per step. Where this is far
   above 1, `nbn_jax.training.inputs.steps_per_dispatch` uses one step per
   call on CPU.
3. Rematerialisation of ResNet-32's forward pass in the backward pass
   (`jax.checkpoint`, saving only the convolution outputs, or nothing),
   against none: does recomputing the cheap BN/ReLU work instead of
   reading it back from memory help this CPU? Printed: remat / plain time
   of a forward+backward pass.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import input_pipeline as ip
from input_pipeline import on_device
from configs import default
from nbn_jax import models
from nbn_jax.training import losses, plan, steps


def _median_ms(function, *args, repeats=5):
  jax.block_until_ready(function(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def _conv(x, w):
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def weight_gradient_xla(x, w, dy):
  return jax.vjp(lambda w: _conv(x, w), w)[1](dy)[0]


def weight_gradient_shifted(x, w, dy):
  """dW[i, j] = shift_ij(x)^T dy, one matmul per tap."""
  n, h, width, c = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dy = dy.reshape(-1, dy.shape[-1])
  taps = [
      jnp.dot(padded[:, i : i + h, j : j + width, :].reshape(-1, c).T, dy)
      for i in range(3)
      for j in range(3)
  ]
  return jnp.stack(taps).reshape(3, 3, c, dy.shape[-1])


def probe_weight_gradient():
  print('3x3 weight gradient, batch 128 (ms): XLA, nine shifted matmuls')
  for size, channels in ((32, 16), (16, 32), (8, 64)):
    key = jax.random.key(0)
    x = jax.random.normal(key, (128, size, size, channels))
    w = jax.random.normal(key, (3, 3, channels, channels))
    ours, shifted = jax.jit(weight_gradient_xla), jax.jit(
        weight_gradient_shifted
    )
    np.testing.assert_allclose(
        ours(x, w, x), shifted(x, w, x), rtol=1e-2, atol=1e-1
    )
    a, b = _median_ms(ours, x, w, x), _median_ms(shifted, x, w, x)
    print(
        f'  {size}x{size}x{channels}: {a:7.2f} {b:7.2f}  shifted / XLA ='
        f' {b / a:.1f}'
    )


def probe_scan():
  rng = np.random.default_rng(0)
  split = ip.Split(
      'random',
      rng.integers(0, 10, 2000).astype(np.int32),
      10,
      images=rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8),
  )
  config = default.get_config()
  config.weight_decay = 2e-4
  core = plan.build_step_plan(
      config, ip.DATASETS['cifar10'], np.ones(10), (32, 32, 3)
  )
  cfg = core.step_config
  data = on_device.put_on_devices(
      split, ip.SamplerSpec(), core.topology.batch_sharding
  )
  state = core.runs.init_state()
  key = jax.random.key(1)

  def plain(state, data):
    images, labels = on_device.sample_batch(data, key, state.step, 128)
    return steps.apply_batch(cfg, state, images, labels)[0].params

  def in_scan(state, data):
    body = lambda s, _: steps.apply_batch(
        cfg, s, *on_device.sample_batch(data, key, s.step, 128)
    )
    return jax.lax.scan(body, state, length=1)[0].params

  a = _median_ms(jax.jit(plain), state, data, repeats=3)
  b = _median_ms(jax.jit(in_scan), state, data, repeats=1)
  print(
      f'ResNet-32 train step (ms): plain {a:.0f}, inside lax.scan {b:.0f}; '
      f'scan / plain = {b / a:.1f}'
  )


def probe_remat():
  model = models.ResNet32(num_classes=10)
  key = jax.random.key(0)
  images = jax.random.normal(key, (128, 32, 32, 3))
  labels = jax.random.randint(key, (128,), 0, 10)
  variables = model.init(key, images[:2], train=False)

  def loss(params, batch_stats):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats},
        images,
        train=True,
        mutable=['batch_stats'],
    )
    cross_entropy = losses.make_loss('cross_entropy', np.ones(10))
    return cross_entropy(logits, labels).mean(), updates

  variants = {
      'plain': loss,
      'remat, convolutions saved': jax.checkpoint(
          loss, policy=jax.checkpoint_policies.dots_saveable
      ),
      'remat, nothing saved': jax.checkpoint(loss),
  }
  args = (variables['params'], variables['batch_stats'])
  times = {
      name: _median_ms(jax.jit(jax.grad(fn, has_aux=True)), *args)
      for name, fn in variants.items()
  }
  print('ResNet-32 forward+backward, batch 128 (ms):')
  for name, ms in times.items():
    print(f'  {name:26s} {ms:7.0f}  / plain = {ms / times["plain"]:.2f}')


def main():
  argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  ).parse_args()  # no options: --help
  print(f'jax {jax.__version__} on {jax.default_backend()}')
  probe_weight_gradient()
  probe_remat()
  probe_scan()


if __name__ == '__main__':
  main()
