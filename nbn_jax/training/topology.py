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

`run_layout` checks that the runs (one or K) fit the devices and batch
sizes and says how they sit on them (`RunLayout`): by default the 'runs'
axis has gcd(K, devices) devices. The config checks call it.
"""

import dataclasses
import math
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
  axis (`run_layout` picks it), the rest of the devices carrying each
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


class RunLayoutError(ValueError):
  """`num_runs` and the devices (or batch sizes) do not fit together."""


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """How K runs sit on the devices.

  Attributes:
    num_runs: K.
    run_shards: devices along the 'runs' mesh axis; each holds K /
      run_shards runs.
    data_shards: devices each run's batch is split over.
  """

  num_runs: int
  run_shards: int
  data_shards: int

  @property
  def mesh_run_shards(self) -> int | None:
    """The 'runs' mesh axis size; None for one run (a mesh without one)."""
    return self.run_shards if self.num_runs > 1 else None


def run_layout(
    num_runs: int,
    device_count: int,
    batch_size: int,
    eval_batch_size: int,
    bn_scope: str = 'global',
    bn_group_size: int = 1,
    run_shards: int = 0,
    feeding_hosts: int = 1,
) -> RunLayout:
  """Checks that K runs (K = 1 included) fit the devices and batch sizes.

  The one place these rules are written; the config checks call it.

  Args:
    num_runs: K (config.num_runs).
    device_count: all devices of all hosts.
    batch_size: each run's global training batch.
    eval_batch_size: the evaluation batch (shared by all runs).
    bn_scope, bn_group_size: the BN statistics scope.
    run_shards: devices along the 'runs' axis; 0 picks gcd(K, devices), or
      1 when several hosts feed the batches.
    feeding_hosts: hosts that each feed a slice of every run's batch (the
      tf.data input path on a pod). With more than one, the 'runs' axis
      must have one shard: a host's slice holds examples of every run.

  Raises:
    RunLayoutError: a one-line message naming the config field to change.
  """
  if num_runs < 1:
    raise RunLayoutError(f'config.num_runs={num_runs} must be >= 1.')
  if run_shards == 0:
    run_shards = 1 if feeding_hosts > 1 else math.gcd(num_runs, device_count)
  if feeding_hosts > 1 and run_shards != 1:
    raise RunLayoutError(
        f'config.run_shards={run_shards} must be 1 (or 0) when '
        f'{feeding_hosts} hosts feed the batches (config.input_path='
        "'tf_data'): each host's slice holds examples of every run."
    )
  if run_shards < 1 or num_runs % run_shards or device_count % run_shards:
    raise RunLayoutError(
        f'config.run_shards={run_shards} must divide both config.num_runs='
        f'{num_runs} and the {device_count} devices (0 picks a layout).'
    )
  data_shards = device_count // run_shards
  for field, size in (
      ('batch_size', batch_size),
      ('eval_batch_size', eval_batch_size),
  ):
    if size % data_shards:
      where = f'the {data_shards} devices'
      if run_shards > 1:
        where += (
            f' of each run ({device_count} devices, {run_shards} run shards '
            f'for config.num_runs={num_runs})'
        )
      raise RunLayoutError(
          f'config.{field}={size} is not divisible by {where}; use a '
          f'multiple of {data_shards}.'
      )
  if bn_scope == 'group':
    try:
      check_bn_group(bn_group_size, data_shards)
    except ValueError as e:
      each = ' of each run' if run_shards > 1 else ''
      raise RunLayoutError(
          f'config.{e}{each} (config.bn_scope=group).'
      ) from None
  return RunLayout(num_runs, run_shards, data_shards)
