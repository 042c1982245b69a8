"""The quickstart with its workdir in a bucket against a local folder.

    python -m bench.timing.workdir_in_a_bucket              # 2 rounds each
    python -m bench.timing.workdir_in_a_bucket --rounds=3 --flags=--config.num_epochs=20

Runs `python train.py --config=configs/quickstart.py` alternately with a
local workdir and with ``gs://BUCKET/run`` on a local Cloud Storage server
(fake-gcs-server, in memory, as the tests start it: tests/cloud_storage.py;
needs requirements-test.txt), and prints each run's wall time, the median
ratio bucket / local, and the files and objects each run wrote. A local
server shows the cost of going through Cloud Storage's API (every object an
HTTP upload, checksums from listings); a real bucket adds its network's
latency on top.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from tests import cloud_storage

ROOT = pathlib.Path(__file__).parents[2]


def _train(workdir: str, flags: list[str], environment) -> float:
  """Seconds of one train.py run, which must succeed."""
  start = time.perf_counter()
  subprocess.run(
      [
          sys.executable,
          str(ROOT / 'train.py'),
          f'--config={ROOT / "configs" / "quickstart.py"}',
          f'--workdir={workdir}',
          *flags,
      ],
      cwd=ROOT,
      env=environment,
      check=True,
      capture_output=True,
  )
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--rounds', type=int, default=2, help='runs of each')
  parser.add_argument(
      '--flags',
      action='append',
      default=[],
      help='a train.py flag for every run (repeat for more)',
  )
  args = parser.parse_args()
  times = {'local': [], 'bucket': []}
  counts = {}
  with cloud_storage.running() as server, tempfile.TemporaryDirectory() as tmp:
    environment = dict(os.environ, **cloud_storage.environment(server.url))
    for round_ in range(args.rounds):
      local = pathlib.Path(tmp) / f'local_{round_}'
      times['local'].append(_train(str(local), args.flags, environment))
      counts['local'] = sum(1 for p in local.rglob('*') if p.is_file())
      bucket = server.new_bucket()
      times['bucket'].append(
          _train(f'gs://{bucket}/run', args.flags, environment)
      )
      counts['bucket'] = len(server.objects(bucket))
      print(
          f'round {round_}: local {times["local"][-1]:.1f} s, bucket '
          f'{times["bucket"][-1]:.1f} s',
          flush=True,
      )
  local, bucket = (statistics.median(times[k]) for k in ('local', 'bucket'))
  print(
      f'median wall time: local {local:.1f} s, bucket {bucket:.1f} s, '
      f'ratio {bucket / local:.2f}\n'
      f'written: {counts["local"]} files locally, {counts["bucket"]} objects '
      'in the bucket'
  )


if __name__ == '__main__':
  main()
