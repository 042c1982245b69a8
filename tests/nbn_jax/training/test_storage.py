"""storage: one way to name a place for outputs, a local folder or a bucket.

The bucket is a local Cloud Storage server (tests/cloud_storage.py), reached
through the same clients as a real one.
"""

import os
import stat
import subprocess
import sys

import google_crc32c
import pytest

from nbn_jax.training import WorkdirError, storage
from tests import cloud_storage


@pytest.fixture(params=['local', 'bucket'])
def folder(request, tmp_path) -> str:
  """A folder that does not exist yet, locally or in a bucket."""
  if request.param == 'bucket':
    return f'{request.getfixturevalue("bucket")}/run'
  return str(tmp_path / 'run')


class TestResolve:

  def test_a_local_path_is_made_absolute(self, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve('runs/a') == str(tmp_path / 'runs' / 'a')

  def test_a_bucket_url_is_kept_as_it_is(self):
    assert storage.resolve('gs://bucket/run/') == 'gs://bucket/run'

  @pytest.mark.parametrize(
      'path, message',
      [
          ('', '--workdir is empty; give a local folder or gs://BUCKET/PATH.'),
          (
              's3://bucket/run',
              (
                  '--workdir=s3://bucket/run: s3:// is not supported; give a '
                  'local folder or gs://BUCKET/PATH (Cloud Storage).'
              ),
          ),
          (
              'gs:///run',
              '--workdir=gs:///run names no bucket (gs://BUCKET/PATH).',
          ),
      ],
  )
  def test_what_cannot_be_served_is_refused_in_one_line(self, path, message):
    with pytest.raises(WorkdirError) as error:
      storage.resolve(path)
    assert str(error.value) == message

  def test_the_message_names_the_setting(self):
    with pytest.raises(WorkdirError, match='^config.finetune_from=hdfs://'):
      storage.resolve('hdfs://x/y', 'config.finetune_from')


class TestFiles:

  def test_written_files_are_read_and_listed(self, folder):
    storage.write_text(storage.join(folder, 'a.json'), '{"a": 1}')
    storage.write_bytes(storage.join(folder, 'sub', 'b'), b'\x00\x01')
    assert storage.read_text(storage.join(folder, 'a.json')) == '{"a": 1}'
    assert storage.read_bytes(storage.join(folder, 'sub', 'b')) == b'\x00\x01'
    assert storage.listdir(folder) == ['a.json', 'sub']
    assert storage.exists(storage.join(folder, 'a.json'))
    storage.remove(storage.join(folder, 'a.json'))
    storage.remove(storage.join(folder, 'a.json'))  # gone: nothing to do
    assert not storage.exists(storage.join(folder, 'a.json'))

  def test_a_missing_file_is_file_not_found(self, folder):
    with pytest.raises(FileNotFoundError):
      storage.read_text(storage.join(folder, 'missing.json'))
    assert storage.listdir(storage.join(folder, 'missing')) == []

  def test_a_write_replaces_the_whole_file(self, folder):
    path = storage.join(folder, 'results.json')
    storage.write_text(path, 'a much longer first version')
    storage.write_text(path, 'second')
    assert storage.read_text(path) == 'second'

  def test_a_local_write_cut_short_leaves_the_old_file_and_no_other(
      self, tmp_path, monkeypatch
  ):
    path = str(tmp_path / 'results.json')
    storage.write_text(path, 'old')

    def killed(*args):
      raise KeyboardInterrupt

    monkeypatch.setattr(os, 'chmod', killed)  # after the bytes, before replace
    with pytest.raises(KeyboardInterrupt):
      storage.write_text(path, 'new')
    assert os.listdir(tmp_path) == ['results.json']
    assert storage.read_text(path) == 'old'

  def test_local_files_are_readable_as_open_makes_them(self, tmp_path):
    mask = os.umask(0o022)
    try:
      storage.write_text(str(tmp_path / 'results.json'), '{}')
    finally:
      os.umask(mask)
    mode = stat.S_IMODE(os.stat(tmp_path / 'results.json').st_mode)
    assert mode == 0o644


class TestChecksums:

  def test_size_and_crc32c_of_every_file(self, folder):
    files = {'a': b'some bytes', 'd/b': b'', 'd/e/c': b'x' * 1000}
    for name, data in files.items():
      storage.write_bytes(storage.join(folder, name), data)
    storage.write_bytes(storage.join(folder, 'list.json'), b'skipped')
    assert storage.checksums(folder, skip='list.json') == {
        name: storage.FileSum(
            len(data),
            int.from_bytes(google_crc32c.Checksum(data).digest(), 'big'),
        )
        for name, data in files.items()
    }

  def test_a_bucket_s_come_from_its_listing_without_downloading(
      self, bucket, monkeypatch
  ):
    storage.write_bytes(f'{bucket}/run/a', b'data')
    fs = storage._gcs()

    def no_download(*args, **kwargs):
      raise AssertionError('downloaded')

    for method in ('open', 'cat', 'cat_file', '_cat_file', 'get_file'):
      monkeypatch.setattr(fs, method, no_download)
    assert storage.checksums(f'{bucket}/run')['a'].size == 4

  def test_a_large_file_s_checksum_covers_every_chunk(
      self, tmp_path, monkeypatch
  ):
    monkeypatch.setattr(storage, '_CHUNK_BYTES', 4)
    path = tmp_path / 'state'
    path.write_bytes(b'0123456789ab')
    before = storage.file_crc32c(str(path))
    assert before == int.from_bytes(
        google_crc32c.Checksum(b'0123456789ab').digest(), 'big'
    )
    path.write_bytes(b'X123456789ab')  # the first chunk changed
    assert storage.file_crc32c(str(path)) != before


class TestSetAside:

  def test_the_folder_moves_whole_under_its_new_name(self, folder):
    for name in ('commit_success.txt', 'state/a', 'state/b'):
      storage.write_text(storage.join(folder, '4', name), name)
    storage.set_aside(storage.join(folder, '4'), storage.join(folder, '4.bad'))
    assert storage.listdir(folder) == ['4.bad']
    assert storage.read_text(storage.join(folder, '4.bad', 'state', 'b')) == (
        'state/b'
    )

  def test_on_a_bucket_the_commit_marker_is_deleted_first(
      self, bucket, monkeypatch
  ):
    step = f'{bucket}/run/4'
    for name in ('a', 'commit_success.txt', 'z'):
      storage.write_text(f'{step}/{name}', name)
    fs = storage._gcs()
    deleted = []
    real_rm_file = fs.rm_file
    monkeypatch.setattr(
        fs, 'rm_file', lambda path: deleted.append(path) or real_rm_file(path)
    )
    storage.set_aside(step, f'{bucket}/run/4.unreadable')
    assert os.path.basename(deleted[0]) == 'commit_success.txt'
    assert len(deleted) == 3


class TestConditionalWrites:

  def test_an_object_is_created_once(self, bucket):
    url = f'{bucket}/run/lock.0'
    generation = storage.create_exclusive(url, b'mine')
    assert generation is not None
    assert storage.create_exclusive(url, b'theirs') is None
    held = storage.read_held(url)
    assert (held.data, held.generation) == (b'mine', generation)
    assert 0 <= held.age < 60

  def test_it_is_replaced_only_at_the_generation_read(self, bucket):
    url = f'{bucket}/run/lock.0'
    first = storage.create_exclusive(url, b'a')
    second = storage.replace_if(url, b'b', first)
    assert second not in (None, first)
    assert storage.replace_if(url, b'c', first) is None  # taken meanwhile
    assert storage.read_held(url).data == b'b'
    assert storage.delete_if(url, second)
    assert storage.read_held(url) is None
    assert storage.replace_if(url, b'd', second) is None  # deleted

  def test_a_write_refused_by_the_store_is_a_permission_error(
      self, bucket, monkeypatch
  ):
    from google.api_core import exceptions
    from google.cloud import storage as gcs

    def forbidden(*args, **kwargs):
      raise exceptions.Forbidden('caller does not have storage.objects.create')

    monkeypatch.setattr(gcs.Blob, 'upload_from_string', forbidden)
    with pytest.raises(PermissionError, match='storage.objects.create'):
      storage.create_exclusive(f'{bucket}/run/lock.0', b'')


class TestCheckReachable:

  def test_a_bucket_that_exists_passes(self, bucket):
    storage.check_reachable(f'{bucket}/run')

  def test_a_missing_bucket_is_one_line_saying_so(self, cloud_storage):
    with pytest.raises(WorkdirError) as error:
      storage.check_reachable('gs://no-such-bucket/run')
    assert str(error.value) == (
        '--workdir=gs://no-such-bucket/run: the bucket no-such-bucket does '
        'not exist; create it (gcloud storage buckets create '
        'gs://no-such-bucket) or check the name.'
    )

  def test_an_unreachable_store_is_one_line_within_the_limit(self, tmp_path):
    # A fresh process: this one's clients point at the local server.
    with cloud_storage.refusing_port() as port:
      environment = dict(
          os.environ,
          **cloud_storage.environment(f'http://127.0.0.1:{port}'),
      )
      checked = subprocess.run(
          [
              sys.executable,
              '-c',
              (
                  'from nbn_jax.training import storage;'
                  'storage.check_reachable("gs://bucket/run")'
              ),
          ],
          env=environment,
          capture_output=True,
          text=True,
          timeout=storage.REACH_SECONDS + 30,
      )
    last = checked.stderr.strip().splitlines()[-1]
    assert last.startswith(
        'nbn_jax.training.errors.WorkdirError: --workdir=gs://bucket/run: '
        'Cloud Storage cannot be reached ('
    )
    assert last.endswith('); check the network and retry.')


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
  import errno
  import tempfile

  class FullDisk:
    name = str(tmp_path / 'x.partial')

    def __init__(self, *args, **kwargs):
      open(self.name, 'wb').close()

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def write(self, data):
      pass

    def flush(self):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self):
      pass

  monkeypatch.setattr(tempfile, 'NamedTemporaryFile', FullDisk)
  with pytest.raises(OSError) as error:
    storage.write_text(str(tmp_path / 'config.json'), '{}')
  assert (error.value.errno, error.value.filename) == (
      errno.ENOSPC,
      str(tmp_path / 'config.json'),
  )
  assert os.listdir(tmp_path) == []
