"""The README's code runs as written."""

import pathlib
import re

import jax
import jax.numpy as jnp

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
