"""train.py with its workdir in a bucket, as on Cloud TPU pods.

Against a local Cloud Storage server (tests/cloud_storage.py; what it
cannot show is said there), through the clients a pod uses: gcsfs for the
trainer's files, google-cloud-storage for the lock, tensorstore for orbax's
arrays.
"""

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nbn_jax.training import storage, trained
from nbn_jax.training.checkpoints import latest_params
from nbn_jax.training.conversion import write_workdir
from tests import cloud_storage as cloud_storage_lib
from tests.test_train import FAST, QUICKSTART, ROOT, _environment

RUN = [
    f'--config={QUICKSTART}',
    *FAST,
    '--config.num_epochs=0.5',
    '--config.checkpoint_every_epochs=0.25',
]  # 8 steps, checkpoints at steps 4 and 8


def _bucket_environment(server, devices: int = 1) -> dict[str, str]:
  return _environment(devices) | cloud_storage_lib.environment(server.url)


def _run(workdir, *flags, server, cwd, devices=1, timeout=300):
  """train.py in `cwd` (which must stay empty: nothing is written locally)."""
  cwd.mkdir(parents=True, exist_ok=True)
  return subprocess.run(
      [sys.executable, str(ROOT / 'train.py'), f'--workdir={workdir}', *flags],
      cwd=cwd,
      env=_bucket_environment(server, devices),
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def _training(workdir: str, server, cwd: pathlib.Path) -> subprocess.Popen:
  """train.py running RUN in `cwd`, once it logged its first progress line
  (its stderr's later lines are left to read)."""
  cwd.mkdir(parents=True, exist_ok=True)
  run = subprocess.Popen(
      [sys.executable, str(ROOT / 'train.py'), f'--workdir={workdir}', *RUN],
      cwd=cwd,
      env=_bucket_environment(server),
      stderr=subprocess.PIPE,
      text=True,
  )
  for line in run.stderr:
    if re.search(r'step \d+/8 ', line):
      return run
  raise AssertionError(f'train.py ended before training: {run.wait()}')


def _results(workdir: str, name: str = 'results.json') -> dict:
  return json.loads(storage.read_text(f'{workdir}/{name}'))


def _steps(workdir: str) -> list[str]:
  return storage.listdir(f'{workdir}/checkpoints')


@pytest.fixture(scope='module')
def uninterrupted(cloud_storage, tmp_path_factory) -> str:
  """The workdir of the quickstart's 8 steps, run to the end in a bucket."""
  workdir = f'gs://{cloud_storage.new_bucket()}/run'
  cwd = tmp_path_factory.mktemp('cwd')
  result = _run(workdir, *RUN, server=cloud_storage, cwd=cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert list(cwd.iterdir()) == []  # no local folder named gs:, nothing
  return workdir


@pytest.mark.slow
@pytest.mark.xdist_group('quickstart_in_a_bucket')  # one `uninterrupted`
class TestQuickstartInABucket:

  def test_every_output_is_an_object_in_the_bucket(self, uninterrupted):
    names = storage.listdir(uninterrupted)
    assert names == [
        'alpha.png',
        'checkpoints',
        'config.json',
        'metrics',
        'per_class_accuracy.png',
        'results.json',
        'scale_spread.png',
        'tensorboard',
    ]  # the lock released
    assert _steps(uninterrupted) == ['4', '8']
    assert 'nbn_jax_checksums.json' in storage.listdir(
        f'{uninterrupted}/checkpoints/8'
    )
    assert storage.read_bytes(f'{uninterrupted}/alpha.png')[:4] == b'\x89PNG'
    results = _results(uninterrupted)
    assert results['status'] == 'finished' and results['last']['step'] == 8

  def test_its_results_equal_a_local_run_s(self, uninterrupted, tmp_path):
    local = _environment(devices=1)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'train.py'),
            f'--workdir={tmp_path / "local"}',
            *RUN,
        ],
        cwd=ROOT,
        env=local,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _results(str(tmp_path / 'local')) == _results(uninterrupted)

  def test_sigterm_then_a_rerun_ends_as_the_uninterrupted_run(
      self, cloud_storage, tmp_path, uninterrupted
  ):
    workdir = f'gs://{cloud_storage.new_bucket()}/run'
    run = _training(workdir, cloud_storage, tmp_path / 'cwd')
    run.send_signal(signal.SIGTERM)
    stderr = run.communicate(timeout=300)[1]
    assert run.returncode == 75, stderr[-3000:]
    stopped = re.search(r'stopped on SIGTERM after step (\d+);', stderr)
    assert stopped and int(stopped.group(1)) < 8, stderr[-3000:]
    assert _steps(workdir)[-1] == stopped.group(1)
    resumed = _run(workdir, *RUN, server=cloud_storage, cwd=tmp_path / 'cwd')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _results(workdir) == _results(uninterrupted)

  def test_a_corrupt_checkpoint_object_falls_back_with_its_reason(
      self, cloud_storage, tmp_path, uninterrupted
  ):
    workdir = f'gs://{cloud_storage.new_bucket()}/run'
    bucket, key = storage.split(uninterrupted)
    for name, data in cloud_storage.objects(bucket).items():
      if name.startswith(f'{key}/') and not name.endswith('results.json'):
        storage.write_bytes(f'{workdir}/{name[len(key) + 1:]}', data)
    data = next(
        name
        for name in storage.checksums(f'{workdir}/checkpoints/8')
        if name.startswith('state/d/')
    )
    original = storage.read_bytes(f'{workdir}/checkpoints/8/{data}')
    storage.write_bytes(
        f'{workdir}/checkpoints/8/{data}', original[: len(original) // 2]
    )
    resumed = _run(workdir, *RUN, server=cloud_storage, cwd=tmp_path / 'cwd')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(
        rf'checkpoints/8 cannot be restored: {re.escape(data)} has'
        r' \d+ bytes, \d+ when it was written; trying the next newest',
        resumed.stderr,
    ), resumed.stderr[-3000:]
    assert _steps(workdir) == ['4', '8', '8.unreadable']
    assert (
        storage.read_bytes(f'{workdir}/checkpoints/8.unreadable/{data}')
        == original[: len(original) // 2]
    )  # set aside whole, not deleted
    assert _results(workdir) == _results(uninterrupted)

  def test_a_second_run_is_refused_while_the_first_holds_the_workdir(
      self, cloud_storage, tmp_path
  ):
    workdir = f'gs://{cloud_storage.new_bucket()}/run'
    first = _training(workdir, cloud_storage, tmp_path / 'cwd')
    try:
      second = _run(workdir, *RUN, server=cloud_storage, cwd=tmp_path / 'cwd')
    finally:
      first.kill()
      first.communicate()
    assert second.returncode == 1
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: {workdir} is in use by pid {first.pid}')
    assert 'Traceback' not in second.stderr

  def test_an_evaluation_reads_and_writes_the_bucket(
      self, cloud_storage, tmp_path, uninterrupted
  ):
    evaluated = _run(
        uninterrupted,
        *RUN,
        '--config.eval_only=True',
        server=cloud_storage,
        cwd=tmp_path / 'cwd',
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (
        _results(uninterrupted, 'results_eval.json')['last']
        == _results(uninterrupted)['last']
    )

  def test_a_second_stage_starts_from_a_first_stage_in_the_bucket(
      self, cloud_storage, tmp_path, uninterrupted
  ):
    second = f'gs://{cloud_storage.new_bucket()}/crt'
    result = _run(
        second,
        f'--config={ROOT / "configs" / "crt.py"}:quickstart',
        *FAST,
        '--config.num_epochs=0.25',
        f'--config.finetune_from={uninterrupted}',
        server=cloud_storage,
        cwd=tmp_path / 'cwd',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first_stage = _results(second)['first_stage']
    assert first_stage['workdir'] == uninterrupted
    assert first_stage['last'] == _results(uninterrupted)['last']

  def test_trained_load_reads_the_bucket(
      self, uninterrupted, tmp_path, cloud_storage
  ):
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), np.uint8)
    from_bucket = trained.load(uninterrupted)
    bucket, key = storage.split(uninterrupted)
    for name, data in cloud_storage.objects(bucket).items():
      local = tmp_path / 'copy' / name[len(key) + 1 :]
      local.parent.mkdir(parents=True, exist_ok=True)
      local.write_bytes(data)
    np.testing.assert_array_equal(
        from_bucket.logits(images),
        trained.load(str(tmp_path / 'copy')).logits(images),
    )


@pytest.mark.slow
def test_two_runs_in_one_program_write_each_run_s_folder(
    cloud_storage, tmp_path
):
  workdir = f'gs://{cloud_storage.new_bucket()}/runs'
  result = _run(
      workdir,
      *RUN,
      '--config.num_runs=2',
      server=cloud_storage,
      cwd=tmp_path / 'cwd',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(storage.read_text(f'{workdir}/summary.json'))
  assert summary['seeds'] == [0, 1]
  for k in range(2):
    assert _results(f'{workdir}/run_{k}')['seed'] == k
    assert storage.listdir(f'{workdir}/run_{k}') == [
        'alpha.png',
        'metrics',
        'per_class_accuracy.png',
        'results.json',
        'scale_spread.png',
        'tensorboard',
    ]
  assert _steps(workdir) == ['4', '8']


@pytest.mark.slow
def test_the_converter_writes_into_a_bucket(cloud_storage, tmp_path):
  import torch

  from tests import torch_models, torch_resnet32
  from tests.nbn_jax.training.test_conversion import _cifar_config

  torch.manual_seed(0)
  torch_model = torch_models.randomize(torch_resnet32.ResNet32(10, 'nbn'))
  state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  workdir = f'gs://{cloud_storage.new_bucket()}/converted'
  write_workdir(_cifar_config(), state_dict, workdir)
  write_workdir(_cifar_config(), state_dict, str(tmp_path / 'converted'))
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  np.testing.assert_array_equal(
      trained.load(workdir).logits(images),
      trained.load(str(tmp_path / 'converted')).logits(images),
  )


class TestUnreachable:
  """A URL workdir that cannot be used fails in one line, at once, and
  leaves nothing on the local disk."""

  def _fails(self, workdir, tmp_path, environment, seconds):
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'train.py'),
            f'--workdir={workdir}',
            f'--config={QUICKSTART}',
        ],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert list(cwd.iterdir()) == []
    assert elapsed < seconds, elapsed
    return lines[-1]

  def test_no_server_reachable(self, tmp_path):
    with cloud_storage_lib.refusing_port() as port:
      environment = _environment(1) | cloud_storage_lib.environment(
          f'http://127.0.0.1:{port}'
      )
      line = self._fails('gs://bucket/run', tmp_path, environment, 60)
    assert line.startswith(
        'error: --workdir=gs://bucket/run: Cloud Storage cannot be reached ('
    ), line

  def test_another_scheme_is_refused_before_anything_starts(self, tmp_path):
    line = self._fails('s3://bucket/run', tmp_path, _environment(1), 60)
    assert line == (
        'error: --workdir=s3://bucket/run: s3:// is not supported; give a '
        'local folder or gs://BUCKET/PATH (Cloud Storage).'
    )


# --- Two processes of four devices, one workdir in a bucket -------------------

TWO_PROCESSES = [
    f'--config={QUICKSTART}',
    *FAST,
    '--config.input_path=tf_data',
    '--config.num_epochs=0.5',
    '--config.eval_every_epochs=0.5',
    '--config.checkpoint_every_epochs=0.25',
]  # 8 steps, checkpoints at steps 4 and 8


class _Processes:
  """The processes of one distributed train.py run, their stderr in files."""

  def __init__(self, workdir, server, folder: pathlib.Path, count=2):
    port = cloud_storage_lib.free_port()
    folder.mkdir(parents=True, exist_ok=True)
    self.logs = [folder / f'process_{i}.log' for i in range(count)]
    self.processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / 'train.py'),
                f'--workdir={workdir}',
                *TWO_PROCESSES,
                f'--coordinator_address=localhost:{port}',
                f'--num_processes={count}',
                f'--process_id={i}',
            ],
            cwd=folder,
            env=_bucket_environment(server, devices=8 // count),
            stdout=subprocess.DEVNULL,
            stderr=log.open('w'),
            text=True,
        )
        for i, log in enumerate(self.logs)
    ]

  def log(self, i: int) -> str:
    return self.logs[i].read_text()

  def wait_for(self, i: int, pattern: str, timeout: float = 300):
    """Blocks until process i's log has a line matching `pattern`."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, self.log(i)):
      assert time.monotonic() < deadline, self.log(i)[-3000:]
      assert self.processes[i].poll() is None, self.log(i)[-3000:]
      time.sleep(0.01)

  def finish(self, timeout: float = 300) -> list[int]:
    return [p.wait(timeout=timeout) for p in self.processes]


@pytest.fixture(scope='module')
def two_processes(cloud_storage, tmp_path_factory) -> str:
  """The workdir of two processes' uninterrupted run in a bucket."""
  workdir = f'gs://{cloud_storage.new_bucket()}/two'
  run = _Processes(workdir, cloud_storage, tmp_path_factory.mktemp('two'))
  assert run.finish() == [0, 0], run.log(0)[-3000:] + run.log(1)[-3000:]
  assert 'JAX process 1 of 2 started' in run.log(1)
  return workdir


@pytest.mark.slow
@pytest.mark.xdist_group('two_processes')  # one `two_processes` run
class TestTwoProcesses:

  def test_they_equal_one_process_of_eight_devices(
      self, cloud_storage, tmp_path, two_processes
  ):
    one = f'gs://{cloud_storage.new_bucket()}/one'
    single = _run(
        one, *TWO_PROCESSES, server=cloud_storage, cwd=tmp_path, devices=8
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert _results(two_processes)['last']['test'] == pytest.approx(
        _results(one)['last']['test']
    )
    jax.tree.map(
        lambda two, one: np.testing.assert_allclose(
            two, one, rtol=1e-4, atol=1e-5
        ),
        latest_params(two_processes),
        latest_params(one),
    )

  def test_a_sigterm_to_one_stops_both_at_one_step_and_the_rerun_resumes(
      self, cloud_storage, tmp_path, two_processes
  ):
    workdir = f'gs://{cloud_storage.new_bucket()}/two'
    run = _Processes(workdir, cloud_storage, tmp_path)
    run.wait_for(0, r'step \d+/8 ')
    run.processes[1].send_signal(signal.SIGTERM)
    assert run.finish() == [75, 75]
    steps = []
    for i, who in ((0, 'a signal to another host'), (1, 'SIGTERM')):
      log = run.log(i)
      assert 'Traceback' not in log, log[-3000:]
      stopped = re.search(f'stopped on {who} after step (\\d+);', log)
      assert stopped, log[-3000:]
      steps.append(stopped.group(1))
    assert steps[0] == steps[1] and _steps(workdir)[-1] == steps[0]
    rerun = _Processes(workdir, cloud_storage, tmp_path / 'rerun')
    assert rerun.finish() == [0, 0], rerun.log(0)[-3000:]
    assert _results(workdir) == _results(two_processes)

  def test_a_sigterm_right_after_the_start_stops_both_in_one_line(
      self, cloud_storage, tmp_path, two_processes
  ):
    workdir = f'gs://{cloud_storage.new_bucket()}/two'
    run = _Processes(workdir, cloud_storage, tmp_path)
    run.wait_for(1, 'JAX process 1 of 2 started')
    run.processes[1].send_signal(signal.SIGTERM)
    assert run.finish() == [75, 75]
    for i, who in ((0, 'a signal to another host'), (1, 'SIGTERM')):
      log = run.log(i)
      assert 'Traceback' not in log, log[-3000:]
      last = log.strip().splitlines()[-1]
      assert f'stopped on {who} outside the training steps' in last, log[-3000:]
    assert storage.listdir(workdir) == []  # nothing written, locks released
    rerun = _Processes(workdir, cloud_storage, tmp_path / 'rerun')
    assert rerun.finish() == [0, 0], rerun.log(0)[-3000:]
    assert _results(workdir) == _results(two_processes)


def test_an_unreachable_gs_list_file_is_one_line_naming_it(tmp_path):
  """Input stays on TensorFlow's file system (which no local server can
  stand in for): with no network, or no such bucket, one line."""
  list_file = 'gs://nbn-jax-test-no-such-bucket/lists/train.txt'
  result = subprocess.run(
      [
          sys.executable,
          str(ROOT / 'train.py'),
          f'--workdir={tmp_path / "workdir"}',
          f'--config={ROOT / "configs" / "imagenet_lt.py"}',
          f'--config.train_list={list_file}',
          '--config.image_root=gs://nbn-jax-test-no-such-bucket/images',
          '--config.test_list=gs://nbn-jax-test-no-such-bucket/lists/test.txt',
      ],
      cwd=ROOT,
      env=_environment(1)
      | {  # TensorFlow's client: no retries, short timeouts
          'GCS_RETRY_CONFIG_MAX_RETRIES': '0',
          'GCS_REQUEST_CONNECTION_TIMEOUT_SECS': '5',
          'GCS_METADATA_REQUEST_TIMEOUT_SECS': '1',
      },
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and list_file in last, last
  assert not (tmp_path / 'workdir').exists()
