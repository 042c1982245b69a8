"""A workdir holds one run: its recorded config, and a lock."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from configs import quickstart
from nbn_jax.training import storage
from nbn_jax.training import workdir as wd


@pytest.fixture
def config():
  return quickstart.get_config().to_dict()


class TestConfigCheck:

  def test_a_new_workdir_accepts_any_config(self, tmp_path, config):
    assert wd.check_unchanged_config(str(tmp_path), config) == {}

  def test_the_recorded_config_is_accepted_again(self, tmp_path, config):
    wd.record_config(str(tmp_path), config)
    assert wd.check_unchanged_config(str(tmp_path), config) == {}
    assert os.listdir(tmp_path) == ['config.json']

  def test_changed_seed_learning_rate_and_norm_are_refused_by_name(
      self, tmp_path, config
  ):
    wd.record_config(str(tmp_path), config)
    changed = config | {'seed': 5, 'learning_rate': 0.5, 'norm': 'bn'}
    with pytest.raises(wd.WorkdirError) as error:
      wd.check_unchanged_config(str(tmp_path), changed)
    message = str(error.value)
    assert '\n' not in message
    assert (
        "learning_rate (0.05 -> 0.5), norm ('nbn' -> 'bn'), seed (0 -> 5)"
        in message
    )
    assert '--allow_config_change' in message

  def test_tuple_fields_compare_as_recorded(self, tmp_path, config):
    wd.record_config(str(tmp_path), config)
    assert wd.check_unchanged_config(str(tmp_path), dict(config)) == {}
    changed = config | {'lr_decay_epochs': (40.0, 55.0)}
    with pytest.raises(wd.WorkdirError, match=r'lr_decay_epochs \(\[45.0'):
      wd.check_unchanged_config(str(tmp_path), changed)

  @pytest.mark.parametrize(
      'field, value',
      [
          ('log_every_steps', 7),
          ('steps_per_dispatch', 1),
          ('eval_batch_size', 64),
          ('checkpoint_every_epochs', 5.0),
          ('keep_checkpoints', 9),
          ('eval_only', True),
          ('data_dir', '/elsewhere'),
          ('cache_dir', '/tmp/cache'),
      ],
  )
  def test_fields_that_cannot_change_the_result_may_differ(
      self, tmp_path, config, field, value
  ):
    wd.record_config(str(tmp_path), config)
    assert (
        wd.check_unchanged_config(str(tmp_path), config | {field: value}) == {}
    )

  def test_an_evaluation_may_read_another_copy_of_the_data(
      self, tmp_path, config
  ):
    """CIFAR-10 trained from TFDS, evaluated on its JPEG copy: allowed to
    an evaluation alone (the results record the copy)."""
    wd.record_config(str(tmp_path), config | {'data_source': 'tfds'})
    jpeg = config | {'data_source': 'jpeg'}
    evaluation = jpeg | {'eval_only': True}
    assert wd.check_unchanged_config(str(tmp_path), evaluation) == {}
    with pytest.raises(
        wd.WorkdirError, match="data_source \\('tfds' -> 'jpeg'"
    ):
      wd.check_unchanged_config(str(tmp_path), jpeg)

  def test_eval_every_changes_the_best_on_val_selection(self, tmp_path, config):
    wd.record_config(str(tmp_path), config)
    with pytest.raises(wd.WorkdirError, match='eval_every_epochs'):
      wd.check_unchanged_config(
          str(tmp_path), config | {'eval_every_epochs': 5.0}
      )

  def test_a_field_missing_on_one_side_counts_as_changed(self):
    assert wd.changed_fields({'a': 1}, {'a': 1, 'b': 2}) == {'b': (None, 2)}

  def test_a_field_newer_than_the_record_at_its_default_is_unchanged(self):
    defaults = {'a': 0, 'b': 2}
    assert wd.changed_fields({'a': 1}, {'a': 1, 'b': 2}, defaults) == {}
    assert wd.changed_fields({'a': 1}, {'a': 1, 'b': 3}, defaults) == {
        'b': (None, 3)
    }
    # A field the record has counts even at its default.
    assert wd.changed_fields({'a': 1}, {'a': 0}, defaults) == {'a': (1, 0)}

  def test_allowed_changes_are_returned(self, tmp_path, config):
    wd.record_config(str(tmp_path), config)
    changes = wd.check_unchanged_config(
        str(tmp_path), config | {'seed': 5}, allow_changes=True
    )
    assert changes == {'seed': (0, 5)}

  def test_an_unreadable_record_names_the_file(self, tmp_path, config):
    (tmp_path / 'config.json').write_text('{"seed": ')
    with pytest.raises(wd.WorkdirError, match=r'config.json cannot be read'):
      wd.check_unchanged_config(str(tmp_path), config)


class TestClaim:

  def test_a_refused_run_leaves_no_folder_behind(self, tmp_path, config):
    workdir = tmp_path / 'a' / 'b'
    with pytest.raises(RuntimeError, match='refused later'):
      with wd.claim(str(workdir), config):
        assert sorted(os.listdir(workdir)) == ['lock.0']
        raise RuntimeError('refused later')
    assert not (tmp_path / 'a').exists()

  def test_a_signal_while_making_folders_leaves_none(
      self, tmp_path, config, monkeypatch
  ):
    # A SIGTERM raises where the program is (preemption.Terminated).
    real_mkdir = os.mkdir

    def signalled_after_the_first(path, *args, **kwargs):
      if os.path.exists(tmp_path / 'a'):
        raise KeyboardInterrupt
      real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, 'mkdir', signalled_after_the_first)
    with pytest.raises(KeyboardInterrupt):
      with wd.claim(str(tmp_path / 'a' / 'b'), config):
        pytest.fail('entered')
    assert os.listdir(tmp_path) == []

  @pytest.mark.parametrize(
      'moment',
      [
          (os, 'fdopen'),  # the lock file, created, gets its contents
          (threading.Thread, 'start'),  # its heartbeat starts
      ],
      ids=['writing', 'heartbeat'],
  )
  def test_a_signal_while_taking_the_lock_leaves_no_lock(
      self, tmp_path, config, monkeypatch, moment
  ):
    def signalled(*args, **kwargs):
      raise KeyboardInterrupt

    monkeypatch.setattr(*moment, signalled)
    with pytest.raises(KeyboardInterrupt):
      with wd.claim(str(tmp_path / 'run'), config):
        pytest.fail('entered')
    assert os.listdir(tmp_path) == []

  def test_folders_the_run_wrote_into_stay(self, tmp_path, config):
    workdir = tmp_path / 'run'
    with wd.claim(str(workdir), config):
      wd.record_config(str(workdir), config)
    assert os.listdir(workdir) == ['config.json']

  def test_a_changed_config_is_refused_before_anything_is_written(
      self, tmp_path, config
  ):
    wd.record_config(str(tmp_path), config)
    with pytest.raises(wd.WorkdirError, match=r'seed \(0 -> 5\)'):
      with wd.claim(str(tmp_path), config | {'seed': 5}):
        pytest.fail('entered')
    assert os.listdir(tmp_path) == ['config.json']

  def test_a_workdir_that_is_a_file(self, tmp_path, config):
    path = tmp_path / 'results.json'
    path.write_text('{}')
    with pytest.raises(wd.WorkdirError, match='is a file, not a folder'):
      with wd.claim(str(path / 'run'), config):
        pytest.fail('entered')
    with pytest.raises(wd.WorkdirError, match='is a file, not a folder'):
      with wd.claim(str(path), config):
        pytest.fail('entered')

  def test_a_read_only_workdir(self, tmp_path, config, monkeypatch):
    # As a read-only mount answers, whoever runs the test (root included).
    def refuse(path, *args, **kwargs):
      raise PermissionError(13, 'Permission denied', path)

    monkeypatch.setattr(os, 'access', lambda path, mode: False)
    with pytest.raises(wd.WorkdirError, match='is not writable'):
      with wd.claim(str(tmp_path), config):
        pytest.fail('entered')
    monkeypatch.setattr(os, 'mkdir', refuse)
    with pytest.raises(
        wd.WorkdirError, match='cannot be created .Permission denied'
    ):
      with wd.claim(str(tmp_path / 'new'), config):
        pytest.fail('entered')
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


class TestLock:

  def test_a_second_run_is_refused_naming_the_holder(self, tmp_path, config):
    with wd.claim(str(tmp_path), config):
      with pytest.raises(wd.WorkdirError) as error:
        with wd.claim(str(tmp_path), config):
          pytest.fail('entered')
    message = str(error.value)
    assert (
        f'is in use by pid {os.getpid()} on host {socket.gethostname()}'
        in message
    )
    assert 'lock.0' in message and '\n' not in message
    assert os.listdir(tmp_path) == []  # the first run's lock is released

  def test_other_processes_of_one_run_have_their_own_locks(
      self, tmp_path, config
  ):
    with wd.claim(str(tmp_path), config, process_index=0):
      with wd.claim(str(tmp_path), config, process_index=1):
        assert sorted(os.listdir(tmp_path)) == ['lock.0', 'lock.1']

  def test_a_folder_another_host_makes_first_is_shared_and_kept(
      self, tmp_path, config, monkeypatch
  ):
    # Every host of one run claims the same new workdir at once: the one
    # whose mkdir loses the race uses the folder and leaves its removal to
    # the host that made it.
    workdir = tmp_path / 'shared'
    real_mkdir = os.mkdir

    def made_by_another_host_first(path, *args, **kwargs):
      real_mkdir(path)
      real_mkdir(path, *args, **kwargs)  # raises FileExistsError

    monkeypatch.setattr(os, 'mkdir', made_by_another_host_first)
    with wd.claim(str(workdir), config, process_index=1):
      assert os.listdir(workdir) == ['lock.1']
    assert workdir.is_dir()

  def test_the_lock_of_a_dead_process_on_this_host_is_replaced(
      self, tmp_path, config
  ):
    dead = subprocess.run(
        [sys.executable, '-c', 'import os; print(os.getpid())'],
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / 'lock.0').write_text(
        json.dumps({'host': socket.gethostname(), 'pid': int(dead.stdout)})
    )
    with wd.claim(str(tmp_path), config):
      holder = json.loads((tmp_path / 'lock.0').read_text())
      assert holder['pid'] == os.getpid()

  def test_a_reused_pid_is_told_apart_by_its_start_time(self, tmp_path, config):
    (tmp_path / 'lock.0').write_text(
        json.dumps({
            'host': socket.gethostname(),
            'pid': os.getpid(),
            'start_time': 'not this process',
        })
    )
    with wd.claim(str(tmp_path), config):
      pass

  def test_another_hosts_lock_is_stale_only_when_not_refreshed(
      self, tmp_path, config
  ):
    lock = tmp_path / 'lock.0'
    lock.write_text(json.dumps({'host': 'elsewhere', 'pid': 1}))
    with pytest.raises(wd.WorkdirError, match='pid 1 on host elsewhere'):
      with wd.claim(str(tmp_path), config):
        pytest.fail('entered')
    old = os.path.getmtime(lock) - wd.STALE_SECONDS - 1
    os.utime(lock, (old, old))
    with wd.claim(str(tmp_path), config):
      assert json.loads(lock.read_text())['host'] == socket.gethostname()

  def test_a_live_process_of_another_user_holds_its_lock(
      self, tmp_path, config, monkeypatch
  ):
    # Signalling another user's process is refused (EPERM): it is alive.
    pid = os.getpid()  # a live process, whose start time is known
    (tmp_path / 'lock.0').write_text(
        json.dumps({
            'host': socket.gethostname(),
            'pid': pid,
            'start_time': wd._start_time(pid),
        })
    )

    def not_permitted(target, signum):
      raise PermissionError(1, 'Operation not permitted')

    monkeypatch.setattr(os, 'kill', not_permitted)
    with pytest.raises(wd.WorkdirError, match=f'is in use by pid {pid}'):
      with wd.claim(str(tmp_path), config, process_index=0):
        pytest.fail('entered')

  def test_a_running_claim_refreshes_its_lock(
      self, tmp_path, config, monkeypatch
  ):
    monkeypatch.setattr(wd, 'HEARTBEAT_SECONDS', 0.01)
    with wd.claim(str(tmp_path), config):
      lock = tmp_path / 'lock.0'
      old = time.time() - wd.STALE_SECONDS - 1
      os.utime(lock, (old, old))
      deadline = time.monotonic() + 10
      while os.path.getmtime(lock) == old and time.monotonic() < deadline:
        time.sleep(0.01)
      assert os.path.getmtime(lock) > old + wd.STALE_SECONDS


class TestBucketWorkdir:
  """A gs:// workdir, on a local Cloud Storage server: the same rules, with
  a lock object that only one run can create."""

  def _objects(self, bucket):
    return sorted(storage.listdir(f'{bucket}/run'))

  def test_the_lock_is_an_object_held_while_the_run_lasts(self, bucket, config):
    with wd.claim(f'{bucket}/run', config):
      assert self._objects(bucket) == ['lock.0']
      holder = json.loads(storage.read_text(f'{bucket}/run/lock.0'))
      assert (holder['host'], holder['pid']) == (
          socket.gethostname(),
          os.getpid(),
      )
    assert self._objects(bucket) == []  # released; nothing else written

  def test_a_second_run_is_refused_naming_the_holder(self, bucket, config):
    with wd.claim(f'{bucket}/run', config):
      with pytest.raises(wd.WorkdirError) as error:
        with wd.claim(f'{bucket}/run', config):
          pytest.fail('entered')
      assert self._objects(bucket) == ['lock.0']  # still the first run's
    assert f'is in use by pid {os.getpid()} on host' in str(error.value)
    assert f'{bucket}/run/lock.0' in str(error.value)

  def test_another_hosts_lock_is_replaced_only_when_stale(
      self, bucket, config, monkeypatch
  ):
    url = f'{bucket}/run/lock.0'
    storage.create_exclusive(
        url, json.dumps({'host': 'elsewhere', 'pid': 1}).encode()
    )
    with pytest.raises(wd.WorkdirError, match='pid 1 on host elsewhere'):
      with wd.claim(f'{bucket}/run', config):
        pytest.fail('entered')
    monkeypatch.setattr(wd, 'STALE_SECONDS', -1.0)  # not refreshed since
    with wd.claim(f'{bucket}/run', config):
      assert json.loads(storage.read_text(url))['pid'] == os.getpid()

  def test_a_running_claim_refreshes_its_lock_object(
      self, bucket, config, monkeypatch
  ):
    monkeypatch.setattr(wd, 'HEARTBEAT_SECONDS', 0.01)
    url = f'{bucket}/run/lock.0'
    with wd.claim(f'{bucket}/run', config):
      first = storage.read_held(url)
      deadline = time.monotonic() + 10
      while (
          storage.read_held(url).generation == first.generation
          and time.monotonic() < deadline
      ):
        time.sleep(0.01)
      assert storage.read_held(url).generation != first.generation

  def test_the_recorded_config_is_checked_as_in_a_folder(self, bucket, config):
    wd.record_config(f'{bucket}/run', config)
    with pytest.raises(wd.WorkdirError, match=r'seed \(0 -> 5\)'):
      with wd.claim(f'{bucket}/run', config | {'seed': 5}):
        pytest.fail('entered')
    assert self._objects(bucket) == ['config.json']

  def test_a_missing_bucket_is_refused_before_anything_is_written(
      self, cloud_storage, config
  ):
    with pytest.raises(wd.WorkdirError, match='does not exist; create it'):
      with wd.claim('gs://no-such-bucket/run', config):
        pytest.fail('entered')


def test_another_scheme_is_refused_before_anything_is_written(
    tmp_path, config, monkeypatch
):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(wd.WorkdirError, match=r's3:// is not supported'):
    with wd.claim('s3://bucket/run', config):
      pytest.fail('entered')
  assert os.listdir(tmp_path) == []
