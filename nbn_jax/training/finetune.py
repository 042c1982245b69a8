"""A second training stage from a finished run: classifier re-training.

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

The first stage's workdir is only read.
"""

import json
import os
from typing import Any, Callable, Sequence

import jax
import optax

from nbn_jax.models import CLASSIFIER, LOGIT_NORM
from nbn_jax.training import steps
from nbn_jax.training.checkpoints import latest_variables, structure_difference
from nbn_jax.training.errors import ConfigError

HEAD = (CLASSIFIER, LOGIT_NORM)  # reinitialised together
TRAINED, FROZEN = 'trained', 'frozen'


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
  logit-rectification statistics) when `reinit_classifier`; the step and
  the optimiser state are this stage's own (fresh).

  Raises:
    ConfigError: the network has no classifier module, the checkpoint holds
      another network, or K differs.
  """
  if not any(
      in_classifier(_keys(path))
      for path, _ in jax.tree_util.tree_flatten_with_path(fresh.params)[0]
  ):
    raise ConfigError(
        f'config.finetune_from: the network has no module named '
        f'{CLASSIFIER!r} (models.CLASSIFIER), the classifier a second stage '
        'trains or re-initialises; name its classifier head so.'
    )
  first = latest_variables(workdir)
  current = {'params': fresh.params, 'batch_stats': fresh.batch_stats}
  difference = structure_difference(first, current)
  if difference is not None:
    raise ConfigError(
        f'config.finetune_from={workdir} holds another network or another '
        f"number of runs ({difference}); give this stage the first stage's "
        'model, norm, NBN placement, dataset and num_runs.'
    )

  def take(path, new, old):
    if reinit_classifier and in_classifier(_keys(path), HEAD):
      return new
    return jax.device_put(old, new.sharding)

  merged = jax.tree_util.tree_map_with_path(take, current, first)
  return fresh.replace(
      params=merged['params'], batch_stats=merged['batch_stats']
  )


def first_stage_results(workdir: str, run_dir: str) -> dict[str, Any]:
  """What the first stage reported for one run: its folder and 'last'.

  `run_dir`: that run's folder inside `workdir` (the workdir itself for a
  single run). Without a results.json (a stage stopped early) only the
  folder is known.
  """
  summary = {'workdir': os.path.abspath(workdir)}
  path = os.path.join(run_dir, 'results.json')
  if os.path.exists(path):
    with open(path) as f:
      summary['last'] = json.load(f)['last']
  return summary
