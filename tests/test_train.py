"""train.py as users run it: one-line errors, NaN stops, several hosts."""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import pytest

import train
from configs import quickstart
from nbn_jax.training import preemption
from nbn_jax.training import workdir as workdir_lib
from tests.test_readme import command_lines

ROOT = pathlib.Path(__file__).parents[1]
QUICKSTART = str(ROOT / 'configs' / 'quickstart.py')
FAST = [  # a few quickstart steps
    '--config.batch_size=32',
    '--config.eval_batch_size=64',
    '--config.log_every_steps=1',
    '--config.steps_per_dispatch=1',
    '--config.warmup_epochs=0',
]


def _environment(devices: int) -> dict[str, str]:
  """A train.py process's environment: `devices` CPU devices, and most XLA
  optimisations off (as in this process, tests/conftest.py)."""
  return dict(
      os.environ,
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
      JAX_PLATFORMS='cpu',
      JAX_DISABLE_MOST_OPTIMIZATIONS='true',
  )


def _train(workdir, *flags, devices=8, extra_env=None, timeout=300):
  env = _environment(devices) | (extra_env or {})
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


def _snapshot(path: pathlib.Path):
  """Every file and folder under `path` with its size and mtime; None if absent."""
  if not path.exists():
    return None
  return {
      str(p.relative_to(path)): (
          p.is_dir(),
          p.stat().st_size,
          p.stat().st_mtime_ns,
      )
      for p in sorted(path.rglob('*'))
  }


def _write(path: pathlib.Path, text: str) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return str(path)


def _write_bytes(path: pathlib.Path, data: bytes) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return str(path)


def _lists(tmp_path, train_lines: str) -> list[str]:
  """Flags for an ImageNet-LT-shaped list dataset under tmp_path."""
  return [
      f'--config={ROOT / "configs" / "imagenet_lt.py"}',
      f'--config.image_root={tmp_path / "images"}',
      f'--config.train_list={_write(tmp_path / "train.txt", train_lines)}',
      f'--config.test_list={_write(tmp_path / "test.txt", "a.jpg 0")}',
      '--config.val_list=',
  ]


def _record(config_flags_: list[str]):
  """Set-up: the workdir was started with the quickstart plus these flags."""

  def setup(workdir: pathlib.Path, monkeypatch):
    del monkeypatch
    config = quickstart.get_config()
    for flag in config_flags_:
      field, value = flag.removeprefix('--config.').split('=')
      config[field] = type(config[field])(value)
    workdir.mkdir()
    workdir_lib.record_config(str(workdir), config.to_dict())

  return setup


def _held_lock(workdir: pathlib.Path, monkeypatch):
  del monkeypatch
  workdir.mkdir()
  pid = os.getpid()
  (workdir / 'lock.0').write_text(
      json.dumps({
          'host': socket.gethostname(),
          'pid': pid,
          'start_time': workdir_lib._start_time(pid),
      })
  )


def _read_only(workdir: pathlib.Path, monkeypatch):
  workdir.mkdir()
  # What a read-only mount answers, whoever runs the test (root included).
  monkeypatch.setattr(os, 'access', lambda path, mode: False)


def _a_file(workdir: pathlib.Path, monkeypatch):
  del monkeypatch
  workdir.write_text('not a folder')


# (id, flags after --workdir (a function of tmp_path), words the one error
# line must contain, set-up of the workdir or None).
BAD_INPUTS = [
    ('no_config', lambda t: [], ['--config is required'], None),
    (
        'missing_config_file',
        lambda t: [f'--config={t / "nope.py"}'],
        ['nope.py: no such file'],
        None,
    ),
    (
        'config_syntax_error',
        lambda t: [f'--config={_write(t / "c.py", "def get_config(:")}'],
        ['c.py: syntax error at line 1'],
        None,
    ),
    (
        'config_without_get_config',
        lambda t: [f'--config={_write(t / "c.py", "x = 1")}'],
        ['c.py defines no get_config()'],
        None,
    ),
    (
        'get_config_returns_a_non_config',
        lambda t: [
            f'--config={_write(t / "c.py", "def get_config(): return 3")}'
        ],
        ['get_config() returned 3 (int), not an ml_collections.ConfigDict'],
        None,
    ),
    (
        'get_config_raises',
        lambda t: [
            '--config='
            + _write(t / 'c.py', 'def get_config(): raise KeyError("x")')
        ],
        ["get_config() failed: KeyError: 'x'"],
        None,
    ),
    (
        'unknown_field_with_suggestion',
        lambda t: [f'--config={QUICKSTART}', '--config.lerning_rate=0.1'],
        [
            'unknown field config.lerning_rate; did you mean'
            ' config.learning_rate'
        ],
        None,
    ),
    (
        'unknown_field_without_suggestion',
        lambda t: [f'--config={QUICKSTART}', '--config.zzz=1'],
        ['unknown field config.zzz.'],
        None,
    ),
    (
        'second_stage_in_its_first_stage_s_workdir',
        lambda t: [
            f'--config={ROOT / "configs" / "crt.py"}:quickstart',
            f'--config.finetune_from={t / "workdir"}',
        ],
        [
            "config.finetune_from is this run's --workdir",
            'a second stage needs a workdir of its own',
        ],
        _record([]),
    ),
    (
        'config_file_sets_an_unknown_field',
        lambda t: [
            '--config='
            + _write(
                t / 'c.py',
                'from configs import quickstart\n'
                'def get_config():\n'
                '  c = quickstart.get_config()\n'
                '  c.lerning_rate = 0.1\n'
                '  return c\n',
            )
        ],
        [
            'c.py sets an unknown field config.lerning_rate; did you mean'
            ' config.learning_rate?'
        ],
        None,
    ),
    (
        'config_file_lacks_fields',
        lambda t: [
            '--config='
            + _write(
                t / 'c.py',
                'import ml_collections\n'
                'def get_config():\n'
                '  return ml_collections.ConfigDict({"dataset": "digits"})\n',
            )
        ],
        [
            'c.py: its get_config() returns no config.antialias,',
            'start it from configs/default.py',
        ],
        None,
    ),
    (
        'field_of_the_wrong_type',
        lambda t: [f'--config={QUICKSTART}', '--config.learning_rate=abc'],
        ['--config.learning_rate=abc: could not convert'],
        None,
    ),
    (
        'float_for_an_int_field',
        lambda t: [f'--config={QUICKSTART}', '--config.seed=1.5'],
        ['--config.seed=1.5'],
        None,
    ),
    (
        'non_boolean',
        lambda t: [f'--config={QUICKSTART}', '--config.eval_only=maybe'],
        ['--config.eval_only=maybe', 'Non-boolean'],
        None,
    ),
    (
        'field_without_value',
        lambda t: [f'--config={QUICKSTART}', '--config.learning_rate'],
        ['Missing value for flag --config.learning_rate'],
        None,
    ),
    (
        'unknown_flag',
        lambda t: [f'--config={QUICKSTART}', '--workdirr=/tmp/x'],
        ["Unknown command line flag 'workdirr'", 'workdir'],
        None,
    ),
    (
        'positional_argument',
        lambda t: [f'--config={QUICKSTART}', 'extra'],
        ["unexpected arguments ['extra']"],
        None,
    ),
    (
        'workdir_is_a_file',
        lambda t: [f'--config={QUICKSTART}'],
        ['is a file, not a folder'],
        _a_file,
    ),
    (
        'read_only_workdir',
        lambda t: [f'--config={QUICKSTART}'],
        ['is not writable'],
        _read_only,
    ),
    (
        'workdir_in_use',
        lambda t: [f'--config={QUICKSTART}'],
        [f'is in use by pid {os.getpid()}', 'lock.0'],
        _held_lock,
    ),
    (
        'changed_seed_learning_rate_and_norm',
        lambda t: [
            f'--config={QUICKSTART}',
            '--config.seed=5',
            '--config.learning_rate=0.5',
            '--config.norm=bn',
        ],
        [
            "learning_rate (0.05 -> 0.5), norm ('nbn' -> 'bn'), seed (0 -> 5)",
            '--allow_config_change',
        ],
        _record([]),
    ),
    (
        'evaluation_with_a_config_another_network_than_the_workdirs',
        lambda t: [
            f'--config={QUICKSTART}',
            '--config.eval_only=True',
            '--config.num_runs=3',
        ],
        [
            (
                'was trained with another config; these fields differ: num_runs'
                ' (1 -> 3). To evaluate it as it was trained, leave out'
                ' --config: python train.py --workdir={t}/workdir'
                ' --config.eval_only=True'
            ),
        ],
        _record([]),
    ),
    (
        'evaluation_of_a_folder_that_recorded_no_config',
        lambda t: ['--config.eval_only=True'],
        ['--workdir={t}/workdir holds no config.json', 'give --config'],
        None,
    ),
    (
        'evaluation_from_the_recorded_config_with_a_result_field',
        lambda t: ['--config.eval_only=True', '--config.seed=3'],
        [
            (
                '--config.seed: an evaluation from the config the --workdir '
                'recorded takes only cache_dir,'
            ),
            'give --config (and --allow_config_change)',
        ],
        _record([]),
    ),
    (
        'unreadable_recorded_config',
        lambda t: [f'--config={QUICKSTART}'],
        ['config.json cannot be read'],
        lambda w, m: _write(w / 'config.json', '{"seed": '),
    ),
    *[
        (
            f'imbalance_factor_{value}',
            lambda t, value=value: [
                f'--config={QUICKSTART}',
                f'--config.imbalance_factor={value}',
            ],
            [f'imbalance_factor={value}', 'must be >= 1'],
            None,
        )
        for value in ('0.0', '0.5', '-1.0')
    ],
    (
        'negative_learning_rate',
        lambda t: [f'--config={QUICKSTART}', '--config.learning_rate=-0.1'],
        ['config.learning_rate=-0.1 must be > 0'],
        None,
    ),
    (
        'negative_weight_decay',
        lambda t: [f'--config={QUICKSTART}', '--config.weight_decay=-1.0'],
        ['config.weight_decay=-1.0 must be >= 0'],
        None,
    ),
    (
        'zero_batch_size',
        lambda t: [f'--config={QUICKSTART}', '--config.batch_size=0'],
        ['config.batch_size=0 must be > 0'],
        None,
    ),
    (
        'batch_not_divisible_by_devices',
        lambda t: [f'--config={QUICKSTART}', '--config.batch_size=60'],
        ['config.batch_size=60 is not divisible by the 8 devices'],
        None,
    ),
    (
        'unknown_norm',
        lambda t: [f'--config={QUICKSTART}', '--config.norm=ln'],
        ["config.norm='ln' is not one of"],
        None,
    ),
    (
        'unknown_model',
        lambda t: [f'--config={QUICKSTART}', '--config.model=ResNet99'],
        ["config.model='ResNet99' is not one of"],
        None,
    ),
    (
        'few_threshold_above_many',
        lambda t: [f'--config={QUICKSTART}', '--config.few_threshold=100'],
        ['few_threshold must not exceed config.many_threshold'],
        None,
    ),
    (
        'missing_tfds_dataset',
        lambda t: [
            f'--config={ROOT / "configs" / "cifar10_lt.py"}',
            f'--config.data_dir={t / "no-tfds"}',
        ],
        ['cifar10 is not prepared', 'tfds build cifar10'],
        None,
    ),
    (
        'missing_list_file',
        lambda t: _lists(t, 'a.jpg 0')
        + [f'--config.train_list={t / "no.txt"}'],
        ['list file {t}/no.txt does not exist'],
        None,
    ),
    (
        'list_path_climbing_out_of_the_root',
        lambda t: _lists(t, 'a.jpg 0\n../../../etc/passwd 3\n'),
        ["train.txt:2: path '../../../etc/passwd' leaves image_root"],
        None,
    ),
    (
        'absolute_list_path',
        lambda t: _lists(t, '/etc/passwd 3\n'),
        ["train.txt:1: path '/etc/passwd' leaves image_root"],
        None,
    ),
    (
        'malformed_list_line',
        lambda t: _lists(t, 'a.jpg zero\n'),
        ['train.txt:1: expected "relative/path label"'],
        None,
    ),
    (
        'list_file_not_utf8',
        lambda t: _lists(t, '')
        + [
            '--config.train_list='
            + _write_bytes(
                t / 'latin1.txt', 'a.jpg 0\ncaf\xe9.jpg 1\n'.encode('latin-1')
            )
        ],
        ['latin1.txt:2: not UTF-8 text (byte 0xe9 at byte 4 of the line)'],
        None,
    ),
    (
        'list_file_is_a_folder',
        lambda t: _lists(t, '') + [f'--config.train_list={t}'],
        ['list file {t} cannot be read (Is a directory)'],
        None,
    ),
]


@pytest.mark.parametrize(
    'flags_of, words, setup',
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_one_line_and_leaves_the_workdir_as_it_was(
    tmp_path, capfd, monkeypatch, flags_of, words, setup
):
  workdir = tmp_path / 'workdir'
  if setup is not None:
    setup(workdir, monkeypatch)
  before = _snapshot(workdir)
  capfd.readouterr()
  status = train.main(['train.py', f'--workdir={workdir}', *flags_of(tmp_path)])
  stderr = capfd.readouterr().err
  monkeypatch.undo()
  assert status == 1
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), stderr[-3000:]
  for word in words:
    assert word.replace('{t}', str(tmp_path)) in lines[0]
  assert _snapshot(workdir) == before


def test_a_changed_log_frequency_is_accepted(tmp_path):
  workdir = tmp_path / 'workdir'
  _record([])(workdir, None)
  with workdir_lib.claim(
      str(workdir),
      (quickstart.get_config().to_dict() | {'log_every_steps': 1}),
  ) as changes:
    assert changes == {}


def test_a_workdir_recorded_before_a_new_field_resumes(tmp_path, monkeypatch):
  """A field added since the run started, at its default, is no change."""
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  older = quickstart.get_config().to_dict()
  for field in ('ldam_max_m', 'finetune_from'):  # before these existed
    del older[field]
  workdir_lib.record_config(str(workdir), older)
  monkeypatch.setattr(
      train, 'train_and_evaluate', lambda config, workdir, signals: {}
  )
  args = ['train.py', f'--workdir={workdir}', f'--config={QUICKSTART}']
  assert train.main(args) == 0
  assert train.main([*args, '--config.ldam_max_m=0.3']) == 1  # a change


def test_no_workdir_flag_is_one_line(capfd):
  assert train.main(['train.py', f'--config={QUICKSTART}']) == 1
  assert capfd.readouterr().err == 'error: --workdir is required.\n'


@pytest.mark.parametrize('filtered', [True, False])
def test_writes_a_failed_checkpoint_abandoned_are_not_echoed(filtered):
  """train.py's filter drops Python's 'coroutine ... was never awaited'
  lines that follow the one error line of a failed checkpoint write."""

  async def write_fragment():
    pass

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    if filtered:
      warnings.filterwarnings(
          'ignore', message=train.ABANDONED_COROUTINE, category=RuntimeWarning
      )
    abandoned = write_fragment()
    del abandoned  # never awaited: Python warns as it is collected
  assert [str(w.message) for w in caught] == (
      []
      if filtered
      else [
          "coroutine 'test_writes_a_failed_checkpoint_abandoned_are_not_echoed"
          ".<locals>.write_fragment' was never awaited"
      ]
  )


@pytest.mark.slow
class TestPendingLoopWiring:
  """What the loop must do with the pieces above (see the closing note)."""

  def test_eval_only_on_an_empty_workdir_leaves_nothing(self, tmp_path, capfd):
    workdir = tmp_path / 'workdir'
    status = train.main([
        'train.py',
        f'--workdir={workdir}',
        f'--config={QUICKSTART}',
        '--config.eval_only=True',
    ])
    line = capfd.readouterr().err.strip()
    assert status == 1 and 'holds no checkpoint' in line
    assert not workdir.exists()

  def test_the_config_is_recorded_when_training_starts(self, tmp_path):
    workdir = tmp_path / 'workdir'
    assert (
        train.main([
            'train.py',
            f'--workdir={workdir}',
            f'--config={QUICKSTART}',
            *FAST,
            '--config.num_epochs=0.125',
        ])
        == 0
    )
    recorded = json.loads((workdir / 'config.json').read_text())
    assert recorded['batch_size'] == 32

  def test_a_truncated_jpeg_is_refused_before_training(self, tmp_path, capfd):
    from tests.fake_data import write_jpeg_dataset

    root = tmp_path / 'images'
    write_jpeg_dataset(str(root), str(tmp_path / 'train.txt'), [2] * 1000)
    write_jpeg_dataset(
        str(root), str(tmp_path / 'test.txt'), [1] * 1000, split='test'
    )
    bad = root / 'test' / 'class7' / '0000.jpg'
    bad.write_bytes(bad.read_bytes()[:-100])
    status = train.main([
        'train.py',
        f'--workdir={tmp_path / "workdir"}',
        f'--config={ROOT / "configs" / "imagenet_lt.py"}',
        f'--config.image_root={root}',
        f'--config.train_list={tmp_path / "train.txt"}',
        f'--config.test_list={tmp_path / "test.txt"}',
        '--config.val_list=',
        f'--config.cache_dir={tmp_path / "cache"}',
        # Small, should the check miss it and train.
        '--config.model=ResNet8',
        '--config.image_size=16',
        '--config.resize_size=16',
        '--config.num_epochs=0.02',
    ])
    line = capfd.readouterr().err.strip()
    assert status == 1 and f'{bad}: truncated JPEG' in line
    assert not (tmp_path / 'workdir').exists()


def test_the_evaluation_guides_commands_are_valid_command_lines(tmp_path):
  """docs/evaluation.md's train.py commands parse, on a workdir that
  recorded the quickstart's config, into evaluations of that config."""
  workdir = tmp_path / 'workdir'
  _record([])(workdir, None)
  commands = command_lines('python train.py', ROOT / 'docs' / 'evaluation.md')
  assert len(commands) == 2
  for argv in commands:
    values = train.parse_flags(
        [arg.replace('WORKDIR', str(workdir)) for arg in argv]
    )
    assert values.config.eval_only
    assert values.config.model == quickstart.get_config().model


@pytest.mark.slow
@pytest.mark.parametrize('num_runs', [1, 2])
def test_a_workdir_evaluates_from_the_config_it_recorded(
    tmp_path, caplog, num_runs
):
  """--workdir and --config.eval_only=True alone: the recorded config
  (its num_runs included), the eval batch given, config.json untouched."""
  workdir = tmp_path / 'workdir'
  trained = [
      'train.py',
      f'--workdir={workdir}',
      f'--config={QUICKSTART}',
      *FAST,
      '--config.num_epochs=0.125',
      f'--config.num_runs={num_runs}',
  ]
  assert train.main(trained) == 0
  recorded = (workdir / 'config.json').read_text()
  with caplog.at_level('INFO'):
    status = train.main([
        'train.py',
        f'--workdir={workdir}',
        '--config.eval_only=True',
        '--config.eval_batch_size=128',
    ])
  assert status == 0
  assert f'Evaluating the checkpoint at step 2 of {workdir}.' in caplog.text
  assert 'Resuming' not in caplog.text
  run_dirs = [workdir / f'run_{k}' for k in range(num_runs)]
  for run_dir in run_dirs if num_runs > 1 else [workdir]:
    results = json.loads((run_dir / 'results.json').read_text())
    evaluated = json.loads((run_dir / 'results_eval.json').read_text())
    assert evaluated['last'] == results['last']
    assert evaluated['config']['eval_batch_size'] == 128
    assert evaluated['status'] == results['status'] == 'finished'
  if num_runs > 1:
    assert (workdir / 'summary_eval.json').exists()
  assert (workdir / 'config.json').read_text() == recorded


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path):
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
      '--allow_config_change',
  )
  line = _error_line(diverging)
  # Step 9's loss is computed before its update, so it may still be finite.
  assert re.search(r'training loss is (nan|-?inf) at step (9|10);', line), line
  assert 'last good checkpoint (step 8)' in line
  assert _checkpoint_dirs(tmp_path) == ['4', '8']  # nothing half-written


@pytest.mark.slow
def test_nan_loss_before_the_first_checkpoint_says_there_is_none(
    tmp_path, capfd
):
  status = train.main([
      'train.py',
      f'--workdir={tmp_path}',
      f'--config={QUICKSTART}',
      *FAST,
      '--config.num_epochs=0.25',
      '--config.learning_rate=1e30',
  ])
  line = capfd.readouterr().err.strip().splitlines()[-1]
  assert status == 1 and 'training loss is' in line
  assert 'step None' not in line and 'no checkpoint' in line


@pytest.mark.slow
@pytest.mark.xdist_group('stop_and_resume')  # one `uninterrupted` run
class TestStopAndResume:
  """A signal, or a corrupt checkpoint, and the run still ends identical.

  On one device: the fastest compile; neither path depends on the device
  count. The run: 8 steps, checkpoints at steps 4 and 8.
  """

  RUN = [
      f'--config={QUICKSTART}',
      *FAST,
      '--config.num_epochs=0.5',
      '--config.checkpoint_every_epochs=0.25',
  ]

  @pytest.fixture(scope='class')
  @classmethod
  def uninterrupted(cls, tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp('uninterrupted')
    result = _train(workdir, *cls.RUN, devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _checkpoint_dirs(workdir) == ['4', '8']
    return workdir

  def _results(self, workdir: pathlib.Path):
    return json.loads((workdir / 'results.json').read_text())

  def _stop(self, workdir, signum) -> int:
    """Runs, signals after the first progress line; the step it stopped at."""
    run = subprocess.Popen(
        [sys.executable, str(ROOT / 'train.py'), f'--workdir={workdir}']
        + self.RUN,
        cwd=ROOT,
        env=_environment(devices=1),
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in run.stderr:
      if re.search(r'step \d+/8 ', line):
        run.send_signal(signum)
        break
    stderr = run.communicate(timeout=300)[1]
    assert run.returncode == 75, stderr[-3000:]
    assert 'Traceback' not in stderr, stderr[-3000:]
    stopped = re.search(f'stopped on {signum.name} after step (\\d+);', stderr)
    assert stopped, stderr[-3000:]
    step = int(stopped.group(1))
    assert step < 8 and _checkpoint_dirs(workdir)[-1] == str(step)
    return step

  def test_sigterm_checkpoints_its_step_and_the_resumed_run_ends_identical(
      self, tmp_path, uninterrupted
  ):
    self._stop(tmp_path, signal.SIGTERM)
    resumed = _train(tmp_path, *self.RUN, devices=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert self._results(tmp_path) == self._results(uninterrupted)

  def test_ctrl_c_checkpoints_its_step_and_exits_75(self, tmp_path):
    # Resuming is SIGTERM's path: the handler is the same for both.
    self._stop(tmp_path, signal.SIGINT)

  @pytest.mark.parametrize(
      'failing, last_step, kept',
      [
          (1, 5, 'No earlier one was written'),  # detected one step later
          (2, 8, 'The last good one (step 4) is kept'),  # the run's end
      ],
  )
  def test_a_disk_that_fills_up_stops_in_one_line_and_resumes_identical(
      self, tmp_path, uninterrupted, failing, last_step, kept
  ):
    full = subprocess.run(
        [
            sys.executable,
            '-m',
            'tests.disk_full',
            str(failing),
            f'--workdir={tmp_path}',
            *self.RUN,
        ],
        cwd=ROOT,
        env=_environment(devices=1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = _error_line(full)
    step = 4 * failing
    assert line == (
        f'error: writing the checkpoint at step {step} to'
        f' {tmp_path}/checkpoints failed: no space left on device. {kept}; fix'
        ' the cause (free space, say) and rerun the same command to resume.'
    )
    progress = re.findall(r'step (\d+)/8 ', full.stderr)
    assert int(progress[-1]) == last_step  # stopped at the next progress line
    assert [d for d in _checkpoint_dirs(tmp_path) if d.isdigit()] == ['4'] * (
        failing - 1
    )
    assert not (tmp_path / 'results.json').exists()
    resumed = _train(tmp_path, *self.RUN, devices=1)  # space freed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _checkpoint_dirs(tmp_path) == ['4', '8']  # the partial one is gone
    assert self._results(tmp_path) == self._results(uninterrupted)

  def test_a_corrupt_latest_checkpoint_falls_back_and_ends_identical(
      self, tmp_path, uninterrupted
  ):
    workdir = tmp_path / 'workdir'
    shutil.copytree(uninterrupted, workdir)
    (workdir / 'results.json').unlink()
    for path in (workdir / 'checkpoints' / '8' / 'state').rglob('*'):
      if path.is_file() and path.parent.name == 'd':  # the data files
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    resumed = _train(workdir, *self.RUN, devices=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(
        r'checkpoints/8 cannot be restored: state/\S+ has \d+ bytes, \d+'
        r' when it '
        r'was written; trying the next newest',
        resumed.stderr,
    )
    assert _checkpoint_dirs(workdir) == ['4', '8', '8.unreadable']
    assert self._results(workdir) == self._results(uninterrupted)


def _catches_sigterm(pid: int) -> bool:
  """Whether process `pid` has a handler for SIGTERM installed (Linux)."""
  with open(f'/proc/{pid}/status') as f:
    caught = next(int(l.split()[1], 16) for l in f if l.startswith('SigCgt:'))
  return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.slow
@pytest.mark.parametrize(
    'moment',
    ['loading', 'claimed'],  # its libraries; the workdir's lock taken
)
def test_a_sigterm_while_starting_is_one_line_and_leaves_nothing(
    tmp_path, moment
):
  workdir = tmp_path / 'workdir'
  run = subprocess.Popen(
      [
          sys.executable,
          str(ROOT / 'train.py'),
          f'--workdir={workdir}',
          f'--config={QUICKSTART}',
          *FAST,
          '--config.num_epochs=0.5',
      ],
      cwd=ROOT,
      env=_environment(devices=1),
      stderr=subprocess.PIPE,
      text=True,
  )
  ready = {
      'loading': lambda: _catches_sigterm(run.pid),
      'claimed': lambda: (workdir / 'lock.0').exists(),
  }[moment]
  while not ready() and run.poll() is None:
    time.sleep(0.005)
  run.send_signal(signal.SIGTERM)
  stderr = run.communicate(timeout=120)[1]
  assert run.returncode == preemption.EXIT_PREEMPTED == train.EXIT_PREEMPTED
  assert 'Traceback' not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert re.search(
      r'stopped on SIGTERM (while loading|outside the training steps)', last
  ), stderr[-3000:]
  assert 'Rerun the same command' in last
  # Its lock released, its folder removed.
  assert not workdir.exists(), sorted(map(str, workdir.rglob('*')))
