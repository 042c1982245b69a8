"""train.py as users run it: one-line errors, NaN stops, several hosts."""

import json
import os
import re
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from nbn_jax.training.checkpoints import latest_params

ROOT = pathlib.Path(__file__).parents[1]
QUICKSTART = str(ROOT / 'configs' / 'quickstart.py')
FAST = [  # a few quickstart steps
    '--config.batch_size=32',
    '--config.eval_batch_size=64',
    '--config.log_every_steps=1',
    '--config.steps_per_dispatch=1',
    '--config.warmup_epochs=0',
]


def _train(workdir, *flags, devices=8, extra_env=None, timeout=300):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env.update(extra_env or {})
  return subprocess.run(
      [sys.executable, str(ROOT / 'train.py'), f'--workdir={workdir}', *flags],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def _error_line(result):
  """The one line a failed run ends with on stderr."""
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: '), result.stderr[-3000:]
  return last


def _checkpoint_dirs(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


class TestBadInput:

  def test_unknown_config_field(self, tmp_path):
    line = _error_line(
        _train(tmp_path, f'--config={QUICKSTART}', '--config.lerning_rate=0.1')
    )
    assert 'lerning_rate' in line and 'learning_rate' in line
    assert not _checkpoint_dirs(tmp_path)

  def test_missing_dataset(self, tmp_path):
    line = _error_line(
        _train(
            tmp_path,
            f'--config={ROOT / "configs" / "cifar10_lt.py"}',
            f'--config.data_dir={tmp_path / "no-tfds"}',
        )
    )
    assert 'cifar10 is not prepared' in line and 'tfds build cifar10' in line

  def test_batch_not_divisible_by_devices(self, tmp_path):
    line = _error_line(
        _train(tmp_path, f'--config={QUICKSTART}', '--config.batch_size=60')
    )
    assert 'config.batch_size=60 is not divisible by the 8 devices' in line
    assert not _checkpoint_dirs(tmp_path)

  def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(
      self, tmp_path
  ):
    good = _train(
        tmp_path,
        f'--config={QUICKSTART}',
        *FAST,
        '--config.num_epochs=0.5',
        '--config.checkpoint_every_epochs=0.25',
    )
    assert good.returncode == 0, good.stderr[-3000:]
    assert _checkpoint_dirs(tmp_path) == ['4', '8']
    diverging = _train(
        tmp_path,
        f'--config={QUICKSTART}',
        *FAST,
        '--config.num_epochs=1',
        '--config.checkpoint_every_epochs=0.25',
        '--config.learning_rate=1e30',
    )
    line = _error_line(diverging)
    # Step 9's loss is computed before its update, so it may still be finite.
    assert re.search(
        r'training loss is (nan|-?inf) at step (9|10);', line
    ), line
    assert 'last good checkpoint (step 8)' in line
    assert _checkpoint_dirs(tmp_path) == ['4', '8']  # nothing half-written


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_hosts_of_four_devices_equal_one_host_of_eight(tmp_path):
  flags = [
      f'--config={QUICKSTART}',
      *FAST,
      '--config.input_path=tf_data',
      '--config.num_epochs=0.5',
      '--config.eval_every_epochs=0.5',
  ]
  single = _train(tmp_path / 'one', *flags)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  env = dict(
      os.environ,
      XLA_FLAGS='--xla_force_host_platform_device_count=4',
      JAX_PLATFORMS='cpu',
  )
  hosts = [
      subprocess.Popen(
          [
              sys.executable,
              str(ROOT / 'train.py'),
              f'--workdir={tmp_path / "two"}',
              *flags,
              f'--coordinator_address=localhost:{port}',
              '--num_processes=2',
              f'--process_id={i}',
          ],
          cwd=ROOT,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  outputs = [host.communicate(timeout=300) for host in hosts]
  for host, (_, stderr) in zip(hosts, outputs):
    assert host.returncode == 0, stderr[-3000:]
  assert 'JAX processes: 2' in outputs[0][1]

  results = [
      json.loads((tmp_path / d / 'results.json').read_text())
      for d in ('one', 'two')
  ]
  assert results[1]['last']['test'] == pytest.approx(results[0]['last']['test'])
  jax.tree.map(
      lambda two, one: np.testing.assert_allclose(
          two, one, rtol=1e-4, atol=1e-5
      ),
      latest_params(tmp_path / 'two'),
      latest_params(tmp_path / 'one'),
  )
