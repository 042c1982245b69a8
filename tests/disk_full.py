"""train.py on a disk that fills up: the Nth checkpoint write fails.

    python -m tests.disk_full N [train.py flags...]

From the Nth checkpoint on, the background write of each checkpoint's
record fails with ENOSPC, as orbax's writes fail on a full disk (the
failure arrives in a write thread while training goes on).
"""

import errno
import os
import pathlib
import runpy
import sys

import orbax.checkpoint as ocp

TRAIN = pathlib.Path(__file__).parents[1] / 'train.py'


def fill_up_at(n: int):
  """Makes the record write of the nth checkpoint and later ones fail."""
  real_save = ocp.JsonCheckpointHandler._save_fn
  count = 0

  async def save(self, item, directory):
    nonlocal count
    count += 1
    if count >= n:
      raise OSError(
          errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / 'metadata')
      )
    return await real_save(self, item, directory)

  ocp.JsonCheckpointHandler._save_fn = save


if __name__ == '__main__':
  fill_up_at(int(sys.argv[1]))
  sys.argv = [str(TRAIN), *sys.argv[2:]]
  runpy.run_path(str(TRAIN), run_name='__main__')
