"""Reading what a training run left in its workdir."""

import os

import jax
import orbax.checkpoint as ocp


def final_params(workdir) -> dict:
  """The parameters of the newest checkpoint, on this process's first device.

  Works whatever topology saved it (e.g. two hosts of four devices): the
  target shapes come from the checkpoint's metadata, the placement is local.
  """
  step = ocp.CheckpointManager(
      os.path.join(workdir, 'checkpoints')
  ).latest_step()
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(path).item_metadata,
  )
  return jax.device_get(checkpointer.restore(path, target)['params'])
