"""What a network is to the trainer: the contract every `MODELS` entry keeps.

A network is a linen module registered by name with `named_network` and
built as ``MODELS[name](num_classes, **fields)``. The trainer relies on
what `Network` says and on nothing else:

* Fields: `num_classes` and `norm` ('bn' or 'nbn': which arm of the
  comparison it builds). The run plan sets any of `OPTIONAL_FIELDS` the
  network has, and no other; a config asking for one the network lacks is
  refused.
* Call: ``__call__(images, train)``, images (batch, H, W, C) normalised,
  in the computation dtype; `train` uses and updates the batch statistics.
* Output: the (batch, num_classes) logits, or a mapping with them under
  `LOGITS` beside other outputs. The class attribute `OUTPUTS` names every
  output it returns (default: `LOGITS` alone); the config check matches it
  against the outputs a loss reads.
* Variables: 'params' and 'batch_stats' (the BN running statistics).
* Classifier: every module named `CLASSIFIER` maps the features (batch, D)
  to logits, one per expert in an ensemble. Classifier re-training trains
  these (and NBN's alphas); the feature analysis reads their inputs. A
  logit-rectification BN after it, if any, is named `LOGIT_NORM`.

This module imports only jax and flax.
"""

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import flax.linen as nn
import jax

LOGITS = 'logits'  # (batch, classes); an ensemble's: its experts' mean
EXPERT_LOGITS = 'expert_logits'  # (experts, batch, classes)
CLASSIFIER = 'fc'  # the module name of every classifier head
LOGIT_NORM = 'logit_norm'  # the BN over the logits, where there is one
# Fields the run plan sets from the config on the networks that have them.
OPTIONAL_FIELDS = (
    'logit_norm',
    'bn_axis_name',
    'dtype',
    'nbn_placement',
    'shortcut',
    'num_experts',
    'reduce_dimension',
    'classifier',
    'cosine_scale',
)
REQUIRED_FIELDS = ('num_classes', 'norm')


class Output(NamedTuple):
  """A network output, in words for messages.

  Attributes:
    what: what it holds, e.g. 'per-expert logits'.
    producer: the network that produces it, e.g. 'an ensemble model'.
  """

  what: str
  producer: str


OUTPUT_DESCRIPTIONS = {
    LOGITS: Output('logits', 'a classifier'),
    EXPERT_LOGITS: Output('per-expert logits', 'an ensemble model'),
}


class Network(Protocol):
  """What the trainer needs of a network (see the module docstring)."""

  num_classes: int
  norm: str

  def __call__(
      self, x: jax.Array, train: bool = True
  ) -> jax.Array | Mapping[str, jax.Array]:
    """(batch, H, W, C) images -> (batch, classes) logits, or a mapping of
    the class's `OUTPUTS`."""
    ...


def describe_output(name: str) -> Output:
  """Its `OUTPUT_DESCRIPTIONS` entry, or words for an output no network
  here returns."""
  return OUTPUT_DESCRIPTIONS.get(
      name, Output(f'output {name!r}', f'a network returning {name!r}')
  )


# Every named network, by name: what `config.model` chooses from. Filled by
# `named_network` as the model modules define their networks.
MODELS: dict[str, Callable[..., nn.Module]] = {}


def _fields(cls: type[nn.Module]) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)}


def named_network(
    name: str, cls: type[nn.Module], doc: str, **fixed: Any
) -> Callable[..., Network]:
  """Registers `name` in `MODELS`: `cls` with `fixed` fields, classes first.

  ``ResNet50(1000)`` and ``ResNet50(num_classes=1000, norm='bn')`` both
  work; other fields are keywords. The builder's `module_class` is `cls`.

  Raises:
    TypeError: `cls` breaks the contract: a required field missing, or
      `OUTPUTS` without `LOGITS`.
  """
  missing = [f for f in REQUIRED_FIELDS if f not in _fields(cls)]
  if missing:
    raise TypeError(
        f'named_network({name!r}): {cls.__name__} has no field {missing[0]};'
        f' a network has the fields {REQUIRED_FIELDS} (models.Network).'
    )
  if LOGITS not in getattr(cls, 'OUTPUTS', (LOGITS,)):
    raise TypeError(
        f'named_network({name!r}): {cls.__name__}.OUTPUTS={cls.OUTPUTS} '
        f'lacks {LOGITS!r}; every network returns its logits.'
    )

  def build(num_classes: int, **fields: Any) -> Network:
    return cls(num_classes=num_classes, **fixed, **fields)

  build.__name__ = build.__qualname__ = name
  build.__doc__ = doc
  build.module_class = cls
  MODELS[name] = build
  return build


def takes_field(network: Callable[..., nn.Module], field: str) -> bool:
  """Whether a `MODELS` entry's module has a field named `field`."""
  return field in _fields(network.module_class)


def outputs_of(network: Callable[..., nn.Module]) -> tuple[str, ...]:
  """The outputs a `MODELS` entry's network returns (its `OUTPUTS`)."""
  return getattr(network.module_class, 'OUTPUTS', (LOGITS,))
