"""Checkpoints: a failed write stops the run in one line; a corrupt newest
checkpoint falls back to the next newest, saying why in one sentence."""

import errno
import os
import pathlib
import re
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nbn_jax.training import checkpoints as ckpt


@flax.struct.dataclass
class TinyState:
  step: jax.Array
  params: dict


def _state(step: int) -> TinyState:
  return TinyState(
      jnp.int32(step), {'w': jnp.full((64, 16), step, jnp.float32)}
  )


def _write(workdir, steps, keep=3) -> ckpt.Checkpoints:
  """Checkpoints of `steps`, written; the caller closes them (`with`)."""
  checkpoints = ckpt.Checkpoints(str(workdir), keep)
  for step in steps:
    checkpoints.save(_state(step), {'step': step}, wait=True)
  return checkpoints


def _data_files(step_dir: pathlib.Path):
  return [
      p
      for p in (step_dir / 'state').rglob('*')
      if p.is_file() and p.parent.name == 'd'
  ]


def truncate_data_files(step_dir: pathlib.Path):
  for path in _data_files(step_dir):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_data_bytes(step_dir: pathlib.Path):
  """Eight bytes in the middle of the largest data file, inverted."""
  path = max(_data_files(step_dir), key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
  path.write_bytes(bytes(data))


def delete_metadata(step_dir: pathlib.Path):
  (step_dir / 'state' / '_METADATA').unlink()


def empty_manifests(step_dir: pathlib.Path):
  for path in (step_dir / 'state').rglob('manifest.ocdbt'):
    path.write_bytes(b'')


def empty_process_manifest(step_dir: pathlib.Path):
  # Orbax does not read it once the checkpoint is complete.
  for path in (step_dir / 'state').glob('ocdbt.process_*/manifest.ocdbt'):
    path.write_bytes(b'')


def empty_checkpoint_metadata(step_dir: pathlib.Path):
  # Orbax logs it and restores anyway.
  (step_dir / '_CHECKPOINT_METADATA').write_bytes(b'')


def truncate_record(step_dir: pathlib.Path):
  path = step_dir / 'record' / 'metadata'
  path.write_text(path.read_text()[:-3])


def delete_record(step_dir: pathlib.Path):
  (step_dir / 'record' / 'metadata').unlink()


def garble_checksums(step_dir: pathlib.Path):
  (step_dir / ckpt.CHECKSUMS_FILE).write_text('{"files": {"a": 3}}')


# (corruption, the reason logged for it, a regular expression).
CORRUPTIONS = [
    (truncate_data_files, r'state/(\S+/)?d/\w+ has \d+ bytes, \d+ when it was'),
    (flip_data_bytes, r'd/\w+ has changed since it was written'),
    (delete_metadata, r'state/_METADATA is missing'),
    (empty_manifests, r'state/manifest.ocdbt has 0 bytes'),
    (
        empty_process_manifest,
        r'state/ocdbt.process_0/manifest.ocdbt has 0 bytes',
    ),
    (empty_checkpoint_metadata, r'_CHECKPOINT_METADATA has 0 bytes'),
    (truncate_record, r'record/metadata has \d+ bytes'),
    (garble_checksums, r'its file list nbn_jax_checksums.json cannot be read'),
]


def _reason_logged(caplog, folder) -> str:
  """The one sentence logged on why checkpoint `folder` was skipped."""
  prefix = f'Checkpoint {folder} cannot be restored: '
  reasons = [m for m in caplog.messages if m.startswith(prefix)]
  assert len(reasons) == 1, caplog.messages
  reason = (
      reasons[0].removeprefix(prefix).removesuffix('; trying the next newest.')
  )
  assert '\n' not in reason and 'Error opening' not in reason, reason
  return reason


def test_restores_the_newest_checkpoint_and_its_record(tmp_path):
  with _write(tmp_path, [3, 6]) as checkpoints:
    state, record = checkpoints.restore_latest(_state(0))
  assert int(state.step) == 6 and record == {'step': 6}
  np.testing.assert_array_equal(state.params['w'], 6.0)


def test_a_save_that_waits_returns_the_seconds_of_the_whole_write(
    tmp_path, monkeypatch
):
  """A slow disk: confirming a write takes 0.2 s more."""
  confirm = ckpt.Checkpoints.confirm

  def slow_confirm(checkpoints, *args, **kwargs):
    time.sleep(0.2)
    return confirm(checkpoints, *args, **kwargs)

  monkeypatch.setattr(ckpt.Checkpoints, 'confirm', slow_confirm)
  with ckpt.Checkpoints(str(tmp_path), 3) as checkpoints:
    start = time.perf_counter()
    seconds = checkpoints.save(_state(3), {'step': 3}, wait=True)
    assert 0.2 <= seconds <= time.perf_counter() - start


def test_opening_writes_nothing_and_nothing_to_restore_is_none(tmp_path):
  with ckpt.Checkpoints(str(tmp_path), 2) as checkpoints:
    assert checkpoints.restore_latest(_state(0)) is None
    assert checkpoints.restore_best(_state(0)) is None
  assert not os.listdir(tmp_path)


def test_leaving_a_with_block_confirms_and_closes(tmp_path):
  with ckpt.Checkpoints(str(tmp_path), 2) as checkpoints:
    checkpoints.save(_state(3), {'step': 3})  # the write goes on
  # Confirmed: its checksum list is written once the write is complete.
  assert (tmp_path / 'checkpoints' / '3' / ckpt.CHECKSUMS_FILE).is_file()


@pytest.mark.parametrize(
    'corrupt, reason', CORRUPTIONS, ids=[c[0].__name__ for c in CORRUPTIONS]
)
def test_corrupt_newest_falls_back_to_the_previous(
    tmp_path, corrupt, reason, caplog
):
  _write(tmp_path, [3, 6, 9]).close()
  folder = tmp_path / 'checkpoints'
  corrupt(folder / '9')
  with ckpt.Checkpoints(str(tmp_path), 3) as checkpoints:
    with caplog.at_level('WARNING'):
      state, record = checkpoints.restore_latest(_state(0))
    assert int(state.step) == 6 and record == {'step': 6}
    np.testing.assert_array_equal(state.params['w'], 6.0)
    assert checkpoints.latest.latest_step() == 6  # the folders read again
    assert re.search(reason, _reason_logged(caplog, folder / '9'))
    # Kept, but aside: the run can save step 9 again, and the keep-3
    # clean-up counts only readable checkpoints.
    assert (folder / '9.unreadable').is_dir()
    checkpoints.save(_state(9), {'step': 9}, wait=True)
    checkpoints.save(_state(12), {'step': 12}, wait=True)
    assert sorted(os.listdir(folder)) == ['12', '6', '9', '9.unreadable']
    state, _ = checkpoints.restore_latest(_state(0))
  assert int(state.step) == 12


# A checkpoint without a checksum list (an older version's): orbax's own
# error, in words.
UNVERIFIED = [
    (
        truncate_data_files,
        r'^its array data cannot be read: requested byte range .* is not '
        r'valid for value of size \d+ \(out of range, in state/d/\w+\)$',
    ),
    (
        flip_data_bytes,
        r'^its array data cannot be read: data corruption detected \(in '
        r'state/d/\w+\)$',
    ),
    (delete_metadata, r'^its tree metadata \(state/_METADATA\) is missing'),
    (
        empty_manifests,
        r'^its array data cannot be read: encoded length \(0\) is less than '
        r'minimum length \(16\) \(data loss, in state/manifest.ocdbt\)$',
    ),
    (
        truncate_record,
        r'^one of its JSON files is damaged \(Expecting value at line 1, '
        r'column \d+\)$',
    ),
    (delete_record, r'^record/metadata is missing$'),  # named in the step
]


# A restore that fails inside tensorstore can leave one of its reads running
# past the event loop orbax awaited it on; its completion then reports
# 'Event loop is closed' as an unraisable exception (orbax's, not ours).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize(
    'corrupt, reason', UNVERIFIED, ids=[c[0].__name__ for c in UNVERIFIED]
)
def test_an_unverified_checkpoint_falls_back_with_orbaxs_reason_in_words(
    tmp_path, corrupt, reason, caplog
):
  _write(tmp_path, [3, 6]).close()
  folder = tmp_path / 'checkpoints'
  (folder / '6' / ckpt.CHECKSUMS_FILE).unlink()
  corrupt(folder / '6')
  with (
      caplog.at_level('WARNING'),
      ckpt.Checkpoints(str(tmp_path), 3) as checkpoints,
  ):
    state, _ = checkpoints.restore_latest(_state(0))
  assert int(state.step) == 3
  assert re.search(reason, _reason_logged(caplog, folder / '6'))


def test_a_step_corrupt_twice_is_set_aside_twice(tmp_path):
  _write(tmp_path, [3, 6]).close()
  folder = tmp_path / 'checkpoints'
  for _ in range(2):  # corrupt, fall back, save step 6 again
    truncate_data_files(folder / '6')
    with ckpt.Checkpoints(str(tmp_path), 3) as checkpoints:
      assert int(checkpoints.restore_latest(_state(0))[0].step) == 3
      checkpoints.save(_state(6), {'step': 6}, wait=True)
  assert sorted(os.listdir(folder)) == [
      '3',
      '6',
      '6.unreadable',
      '6.unreadable1',
  ]


def test_two_corrupt_newest_fall_back_two_steps(tmp_path):
  _write(tmp_path, [3, 6, 9]).close()
  truncate_data_files(tmp_path / 'checkpoints' / '9')
  delete_metadata(tmp_path / 'checkpoints' / '6')
  with ckpt.Checkpoints(str(tmp_path), 3) as checkpoints:
    state, _ = checkpoints.restore_latest(_state(0))
  assert int(state.step) == 3
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == [
      '3',
      '6.unreadable',
      '9.unreadable',
  ]


def test_none_intact_is_one_line_naming_the_folder_and_moves_nothing(
    tmp_path,
):
  _write(tmp_path, [3, 6]).close()
  folder = tmp_path / 'checkpoints'
  truncate_record(folder / '3')
  empty_manifests(folder / '6')
  with (
      ckpt.Checkpoints(str(tmp_path), 3) as checkpoints,
      pytest.raises(ckpt.CheckpointError) as error,
  ):
    checkpoints.restore_latest(_state(0))
  message = str(error.value)
  assert '\n' not in message
  assert f'checkpoints in {folder} (steps 6, 3) can be restored' in message
  assert 'delete that folder' in message
  assert sorted(os.listdir(folder)) == ['3', '6']


@pytest.mark.parametrize(
    'params, difference',
    [
        (
            {'w': jnp.zeros((8, 8))},
            'params/w has shape (64, 16) there and (8, 8) here',
        ),
        (
            {'w': jnp.zeros((64, 16)), 'alpha': jnp.ones(())},
            'params/alpha is in the run but not in the checkpoints',
        ),
    ],
)
def test_checkpoints_of_another_network_are_refused_and_left_alone(
    tmp_path, params, difference
):
  # Not corrupt: another network (its config's model changed). Every
  # checkpoint would fail alike; none is moved aside.
  _write(tmp_path, [3, 6]).close()
  with (
      ckpt.Checkpoints(str(tmp_path), 3) as checkpoints,
      pytest.raises(ckpt.CheckpointError) as error,
  ):
    checkpoints.restore_latest(TinyState(jnp.int32(0), params))
  message = str(error.value)
  assert '\n' not in message
  assert (
      f'checkpoints in {tmp_path}/checkpoints hold another network' in message
  )
  assert difference in message and 'use a new --workdir' in message
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']


def _disk_full_for_records(monkeypatch):
  """The background write of every checkpoint's record fails: disk full."""

  async def no_space_left(self, item, directory):
    del self, item
    raise OSError(
        errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / 'metadata')
    )

  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', no_space_left)


def test_a_failed_background_write_is_one_line_and_the_last_good_one_stays(
    tmp_path, monkeypatch
):
  checkpoints = _write(tmp_path, [3])
  _disk_full_for_records(monkeypatch)
  checkpoints.save(_state(6), {'step': 6})  # returns; the write goes on
  with pytest.raises(ckpt.CheckpointError) as error:
    checkpoints.confirm()
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(
      f'writing the checkpoint at step 6 to {tmp_path}/checkpoints failed: no '
      'space left on device. The last good one (step 3) is kept;'
  )
  checkpoints.close()  # the failure is not raised again
  # What the rerun finds (tests/test_train.py reruns train.py).
  with ckpt.Checkpoints(str(tmp_path), 3) as rerun:
    state, _ = rerun.restore_latest(_state(0))
  assert int(state.step) == 3


def test_a_write_failing_on_another_host_stops_this_one_too(tmp_path):
  with ckpt.Checkpoints(
      str(tmp_path), 3, agree=lambda failed_here: True
  ) as checkpoints:
    with pytest.raises(ckpt.CheckpointError, match='failed on another host'):
      checkpoints.save(_state(3), {'step': 3})


@flax.struct.dataclass
class TinyModelState:
  step: jax.Array
  params: dict
  batch_stats: dict


def test_loading_a_workdir_refuses_a_changed_newest_checkpoint(tmp_path):
  with ckpt.Checkpoints(str(tmp_path), 3) as checkpoints:
    for step in (3, 6):
      state = _state(step)
      stats = {'mean': jnp.zeros(16)}
      checkpoints.save(TinyModelState(state.step, state.params, stats), {})
  np.testing.assert_array_equal(ckpt.latest_params(str(tmp_path))['w'], 6.0)
  flip_data_bytes(tmp_path / 'checkpoints' / '6')
  with pytest.raises(ckpt.CheckpointError, match='has changed since it was'):
    ckpt.latest_params(str(tmp_path))


def test_a_write_s_cause_is_found_inside_the_errors_that_wrap_it():
  try:
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/x/metadata')
    except OSError as e:
      raise RuntimeError('the commit thread failed') from e
  except RuntimeError as e:
    wrapped = e
  assert ckpt._write_cause(wrapped) == 'no space left on device'
