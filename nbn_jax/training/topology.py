"""The device mesh: which axes carry the batch and which the BN statistics.

This is the one place that names mesh axes; the train step, both input
paths and the evaluators take them from a `Topology`.

The batch is split over every device of every host: over all mesh axes.
Parameters, BN statistics and optimiser state are replicated. Where BN
statistics are computed is `bn_scope`:

* 'global': over the global batch. Mesh ('data',); the step is a plain
  `jax.jit` and XLA inserts the cross-device reductions.
* 'device': over each device's shard (the reference's DDP without SyncBN).
  Mesh ('data',); the forward and backward pass run under `shard_map`.
* 'group': over groups of `bn_group_size` consecutive devices. Mesh
  ('replica', 'bn_group') with the inner axis of size `bn_group_size`; BN
  layers average over 'bn_group' under `shard_map`.
"""

import dataclasses
from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BN_SCOPES = ('global', 'device', 'group')
DATA_AXIS = 'data'
REPLICA_AXIS = 'replica'
BN_GROUP_AXIS = 'bn_group'


@dataclasses.dataclass(frozen=True)
class Topology:
  """A mesh over the devices and the BN statistics scope on it.

  Attributes:
    mesh: the device mesh; every axis is of type Auto (the on-device input
      path gathers across shards and lets XLA place the collectives).
    bn_scope: 'global', 'device' or 'group'.
  """

  mesh: Mesh
  bn_scope: str

  @property
  def data_axes(self) -> tuple[str, ...]:
    """The axes the batch's leading dimension is split over (all of them)."""
    return tuple(self.mesh.axis_names)

  @property
  def bn_axis_name(self) -> str | None:
    """The axis BN layers average over inside `shard_map`, if any."""
    return BN_GROUP_AXIS if self.bn_scope == 'group' else None

  @property
  def uses_shard_map(self) -> bool:
    """Whether BN statistics are per shard or group (not global)."""
    return self.bn_scope != 'global'

  @property
  def batch_sharding(self) -> NamedSharding:
    """Leading (batch) axis split over the data axes, the rest whole."""
    return NamedSharding(self.mesh, P(self.data_axes))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def device_count(self) -> int:
    return self.mesh.size


def make_topology(
    bn_scope: str,
    bn_group_size: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Topology:
  """The mesh for `bn_scope` over `devices` (default: every device).

  Raises:
    ValueError: unknown scope, or a group size that does not divide the
      device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices)
  if bn_scope not in BN_SCOPES:
    raise ValueError(f'bn_scope={bn_scope!r} is not one of {BN_SCOPES}.')
  if bn_scope == 'group':
    if bn_group_size < 1 or count % bn_group_size:
      raise ValueError(
          f'bn_group_size={bn_group_size} must divide the {count} devices.'
      )
    shape = (count // bn_group_size, bn_group_size)
    names = (REPLICA_AXIS, BN_GROUP_AXIS)
  else:
    shape, names = (count,), (DATA_AXIS,)
  mesh = jax.make_mesh(
      shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devices
  )
  return Topology(mesh, bn_scope)
