"""The README's code runs as written."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.mark.slow
def test_use_it_in_your_model_runs_as_written(tmp_path):
  """The linen and NNX walk-throughs, in order, in one namespace."""
  section = _section('Use it in your model')
  blocks = re.findall(r'```python\n(.*?)```', section, re.S)
  assert len(blocks) == 2
  code = '\n'.join(blocks).replace('/tmp/', f'{tmp_path}/')
  namespace = {}
  exec(code, namespace)  # noqa: S102  (our own README)
  ns = namespace
  assert ns['eval_logits'].shape == (8, 10)
  assert ns['num_params'] == 464_155  # ResNet-32 and its one shared alpha
  assert ns['nnx_params'] == 3 * 3 * (3 + 16) * 16 + 2 * 2 * 16 + 1 + 170
  jax.tree.map(
      lambda a, b: np.testing.assert_array_equal(a, b),
      ns['restored'],
      ns['variables'],
  )
  restored_net, net = ns['restored_net'], ns['net']
  np.testing.assert_array_equal(restored_net.bn1.mean[...], net.bn1.mean[...])
  assert 'alpha' not in ns['nnx'].state(net.bn1)
