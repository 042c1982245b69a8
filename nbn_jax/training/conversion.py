"""The converter's command line: a PyTorch checkpoint -> a trainer workdir.

    python -m nbn_jax.convert --checkpoint=resnet50_nbn.pth \\
        --config=configs/imagenet_lt.py --workdir=WORKDIR [--config.field=...]
    python train.py --config=configs/imagenet_lt.py --workdir=WORKDIR \\
        --config.eval_only=True [...]

The config says which network the checkpoint holds (`model`, `norm`, NBN
placement, `shortcut`, `logit_norm`, the ensemble fields `num_experts` and
`reduce_dimension`, `classifier`) and which dataset (its class count); the
reference's RIDE checkpoints (`resnet50_ride_NBN`, ride_nbn_lr) convert with
``--config.model=RIDEResNet50 --config.logit_norm=True``. The command
writes a step-0 checkpoint into WORKDIR, built by the run plan as the
trainer builds its train state, that `train.py` evaluates (or fine-tunes
from), and records the config there (config.json), as train.py does, so
`nbn_jax.training.trained.load` rebuilds the model. Reading the ``.pth``
file needs PyTorch; the name mapping (`nbn_jax.convert`) does not.
"""

import sys
from typing import Mapping

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

import input_pipeline as ip
from nbn_jax import convert
from nbn_jax.training import plan, results
from nbn_jax.training import workdir as workdir_lib
from nbn_jax.training.checkpoints import Checkpoints
from nbn_jax.training.errors import ConfigError


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
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise convert.CheckpointMismatchError(
        'reading a PyTorch checkpoint needs PyTorch: pip install torch '
        '(the CPU build is enough).'
    ) from None
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=not trust)
  except FileNotFoundError:
    raise convert.CheckpointMismatchError(
        f'--checkpoint={path} does not exist.'
    )
  except Exception as e:  # pickle errors come in many types
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e)
    raise convert.CheckpointMismatchError(
        f'--checkpoint={path} cannot be read as plain tensors ({reason}); '
        'if you trust the file, add --trust_checkpoint.'
    ) from None
  for key in ('state_dict', 'model'):
    if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
      loaded = loaded[key]
  return {
      k: (
          v.detach().cpu().float().numpy()
          if v.is_floating_point()
          else v.detach().cpu().numpy()
      )
      for k, v in loaded.items()
      if torch.is_tensor(v)
  }


def write_checkpoint(
    config: ml_collections.ConfigDict,
    state_dict: Mapping[str, np.ndarray],
    workdir: str,
):
  """Converts `state_dict` for `config`'s network into a step-0 checkpoint.

  The train state (optimiser state included) is the one the trainer builds
  for `config`, with the converted parameters and statistics, so
  ``train.py --config.eval_only=True`` evaluates it and a run resumes from it.
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
  variables = convert.from_torch_state_dict(
      core.model, state_dict, len(spec.mean)
  )
  state = core.runs.init_state()
  place = lambda new, old: jax.device_put(new, old.sharding)
  state = state.replace(
      params=jax.tree.map(place, variables['params'], state.params),
      batch_stats=jax.tree.map(
          place, variables['batch_stats'], state.batch_stats
      ),
  )
  checkpoints = Checkpoints(workdir, config.keep_checkpoints)
  try:
    checkpoints.save(state, results.empty_record(1), wait=True)
  finally:
    checkpoints.close()
  workdir_lib.record_config(workdir, config.to_dict())


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
  """The command's flags from argv (flags.Error, one line, for bad ones)."""
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
    write_checkpoint(values.config, state_dict, values.workdir)
  except (flags.Error, convert.CheckpointMismatchError, ValueError) as e:
    message = str(e).replace('\n', ' ')
    print(f'error: {message}', file=sys.stderr)
    return 1
  print(f'wrote {values.workdir}/checkpoints (step 0) from {values.checkpoint}')
  return 0
