"""Test-wide JAX set-up, done before any test module imports jax.

Every test runs on 8 host CPU devices, so sharded and single-device behaviour
are compared in one process, and with most XLA optimisations off, which makes
compilation several times faster on the small programs tests build.

Compiled programs are also kept in a persistent compilation cache for the
session (a temporary folder, removed at the end), shared by the pytest-xdist
workers and the train.py processes tests start: a resumed run, or a second
host, compiles what an earlier run compiled once (the kill-and-resume tests
ran in 68 s instead of 107 s with it).
"""

import atexit
import os
import shutil
import sys
import tempfile

_DEVICE_FLAG = '--xla_force_host_platform_device_count=8'
if _DEVICE_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}"
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # set: a worker, or a user's
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='nbn-jax-tests-xla-cache-'
  )
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], True)
# PyTorch (test-only) is PyPI's CUDA build, which imports triton when
# torch.optim builds its first optimiser; triton's LLVM then crashes the
# process (a segfault) once jaxlib and TensorFlow are loaded. The tests run
# PyTorch on the CPU only, where triton is never used: hide it.
sys.modules.setdefault('triton', None)

import jax  # noqa: E402  (after the environment above)

jax.config.update('jax_disable_most_optimizations', True)


import pytest  # noqa: E402

from tests import cloud_storage as cloud_storage_lib  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  """No test touches the network: TFDS's CIFAR host counts as unreachable
  (a test of the download decision sets its own answer)."""
  from input_pipeline import tfds_source  # noqa: PLC0415  (after jax's set-up)

  monkeypatch.setattr(tfds_source, 'can_download', lambda *args: False)


@pytest.fixture(scope='session')
def cloud_storage():
  """A local Cloud Storage server (`tests.cloud_storage`) for this worker;
  this process's clients point at it from then on."""
  with cloud_storage_lib.running() as server:
    os.environ.update(cloud_storage_lib.environment(server.url))
    yield server


@pytest.fixture
def bucket(cloud_storage) -> str:
  """gs:// URL of a new empty bucket on the local server."""
  return f'gs://{cloud_storage.new_bucket()}'
