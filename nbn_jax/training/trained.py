"""A trained (or converted) workdir's model and variables, for your own code.

    from nbn_jax.training import trained

    run = trained.load('/tmp/c10')            # or gs://...; run=k of K runs
    logits = run.model.apply(run.variables, run.prepare(images), train=False)
    logits = run.logits(images)               # the same, jitted

The network is rebuilt from the config the workdir recorded (config.json)
by the run plan, exactly as the trainer built it, and the variables are
those of its newest checkpoint (`checkpoints.latest_variables`), restored
onto this process's first device whatever topology saved them. `prepare`
turns uint8 images (N, H, W, C) into the model's inputs with the dataset's
normalisation, as the trainer's evaluation does.
"""

import dataclasses
import functools
import json
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

import input_pipeline as ip
from input_pipeline import on_device
from nbn_jax.training import plan, storage
from nbn_jax.training.checkpoints import latest_variables
from nbn_jax.training.losses import logits_of
from nbn_jax.training.workdir import CONFIG_FILE, recorded_config


@dataclasses.dataclass(frozen=True)
class Trained:
  """One run of a workdir, ready for `model.apply`.

  Attributes:
    model: the network, as the run's config builds it.
    variables: {'params', 'batch_stats'} of the newest checkpoint (NumPy).
    config: the run's recorded config.
    spec: the dataset's facts (classes, normalisation).
    prepare: uint8 images (N, H, W, C) -> normalised model inputs.
  """

  model: nn.Module
  variables: dict[str, Any]
  config: ml_collections.ConfigDict
  spec: ip.DatasetSpec
  prepare: Callable[[np.ndarray], jax.Array]

  def logits(self, images: np.ndarray) -> np.ndarray:
    """(N, num_classes) evaluation logits of uint8 images (N, H, W, C)."""
    return np.asarray(self._eval_logits(self.variables, images))

  @functools.cached_property
  def _eval_logits(self) -> Callable:
    def eval_logits(variables, images):
      outputs = self.model.apply(variables, self.prepare(images), train=False)
      return logits_of(outputs)

    return jax.jit(eval_logits)


def load(workdir: str, run: int = 0) -> Trained:
  """Run `run` of `workdir` (trained by train.py or written by the converter).

  Raises:
    FileNotFoundError: the workdir recorded no config.
    training.CheckpointError: it holds no checkpoint.
  """
  workdir = storage.resolve(workdir, 'workdir')
  recorded = recorded_config(workdir)
  if recorded is None:
    raise FileNotFoundError(
        f'{storage.join(workdir, CONFIG_FILE)} does not exist: not a workdir '
        'that train.py or the converter wrote.'
    )
  config = ml_collections.ConfigDict(json.loads(json.dumps(recorded)))
  if not 0 <= run < config.num_runs:
    raise ValueError(
        f'run={run}: {workdir} holds runs 0..{config.num_runs - 1}.'
    )
  spec = ip.DATASETS[config.dataset]
  variables = latest_variables(workdir)
  if config.num_runs > 1:
    variables = jax.tree.map(lambda x: x[run], variables)
  return Trained(
      model=plan.build_model(config, spec.num_classes),
      variables=variables,
      config=config,
      spec=spec,
      prepare=functools.partial(
          on_device.normalize_images,
          mean=spec.mean,
          std=spec.std,
          dtype=plan.compute_dtype(config),
      ),
  )
