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

Several runs in one program (`nbn_jax.training.runs`) put a 'runs' axis in
front: ('runs', 'data') or ('runs', 'replica', 'bn_group'). Stacked states
and batches have a leading run axis split over 'runs'; each run's batch is
split over the data axes, which leave 'runs' out, so the single-run step
sees one run's topology.
"""

import dataclasses
from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BN_SCOPES = ('global', 'device', 'group')
DATA_AXIS = 'data'
REPLICA_AXIS = 'replica'
BN_GROUP_AXIS = 'bn_group'
RUNS_AXIS = 'runs'


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
    """The axes one run's batch is split over (all but 'runs')."""
    return tuple(a for a in self.mesh.axis_names if a != RUNS_AXIS)

  @property
  def run_shards(self) -> int:
    """Devices along the 'runs' axis (1 without one)."""
    return dict(self.mesh.shape).get(RUNS_AXIS, 1)

  @property
  def run_sharding(self) -> NamedSharding:
    """A leading run axis split over 'runs'; the rest replicated."""
    return NamedSharding(self.mesh, P(RUNS_AXIS))

  @property
  def run_batch_sharding(self) -> NamedSharding:
    """(K, B, ...) batches: runs over 'runs', examples over the data axes.

    Fed from several hosts, each host passes its slice of every run's batch
    (K, B / hosts, ...), which matches this layout only while the 'runs'
    axis has one shard (runs then span all hosts' devices).
    """
    return NamedSharding(self.mesh, P(RUNS_AXIS, self.data_axes))

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


def check_bn_group(bn_group_size: int, device_count: int):
  """ValueError unless groups of `bn_group_size` devices tile the devices.

  The message names the field without its prefix: 'bn_group_size=3 must
  divide the 8 devices'.
  """
  if bn_group_size < 1 or device_count % bn_group_size:
    raise ValueError(
        f'bn_group_size={bn_group_size} must divide the {device_count} devices'
    )


def make_topology(
    bn_scope: str,
    bn_group_size: int = 1,
    devices: Sequence[jax.Device] | None = None,
    run_shards: int | None = None,
) -> Topology:
  """The mesh for `bn_scope` over `devices` (default: every device).

  `run_shards`: None for a single run; else the size of a leading 'runs'
  axis (`runs.run_layout` picks it), the rest of the devices carrying each
  run's batch.

  Raises:
    ValueError: unknown scope, or a group size that does not divide the
      device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices) // (run_shards or 1)
  if bn_scope not in BN_SCOPES:
    raise ValueError(f'bn_scope={bn_scope!r} is not one of {BN_SCOPES}.')
  if bn_scope == 'group':
    check_bn_group(bn_group_size, count)
    shape = (count // bn_group_size, bn_group_size)
    names = (REPLICA_AXIS, BN_GROUP_AXIS)
  else:
    shape, names = (count,), (DATA_AXIS,)
  if run_shards is not None:
    shape, names = (run_shards, *shape), (RUNS_AXIS, *names)
  mesh = jax.make_mesh(
      shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devices
  )
  return Topology(mesh, bn_scope)
