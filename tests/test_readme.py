"""The README's code runs as written."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from nbn_jax.training import loop

README = pathlib.Path(__file__).parents[1] / 'README.md'


def test_readme_example_trains_with_shared_alpha():
  code = re.search(r'```python\n(.*?)```', README.read_text(), re.S).group(1)
  namespace = {}
  exec(code, namespace)  # noqa: S102  (our own README)
  head, x = namespace['Head'](), jnp.ones((4, 8, 8, 3))
  variables = head.init(jax.random.key(0), x, train=False)
  assert variables['params']['nbn_alpha'].shape == ()
  assert not any(
      'alpha' in layer
      for name, layer in variables['params'].items()
      if name != 'nbn_alpha'
  )
  logits, updates = head.apply(
      variables, x, train=True, mutable=['batch_stats']
  )
  assert logits.shape == (4, 10)
  assert set(updates['batch_stats']) == {
      'NormalizedBatchNorm_0',
      'NormalizedBatchNorm_1',
  }


def _section(title: str) -> str:
  text = README.read_text()
  start = text.index(f'## {title}\n')
  end = text.find('\n## ', start + 1)
  return text[start:end]


def _blocks(title: str, tmp_path) -> list[str]:
  """The section's Python blocks, each to run on its own, in `tmp_path`."""
  blocks = re.findall(r'```python\n(.*?)```', _section(title), re.S)
  return [block.replace('/tmp/', f'{tmp_path}/') for block in blocks]


def _run(code: str) -> dict:
  namespace = {}
  exec(code, namespace)  # noqa: S102  (our own README)
  return namespace


@pytest.mark.slow
def test_use_it_in_your_model_runs_as_written(tmp_path):
  """The linen walk-through, the NNX one and loading a trained workdir, each
  on its own (a fresh namespace apiece)."""
  linen, nnx, load = _blocks('Use it in your model', tmp_path)
  ns = _run(linen)
  assert ns['eval_logits'].shape == (8, 10)
  assert ns['num_params'] == 464_155  # ResNet-32 and its one shared alpha
  jax.tree.map(
      lambda a, b: np.testing.assert_array_equal(a, b),
      ns['restored'],
      ns['variables'],
  )
  ns = _run(nnx)
  assert ns['nnx_params'] == 3 * 3 * (3 + 16) * 16 + 2 * 2 * 16 + 1 + 170
  restored_net, net = ns['restored_net'], ns['net']
  np.testing.assert_array_equal(restored_net.bn1.mean[...], net.bn1.mean[...])
  assert 'alpha' not in ns['nnx'].state(net.bn1)
  config = quickstart.get_config()
  config.update(num_train_steps=2, steps_per_dispatch=1)
  loop.train_and_evaluate(config, str(tmp_path / 'quickstart'))
  assert _run(load)['logits'].shape == (4, 10)
