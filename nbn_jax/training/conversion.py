"""The converter's command line: a PyTorch checkpoint -> a trainer workdir.

    python -m nbn_jax.convert --checkpoint=resnet50_nbn.pth \\
        --config=configs/imagenet_lt.py --workdir=WORKDIR [--config.field=...]
    python train.py --workdir=WORKDIR --config.eval_only=True \\
        [--config.test_list=... (the data fields, docs/evaluation.md)]

    # torchvision's ImageNet ResNet-152 (plain BN) into the NBN placement:
    python -m nbn_jax.convert --checkpoint=resnet152-394f9c45.pth \\
        --source=plain_bn --config=configs/imagenet_lt.py \\
        --config.model=ResNet152 --workdir=WORKDIR

The config says which network the checkpoint holds (`model`, `norm`, NBN
placement, `shortcut`, `logit_norm`, the ensemble fields `num_experts` and
`reduce_dimension`, `classifier`) and which dataset (its class count); the
reference's RIDE checkpoints (`resnet50_ride_NBN`, ride_nbn_lr) convert with
``--config.model=RIDEResNet50 --config.logit_norm=True``. `--source` says
how the file holds that network: `network` (the default), as the config
describes it, NBN layers included (the reference's, LDAM's and RIDE's
checkpoints); `plain_bn`, its plain-BN version (torchvision's ImageNet
ResNets), whose BNs at the config's NBN sites become NBN layers computing
the same function (`nbn_jax.folding.unfold_bn`; with ``--config.norm=bn``
the two are the same).

The command writes a step-0 checkpoint into WORKDIR, built by the run plan
as the trainer builds its train state, that `train.py` evaluates (or
fine-tunes from). It records the config there (config.json), as train.py
does: `nbn_jax.training.trained.load` rebuilds the model from it, and an
evaluation needs no --config, only the fields that say where the data is
(e.g. ``--config.data_source=jpeg --config.data_dir=...``; see
docs/evaluation.md). It also records which file it converted, and how
(`finetune.CONVERTED_FILE`), which the results of a second stage started
from it name. Reading the ``.pth`` file needs PyTorch;
the name mapping (`nbn_jax.convert`) does not.
"""

import os
import pathlib
import re
import sys
from typing import Mapping

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

import input_pipeline as ip
from nbn_jax import convert
from nbn_jax.training import command_line, finetune, plan, records
from nbn_jax.training import reporting, storage
from nbn_jax.training import workdir as workdir_lib
from nbn_jax.training.checkpoints import Checkpoints
from nbn_jax.training.command_line import UsageError
from nbn_jax.training.errors import USER_ERRORS, ConfigError

# How a file torch.save wrote begins: a zip archive (PyTorch >= 1.6), or
# the older format's pickled magic number (protocol 2, LONG1 of 10 bytes).
TORCH_ZIP_START = b'PK\x03\x04'
TORCH_LEGACY_START = b'\x80\x02\x8a\x0a' + (0x1950A86A20F9469CFC6C).to_bytes(
    10, 'little'
)
# --source: how the file holds the config's network -> its name mapping.
SOURCES = {
    'network': convert.from_torch_state_dict,
    'plain_bn': convert.from_torch_bn_state_dict,
}


def _first_sentence(error: Exception) -> str:
  """An error's first sentence, without terminal colours."""
  text = re.sub(r'\x1b\[[0-9;]*m', '', str(error)).strip()
  if not text:
    return type(error).__name__
  return text.splitlines()[0].split('. ')[0].rstrip('.')


def _read_torch_file(path: str, trust: bool):
  """`torch.load` of a file torch.save wrote; one-line errors for the rest."""
  import torch  # pylint: disable=g-import-not-at-top

  try:
    with open(path, 'rb') as f:
      start = f.read(len(TORCH_LEGACY_START))
  except FileNotFoundError:
    raise convert.CheckpointMismatchError(
        f'--checkpoint={path} does not exist.'
    ) from None
  except OSError as e:
    raise convert.CheckpointMismatchError(
        f'--checkpoint={path} cannot be read ({e.strerror or e}).'
    ) from None
  if not start.startswith((TORCH_ZIP_START, TORCH_LEGACY_START)):
    raise convert.CheckpointMismatchError(
        f'--checkpoint={path} is not a PyTorch checkpoint (torch.save writes '
        'a zip archive, or a pickle with its magic number before PyTorch '
        '1.6; this file is neither). Check the path.'
    )
  try:
    return torch.load(path, map_location='cpu', weights_only=not trust)
  except Exception as e:  # pickle and zip errors come in many types
    global_name = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
    if global_name and not trust:
      raise convert.CheckpointMismatchError(
          f'--checkpoint={path} holds Python objects besides tensors (e.g. '
          f'{global_name.group(1)}), which are read only by running its '
          'pickle code; if the file comes from a source you trust, add '
          '--trust_checkpoint.'
      ) from None
    if trust and isinstance(e, (ModuleNotFoundError, AttributeError)):
      raise convert.CheckpointMismatchError(
          f'--checkpoint={path} needs the code it was saved with '
          f'({_first_sentence(e)}): run the converter where that code can be '
          "imported (its folder on PYTHONPATH), or save the model's state "
          'dict alone there, torch.save(model.state_dict(), path), and '
          'convert that.'
      ) from None
    raise convert.CheckpointMismatchError(
        f'--checkpoint={path} is a damaged PyTorch file ({_first_sentence(e)}).'
        ' Copy or download it again.'
    ) from None


def load_torch_state_dict(
    path: str, trust: bool = False
) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch checkpoint file, as float32/int NumPy arrays.

  Accepts a bare state dict or a dict holding one under ``state_dict`` or
  ``model``.

  Args:
    path: the ``.pth`` file.
    trust: unpickle arbitrary objects (`torch.load(weights_only=False)`);
      only for files from a source you trust.

  Raises:
    CheckpointMismatchError: one line saying whether the file is missing,
      not a PyTorch file, damaged, or holds objects that need `trust`.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise convert.CheckpointMismatchError(
        'reading a PyTorch checkpoint needs PyTorch: pip install torch '
        '(the CPU build is enough).'
    ) from None
  loaded = _read_torch_file(path, trust)
  for key in ('state_dict', 'model'):
    if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
      loaded = loaded[key]
  if not isinstance(loaded, Mapping):
    raise convert.CheckpointMismatchError(
        f'--checkpoint={path} holds an object of type '
        f'{type(loaded).__name__}, not a state '
        "dict (a mapping of names to tensors, or one under 'state_dict' or "
        "'model')."
    )
  return {
      k: (
          v.detach().cpu().float().numpy()
          if v.is_floating_point()
          else v.detach().cpu().numpy()
      )
      for k, v in loaded.items()
      if torch.is_tensor(v)
  }


def converted_state(
    config: ml_collections.ConfigDict,
    state_dict: Mapping[str, np.ndarray],
    source: str = 'network',
):
  """The train state the trainer builds for `config`, with `state_dict`'s
  parameters and statistics (optimiser state included, fresh).

  `source`: how `state_dict` holds the network (a key of `SOURCES`).
  """
  if config.num_runs != 1:
    raise ConfigError(
        f'config.num_runs={config.num_runs}: a converted checkpoint is one '
        'run; convert with config.num_runs=1.'
    )
  spec = ip.DATASETS[config.dataset]
  core = plan.build_step_plan(
      config,
      spec,
      np.ones(spec.num_classes, np.int64),
      (32, 32, len(spec.mean)),
  )
  variables = SOURCES[source](core.model, state_dict, len(spec.mean))
  state = core.runs.init_state()
  place = lambda new, old: jax.device_put(new, old.sharding)
  return state.replace(
      params=jax.tree.map(place, variables['params'], state.params),
      batch_stats=jax.tree.map(
          place, variables['batch_stats'], state.batch_stats
      ),
  )


def write_workdir(
    config: ml_collections.ConfigDict,
    state_dict: Mapping[str, np.ndarray],
    workdir: str,
    source: str = 'network',
    checkpoint: str | None = None,
):
  """Converts `state_dict` into a new workdir: a step-0 checkpoint.

  The workdir is claimed as train.py claims one (its lock), and must hold
  no run: a converted checkpoint never joins or replaces another's. It
  gets the config (config.json, first, as train.py records it), the
  checkpoint, which ``train.py --config.eval_only=True`` evaluates and a
  run resumes or fine-tunes from, and, given the `checkpoint` file's name,
  what was converted (`record_source`).

  Raises:
    WorkdirError: the workdir is in use, or holds a run already.
    ConfigError: the config cannot hold a converted checkpoint.
  """
  with workdir_lib.claim(
      workdir,
      config.to_dict(),
      new_only='a converted checkpoint goes into a new --workdir',
  ):
    state = converted_state(config, state_dict, source)
    workdir_lib.record_config(workdir, config.to_dict())
    with Checkpoints(workdir, config.keep_checkpoints) as checkpoints:
      checkpoints.save(
          state, records.to_checkpoint([records.RunRecord()]), wait=True
      )
    if checkpoint is not None:
      record_source(workdir, checkpoint, source)


def record_source(workdir: str, checkpoint: str, source: str):
  """Records in `workdir` the file it was converted from, and `--source`."""
  reporting.write_json(
      storage.join(workdir, finetune.CONVERTED_FILE),
      {
          'checkpoint': os.fspath(pathlib.Path(checkpoint).absolute()),
          'source': source,
      },
  )


def define_flags(values: flags.FlagValues, argv: list[str]):
  """The command's flags, on `values` (a fresh set per call)."""
  flags.DEFINE_string(
      'checkpoint', None, 'The PyTorch checkpoint (.pth).', flag_values=values
  )
  flags.DEFINE_string(
      'workdir',
      None,
      'Where to write the nbn_jax checkpoint.',
      flag_values=values,
  )
  flags.DEFINE_enum(
      'source',
      'network',
      list(SOURCES),
      "How --checkpoint holds the config's network: network, as the config "
      'describes it (NBN layers included); plain_bn, its plain-BN version '
      "(torchvision's ImageNet ResNets), converted into the config's norm.",
      flag_values=values,
  )
  flags.DEFINE_bool(
      'trust_checkpoint',
      False,
      'Unpickle arbitrary objects in --checkpoint (trusted files only).',
      flag_values=values,
  )
  config_flags.DEFINE_config_file(
      'config',
      None,
      'The configs/*.py of the network and dataset.',
      flag_values=values,
      sys_argv=argv,
  )


def parse_flags(argv: list[str]) -> flags.FlagValues:
  """The command's flags from argv (flags.Error or UsageError, one line, for
  bad ones); the config file and its overrides are checked as train.py
  checks them."""
  config_path = command_line.flag_value(argv, 'config')
  if config_path is not None:
    command_line.check_override_names(
        argv, command_line.load_config_file(config_path)
    )
  values = flags.FlagValues()
  define_flags(values, argv)
  try:
    rest = values(argv)
  except (AttributeError, KeyError, TypeError) as e:  # ml_collections' errors
    raise flags.Error(f'bad --config override: {e}') from None
  if len(rest) > 1:
    raise flags.Error(f'unexpected arguments {rest[1:]}')
  if not (values.checkpoint and values.config and values.workdir):
    raise flags.Error('--checkpoint, --config and --workdir are required.')
  return values


HELP_FLAGS = ('-h', '--help', '--helpfull', '-?')


def main(argv: list[str]) -> int:
  """Converts; returns the exit status (errors: one line on stderr)."""
  command_line.quiet_tensorflow_start()
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    values = flags.FlagValues()
    define_flags(values, argv[:1])
    print(f'{__doc__}\n{values.get_help()}')
    return 0
  try:
    values = parse_flags(argv)
    state_dict = load_torch_state_dict(
        values.checkpoint, values.trust_checkpoint
    )
    write_workdir(
        values.config,
        state_dict,
        storage.resolve(values.workdir),
        values.source,
        values.checkpoint,
    )
  except (flags.Error, UsageError, ValueError, *USER_ERRORS) as e:
    message = str(e).replace('\n', ' ')
    print(f'error: {message}', file=sys.stderr)
    return 1
  print(f'wrote {values.workdir}/checkpoints (step 0) from {values.checkpoint}')
  return 0
