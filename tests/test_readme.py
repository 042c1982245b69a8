"""The README's and the docs pages' code runs as written.

Every Python block of README.md and docs/*.md runs on its own, twice (a
block that saves to a fixed place fails the second time), and prints what
it computes; each command line of a program of this repository parses and
names what exists; every page under docs/ is linked from the README, and
every link between the pages leads somewhere.
"""

import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
from typing import Any, Callable

import jax
import numpy as np
import pytest

import train
from configs import quickstart
from nbn_jax.training import checks, conversion, loop
from nbn_jax.training import workdir as workdir_lib

ROOT = pathlib.Path(__file__).parents[1]
README = ROOT / 'README.md'
DOCS = ROOT / 'docs'
PAGES = [README, *sorted(DOCS.glob('*.md'))]
QUICKSTART_WORKDIR = '/tmp/quickstart'  # what the blocks load


def _name(page: pathlib.Path) -> str:
  return str(page.relative_to(ROOT))


def python_blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r'```python\n(.*?)```', page.read_text(), re.S)


def _run(code: str) -> dict[str, Any]:
  namespace = {}
  exec(code, namespace)  # noqa: S102  (our own documentation)
  return namespace


# --- What particular blocks compute ------------------------------------------


def _head_shares_one_alpha(ns):
  variables, updates = ns['variables'], ns['updates']
  assert variables['params']['nbn_alpha'].shape == ()
  assert not any(
      'alpha' in layer
      for name, layer in variables['params'].items()
      if name != 'nbn_alpha'
  )
  assert ns['logits'].shape == (4, 10)
  assert set(updates['batch_stats']) == {
      'NormalizedBatchNorm_0',
      'NormalizedBatchNorm_1',
  }


def _quickstart_predicts_its_test_digits(ns):
  assert ns['logits'].shape == (500, 10)
  run, test = ns['run'], ns['test']
  by_hand = run.model.apply(
      run.variables, run.prepare(test.images), train=False
  )
  np.testing.assert_allclose(ns['logits'], by_hand, atol=1e-5)


def _linen_restores_what_it_saved(ns):
  assert ns['eval_logits'].shape == (8, 10)
  assert ns['num_params'] == 464_155  # ResNet-32 and its one shared alpha
  jax.tree.map(np.testing.assert_array_equal, ns['restored'], ns['variables'])


def _nnx_shares_one_alpha_and_restores(ns):
  assert ns['nnx_params'] == 3 * 3 * (3 + 16) * 16 + 2 * 2 * 16 + 1 + 170
  restored_net, net = ns['restored_net'], ns['net']
  np.testing.assert_array_equal(restored_net.bn1.mean[...], net.bn1.mean[...])
  assert 'alpha' not in ns['nnx'].state(net.bn1)


def _precise_bn_evaluates_near_train_mode(ns):
  # The batches' own statistics: eval mode on one of them is near train mode.
  eval_error = np.abs(ns['eval_logits'] - ns['train_logits']).max()
  stale_error = np.abs(ns['stale_logits'] - ns['train_logits']).max()
  assert eval_error < 0.5 * stale_error


# {a line only that block has: what it must compute}
BLOCK_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    'class Head(nn.Module):': _head_shares_one_alpha,
    "run = trained.load('/tmp/quickstart')": (
        _quickstart_predicts_its_test_digits
    ),
    'model = models.ResNet32(10)': _linen_restores_what_it_saved,
    'class Net(nnx.Module):': _nnx_shares_one_alpha_and_restores,
    'stats = precise_bn.precise_batch_stats(': (
        _precise_bn_evaluates_near_train_mode
    ),
}


def _blocks_with(line: str) -> list[tuple[pathlib.Path, str]]:
  return [
      (page, block)
      for page in PAGES
      for block in python_blocks(page)
      if line in block
  ]


@pytest.mark.parametrize('line', list(BLOCK_CHECKS))
def test_each_checked_block_is_on_one_page_once(line):
  assert len(_blocks_with(line)) == 1


def test_the_readme_head_trains_with_one_shared_alpha(capsys):
  [(_, block)] = _blocks_with('class Head(nn.Module):')
  _head_shares_one_alpha(_run(block))
  assert 'alpha 1.0' in capsys.readouterr().out


@pytest.fixture(scope='module')
def quickstart_workdir(tmp_path_factory) -> str:
  """A quickstart workdir (2 steps) for the blocks that load one."""
  workdir = str(tmp_path_factory.mktemp('docs') / 'quickstart')
  config = quickstart.get_config()
  config.update(num_train_steps=2, steps_per_dispatch=1)
  loop.train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize(
    'page, index',
    [
        (_name(page), index)
        for page in PAGES
        for index in range(len(python_blocks(page)))
    ],
)
def test_every_python_block_runs_twice_and_prints_what_it_computes(
    page, index, capsys, request
):
  block = python_blocks(ROOT / page)[index]
  code = block
  if QUICKSTART_WORKDIR in block:
    workdir = request.getfixturevalue('quickstart_workdir')
    code = block.replace(QUICKSTART_WORKDIR, workdir)
  capsys.readouterr()
  for _ in range(2):
    namespace = _run(code)
    assert capsys.readouterr().out.strip(), 'the block printed nothing'
  for line, check in BLOCK_CHECKS.items():
    if line in block:
      check(namespace)


# --- Command lines ------------------------------------------------------------


def _section(page: pathlib.Path, title: str) -> str:
  text = page.read_text()
  start = text.index(f'## {title}\n')
  end = text.find('\n## ', start + 1)
  return text[start:] if end < 0 else text[start:end]


def _indented_blocks(page: pathlib.Path, title: str) -> list[list[str]]:
  """The section's indented (shell) blocks, each a list of its lines."""
  blocks = re.findall(r'\n\n((?:    .*\n)+)', _section(page, title))
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
  """The README's first set-up block is what .ci/run runs, in order."""
  two = _indented_blocks(README, 'Set up and test')[0]
  ci = [
      line.strip()
      for line in (ROOT / '.ci' / 'run').read_text().splitlines()
      if line.startswith('make ')
  ]
  assert len(two) == 2 and ci == two
  development = _indented_blocks(DOCS / 'development.md', 'The two commands')
  assert development[0] == two


def test_the_two_commands_run_the_manual_steps(tmp_path):
  """From nothing, `make quickstart` and `make test` run the steps "by hand"
  of docs/development.md that follow creating and entering the environment,
  in order (`make test` all but the quickstart); with an environment in
  place, only the quickstart or the suite."""
  blocks = _indented_blocks(DOCS / 'development.md', 'The two commands')
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


def _every_page(program: str) -> list[tuple[str, list[str]]]:
  return [
      (_name(page), argv)
      for page in PAGES
      for argv in command_lines(program, page)
  ]


def test_the_train_commands_are_valid_command_lines(tmp_path):
  """Each train.py command parses and passes the config checks on 8
  devices (its data is not here). One without --config evaluates the
  WORKDIR it names from the config recorded there: here, the quickstart's."""
  recorded = tmp_path / 'workdir'
  recorded.mkdir()
  workdir_lib.record_config(str(recorded), quickstart.get_config().to_dict())
  commands = _every_page('python train.py')
  assert len({page for page, _ in commands}) >= 6
  assert any(
      not any(arg.startswith('--config=') for arg in argv)
      for _, argv in commands
  )
  for page, argv in commands:
    if not any(arg.startswith('--config=') for arg in argv):
      argv = [arg.replace('WORKDIR', str(recorded)) for arg in argv]
    values = train.parse_flags(argv)
    checks.check_config(values.config, device_count=8, process_count=1)


def test_the_convert_commands_are_valid_command_lines():
  commands = _every_page('python -m nbn_jax.convert')
  assert {argv[1] for _, argv in commands} >= {
      '--checkpoint=resnet50_nbn.pth',  # the reference's ResNets'
      '--checkpoint=ride_nbn_lr.pth',  # and RIDE's
  }
  for page, argv in commands:
    values = conversion.parse_flags(argv)
    assert values.checkpoint.endswith('.pth'), page
    checks.check_config(values.config, device_count=8, process_count=1)


def test_the_benchmark_commands_name_modules_and_scripts_that_exist():
  modules = [argv[1] for _, argv in _every_page('python -m')]
  bench = [m for m in modules if m.startswith('bench.')]
  assert len(set(bench)) >= 15
  for module in modules:
    assert importlib.util.find_spec(module) is not None, module
  scripts = [argv[1] for _, argv in _every_page('bash')]
  assert 'bench/gpu/gpu_evidence.sh' in scripts
  for script in scripts:
    assert (ROOT / script).is_file(), script


# --- Links --------------------------------------------------------------------


def _links(page: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
  """(file, anchor or '') of each relative link of `page` (`#anchor`
  alone: to the page itself)."""
  targets = re.findall(r'\]\(([^)#\s]*)(?:#([^)]*))?\)', page.read_text())
  return [
      ((page.parent / target).resolve() if target else page.resolve(), anchor)
      for target, anchor in targets
      if '://' not in target
  ]


def _anchors(page: pathlib.Path) -> set[str]:
  """The anchors GitHub gives the page's headings."""
  titles = re.findall(r'^#+ (.*)$', page.read_text(), re.M)
  return {
      re.sub(r'[^\w\- ]', '', title.lower()).replace(' ', '-')
      for title in titles
  }


def test_every_docs_page_is_linked_from_the_readme():
  linked = {target for target, _ in _links(README)}
  assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


@pytest.mark.parametrize('page', [_name(page) for page in PAGES])
def test_every_link_leads_to_a_file_and_its_heading(page):
  for target, anchor in _links(ROOT / page):
    assert target.exists(), f'{page} links to {target}, which is missing'
    if anchor:
      assert anchor in _anchors(target), f'{page}: no #{anchor} in {target}'
