"""A second training stage from a finished run: classifier re-training,
or fine-tuning a converted backbone.

The reference's `train_all: False` (and Decoupling's cRT, Kang et al. 2020):
start from a first stage's workdir (`config.finetune_from`: its newest
checkpoint), optionally with a freshly initialised classifier
(`config.reinit_classifier`), and train only the classifier (every module
named `models.CLASSIFIER`: one per expert in an ensemble) and NBN's alphas
(`config.trainable='classifier'`), with the stage's own sampler, schedule
and workdir. The rest of the network is frozen: its parameters never change
and get no weight decay. As in the reference, whose model stays in train
mode, the BN layers still normalise with batch statistics and update their
running statistics on the new stage's batches.

The first stage may also be converted weights (`python -m nbn_jax.convert`,
e.g. torchvision's ImageNet ResNet-152 for Places-LT): with a new classifier
its class count may differ from this stage's, and the whole network trains
(`config.trainable='all'`), the backbone at `config.backbone_lr_factor`
times the classifier's rate if set.

The first stage's workdir is only read.
"""

import json
from typing import Any, Callable, Sequence

import jax
import optax
from flax import traverse_util

from nbn_jax.models import CLASSIFIER, LOGIT_NORM
from nbn_jax.training import records, steps, storage
from nbn_jax.training import workdir as workdir_lib
from nbn_jax.training.checkpoints import latest_step, latest_variables
from nbn_jax.training.checkpoints import structure_difference
from nbn_jax.training.errors import ConfigError

HEAD = (CLASSIFIER, LOGIT_NORM)  # reinitialised together
TRAINED, FROZEN = 'trained', 'frozen'
# What `python -m nbn_jax.convert` records in the workdir it writes: the
# file it converted and how (`first_stage_results` reports it).
CONVERTED_FILE = 'converted_from.json'


def _keys(path) -> tuple[str, ...]:
  return tuple(getattr(k, 'key', k) for k in path)


def in_classifier(path: Sequence[str], modules: Sequence[str] = (CLASSIFIER,)):
  """Whether a variable's path lies inside a module named in `modules`."""
  return any(name in modules for name in path[:-1])


def train_only(
    tx: optax.GradientTransformation, trainable: Callable[[tuple], bool]
) -> optax.GradientTransformation:
  """`tx` on the parameters whose path `trainable` picks; the rest frozen."""

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: TRAINED if trainable(_keys(path)) else FROZEN, params
    )

  return optax.multi_transform(
      {TRAINED: tx, FROZEN: optax.set_to_zero()}, labels
  )


def scale_backbone(
    tx: optax.GradientTransformation, factor: float
) -> optax.GradientTransformation:
  """`tx` with the updates outside the classifier `factor` times as large.

  For PyTorch-style SGD (`optim.sgd`) this is two parameter groups of one
  optimiser: the momentum buffers hold gradient plus decay as before, and
  the backbone steps at `factor` times the classifier's rate.
  """

  def backbone(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not in_classifier(_keys(path)), params
    )

  return optax.chain(tx, optax.masked(optax.scale(factor), backbone))


def classifier_and_alphas(alpha_paths: Sequence[str]) -> Callable:
  """The trainable predicate of `trainable='classifier'`."""
  alphas = {tuple(p.split('/')) for p in alpha_paths}
  return lambda path: in_classifier(path) or tuple(path) in alphas


def start_from(
    fresh: steps.TrainState, workdir: str, reinit_classifier: bool
) -> steps.TrainState:
  """`fresh` (this stage's initial state) with the first stage's variables.

  Parameters and BN statistics come from `workdir`'s newest checkpoint,
  except the classifier head's (`HEAD`: the classifier and the
  logit-rectification statistics) when `reinit_classifier`, whose shapes
  (the class count) may then differ; the step and the optimiser state are
  this stage's own (fresh).

  Raises:
    ConfigError: the network has no classifier module, the checkpoint holds
      another network, or K differs.
  """
  if not any(
      in_classifier(_keys(path))
      for path, _ in jax.tree_util.tree_flatten_with_path(fresh.params)[0]
  ):
    raise ConfigError(
        'config.finetune_from: the network has no module named '
        f'{CLASSIFIER!r} (models.CLASSIFIER), the classifier a second stage '
        'trains or re-initialises; name its classifier head so.'
    )
  first = traverse_util.flatten_dict(latest_variables(workdir))
  current = {'params': fresh.params, 'batch_stats': fresh.batch_stats}
  new = lambda path: reinit_classifier and in_classifier(path, HEAD)
  kept = lambda flat: traverse_util.unflatten_dict(
      {path: leaf for path, leaf in flat.items() if not new(path)}
  )
  difference = structure_difference(
      kept(first), kept(traverse_util.flatten_dict(current))
  )
  if difference is not None:
    also = (
        'the class count may differ: the classifier is new'
        if reinit_classifier
        else (
            'and its dataset, or set config.reinit_classifier=True for a '
            'new classifier'
        )
    )
    raise ConfigError(
        f'config.finetune_from={workdir} holds another network or another '
        f"number of runs ({difference}); give this stage the first stage's "
        f'model, norm, NBN placement and num_runs ({also}).'
    )

  def take(path, leaf):
    path = _keys(path)
    if new(path):
      return leaf
    return jax.device_put(first[path], leaf.sharding)

  merged = jax.tree_util.tree_map_with_path(take, current)
  return fresh.replace(
      params=merged['params'], batch_stats=merged['batch_stats']
  )


def check_own_workdir(finetune_from: str, workdir: str):
  """ConfigError if a second stage would run in its first stage's workdir."""
  setting = 'config.finetune_from'
  if finetune_from and storage.resolve(finetune_from, setting) == (
      storage.resolve(workdir)
  ):
    raise ConfigError(
        f"{setting} is this run's --workdir ({workdir}); a second stage "
        "needs a workdir of its own (the first stage's is only read): give "
        'another --workdir.'
    )


def first_stage_step(finetune_from: str) -> int:
  """The step of the first stage's checkpoint a second stage starts from.

  Raises:
    ConfigError: `finetune_from` is no workdir, its run is still training
      (its lock is held), or it holds no checkpoint (one line each).
  """
  setting = f'config.finetune_from={finetune_from}'
  workdir = storage.resolve(finetune_from, 'config.finetune_from')
  if workdir_lib.recorded_config(workdir) is None:
    raise ConfigError(
        f'{setting} is not a workdir that train.py or the converter wrote '
        "(it has no config.json); give the first stage's --workdir."
    )
  holder = workdir_lib.in_use_by(workdir)
  if holder is not None:
    raise ConfigError(
        f'{setting} is still training ({holder}); start the second stage '
        'once it has ended, from its last checkpoint.'
    )
  step = latest_step(workdir)
  if step is None:
    raise ConfigError(
        f'{setting} holds no checkpoint yet; train (or convert) it first.'
    )
  return step


def first_stage_results(
    workdir: str, run_dir: str, step: int | None
) -> dict[str, Any]:
  """What the first stage was and reported, for one run of a second stage.

  Its folder; the step of its checkpoint this stage started from (`step`;
  None in runs recorded before it was); the file it was converted from and
  how, for a workdir the converter wrote (`CONVERTED_FILE`); its status
  (with where it stopped, for a stopped one) and 'last' result from its run
  folder `run_dir` (the workdir itself for a single run) when that result
  is of the checkpoint this stage started from. A first stage killed
  before its end has no results.json.
  """
  summary = {
      'workdir': storage.resolve(workdir, 'config.finetune_from'),
      'step': step,
  }
  try:
    summary['converted_from'] = json.loads(
        storage.read_text(storage.join(workdir, CONVERTED_FILE))
    )
  except FileNotFoundError:
    pass
  try:
    reported = json.loads(
        storage.read_text(storage.join(run_dir, 'results.json'))
    )
  except FileNotFoundError:
    return summary
  if step is None or reported['last']['step'] == step:
    summary['status'] = reported.get('status')
    for why in ('stopped', 'stopped_early'):  # where its status has them
      if why in reported:
        summary[why] = reported[why]
    summary['last'] = reported['last']
  return summary


def unfinished_warning(first: dict[str, Any]) -> str | None:
  """The warning a second stage logs when its first stage is not a
  finished run, from `first_stage_results`; None for a finished one or a
  converted checkpoint (weights trained elsewhere)."""
  if 'converted_from' in first or first.get('status') == records.FINISHED:
    return None
  start = f'The first stage {first["workdir"]}'
  then = (
      f'this second stage starts from its checkpoint at step {first["step"]},'
      ' not from a finished run.'
  )
  if first.get('status') == records.STOPPED_EARLY:
    early = first['stopped_early']
    return (
        f'{start} stopped early, at step {early["step"]} of the '
        f'{early["planned_steps"]} planned (config.num_train_steps): {then}'
    )
  if first.get('status') == records.STOPPED:
    stopped = first['stopped']
    return (
        f'{start} stopped at step {stopped["step"]} ({stopped["reason"]}): '
        f'{then}'
    )
  return f'{start} has no results of that checkpoint (it ended early): {then}'
