"""The README's code runs as written."""

import os
import pathlib
import re
import shlex
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train
from configs import quickstart
from nbn_jax.training import checks, conversion, loop

ROOT = pathlib.Path(__file__).parents[1]
README = ROOT / 'README.md'


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
  """The linen walk-through, the NNX one, loading a trained workdir and
  precise BN, each on its own (a fresh namespace apiece)."""
  linen, nnx, load, precise = _blocks('Use it in your model', tmp_path)
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
  ns = _run(precise)
  # The batches' own statistics: eval mode on one of them is near train mode.
  train_logits, _ = ns['model'].apply(
      ns['variables'], ns['batches'][0], train=True, mutable=['batch_stats']
  )
  stale_logits = ns['model'].apply(
      ns['variables'], ns['batches'][0], train=False
  )
  eval_error = np.abs(ns['eval_logits'] - train_logits).max()
  assert eval_error < 0.5 * np.abs(stale_logits - train_logits).max()


def _indented_blocks(title: str) -> list[list[str]]:
  """The section's indented (shell) blocks, each a list of its lines."""
  blocks = re.findall(r'\n\n((?:    .*\n)+)', _section(title))
  return [[line.strip() for line in block.splitlines()] for block in blocks]


def _commands(lines: list[str]) -> list[str]:
  """Shell lines as single commands ('a && b' is two)."""
  return [c.strip() for line in lines for c in line.split(' && ')]


def _make_dry_run(target: str, venv: pathlib.Path) -> list[str]:
  """What `make TARGET` would run, for an environment at `venv`, with none
  of the Makefile's settings taken from this process (`.ci/run` sets some)."""
  settings = ('VENV', 'PYTHON', 'QUICKSTART_WORKDIR', 'PYTEST_FLAGS')
  env = {
      k: v
      for k, v in os.environ.items()
      if k not in settings and not k.startswith(('MAKE', 'MFLAGS'))
  }
  result = subprocess.run(
      ['make', '--dry-run', '--no-print-directory', target, f'VENV={venv}'],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      check=True,
  )
  return _commands(result.stdout.splitlines())


def test_the_two_commands_are_the_ones_ci_runs():
  """The README's first block is what .ci/run runs, in the same order."""
  two = _indented_blocks('Set up, try, test')[0]
  ci = [
      line.strip()
      for line in (ROOT / '.ci' / 'run').read_text().splitlines()
      if line.startswith('make ')
  ]
  assert len(two) == 2 and ci == two


def test_the_two_commands_run_the_manual_steps(tmp_path):
  """From nothing, `make quickstart` and `make test` run the README's steps
  "by hand" that follow creating and entering the environment, in order
  (`make test` all but the quickstart); with an environment in place, only
  the quickstart or the suite."""
  blocks = _indented_blocks('Set up, try, test')
  [manual] = [b for b in blocks if b[0].startswith('python3.12 -m venv')]
  steps = _commands(manual)[2:]
  [train] = [c for c in steps if c.startswith('python train.py')]
  quickstart = steps[: steps.index(train) + 1]
  suite = [c for c in steps if c != train]
  fresh = tmp_path / 'absent'
  assert [c for c in _make_dry_run('quickstart', fresh) if c in steps] == (
      quickstart
  )
  assert [c for c in _make_dry_run('test', fresh) if c in steps] == suite
  installed = tmp_path / 'venv'
  for name in ('bin/python', '.installed', '.installed-test'):
    (installed / name).parent.mkdir(parents=True, exist_ok=True)
    (installed / name).touch()
  assert _make_dry_run('quickstart', installed) == [train]
  assert _make_dry_run('test', installed) == suite[-2:]


def command_lines(
    program: str, document: pathlib.Path = README
) -> list[list[str]]:
  """Every `program ...` command of `document`, in a block (continuation
  lines joined) or in backticks, as argv."""
  text = document.read_text().replace('\\\n', ' ')
  found = re.findall(rf'^ +({program} .*)$', text, re.M)
  found += re.findall(rf'`({program} [^`]*)`', text)
  return [shlex.split(command)[len(program.split()) - 1 :] for command in found]


def test_the_train_commands_are_valid_command_lines():
  """Each README train.py command parses and passes the config checks on
  8 devices (its data is not here)."""
  commands = command_lines('python train.py')
  assert len(commands) >= 8
  for argv in commands:
    values = train.parse_flags(argv)
    checks.check_config(values.config, device_count=8, process_count=1)


def test_the_convert_commands_are_valid_command_lines():
  commands = command_lines('python -m nbn_jax.convert')
  assert len(commands) == 2  # the ResNets' and RIDE's
  for argv in commands:
    values = conversion.parse_flags(argv)
    assert values.checkpoint.endswith('.pth')
    checks.check_config(values.config, device_count=8, process_count=1)
