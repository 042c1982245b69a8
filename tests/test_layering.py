"""The import contracts in pyproject.toml hold, and they can fail."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('nbn_jax', 'input_pipeline', 'configs')


def _lint_imports(root: str) -> subprocess.CompletedProcess:
  """Runs import-linter on the packages under `root`."""
  lint = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
  return subprocess.run(
      [lint, '--config', os.path.join(root, 'pyproject.toml')],
      cwd=root,
      env={**os.environ, 'PYTHONPATH': root},
      capture_output=True,
      text=True,
      timeout=300,
  )


def _copy_of_the_tree(tmp_path) -> str:
  root = str(tmp_path / 'repo')
  for package in PACKAGES:
    shutil.copytree(
        os.path.join(ROOT, package),
        os.path.join(root, package),
        ignore=shutil.ignore_patterns('__pycache__'),
    )
  shutil.copy(os.path.join(ROOT, 'pyproject.toml'), root)
  return root


def test_the_repository_keeps_every_contract(tmp_path):
  result = _lint_imports(_copy_of_the_tree(tmp_path))
  assert result.returncode == 0, result.stdout + result.stderr
  assert '0 broken' in result.stdout


@pytest.mark.parametrize(
    'module, line, contract',
    [
        (
            'nbn_jax/training/steps.py',
            'import input_pipeline',
            'The train step knows nothing of the pipeline',
        ),
        (
            'input_pipeline/samplers.py',
            'import nbn_jax.models',
            'The input pipeline depends on neither the models nor the trainer',
        ),
        (
            'nbn_jax/normalization.py',
            'import optax',
            'The layer and precise BN import only jax and flax',
        ),
        (
            'nbn_jax/precise_bn.py',
            'import nbn_jax.training',
            'The layer and precise BN import only jax and flax',
        ),
        (
            'nbn_jax/models/blocks.py',
            'import nbn_jax.training.losses',
            'Models know no data and no training loop',
        ),
        (
            'input_pipeline/sources.py',
            'import input_pipeline.tf_pipeline',
            'Acyclic input pipeline',
        ),
        (
            'nbn_jax/convert/__init__.py',
            'import ml_collections',
            "The converter's name mapping imports only jax, flax and numpy",
        ),
        (
            'nbn_jax/training/loop.py',
            'import nbn_jax.analysis.features',
            'The trainer does not import the analyses of its runs',
        ),
        (
            'nbn_jax/training/runs.py',
            'import configs',
            (
                'Only the plan reads the config (loop.train_and_evaluate hands'
                ' it over)'
            ),
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path, module, line, contract
):
  root = _copy_of_the_tree(tmp_path)
  with open(os.path.join(root, module), 'a') as f:
    f.write(f'\n{line}  # added by the test\n')
  result = _lint_imports(root)
  assert result.returncode != 0
  assert f'{contract} BROKEN' in result.stdout
