r"""Per-class strength of the last-stage features, BN against NBN (CPU).

    python -m bench.experiments.feature_magnitude WORKDIR [WORKDIR ...] \
        [--data-dir=DIR --cache-dir=DIR] [--out=report.md]

Prints, per arm (BN, NBN), each class's mean feature magnitude from head to
tail and how it falls (slope, tail / head, spearman, cv): see
`nbn_jax.analysis.features` for the definitions.

--data-dir and --cache-dir replace the run's own data paths (workdirs
brought back from another machine).
"""

import argparse
import collections
import sys

from nbn_jax.analysis import features


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--data-dir', default='')
  parser.add_argument('--cache-dir', default='')
  parser.add_argument('--out', default='', help='also write the report here')
  args = parser.parse_args()
  arms = collections.defaultdict(list)
  for workdir in args.workdirs:
    norm, counts, magnitudes = features.class_magnitudes(
        workdir, args.data_dir, args.cache_dir
    )
    arms[norm].append((counts, magnitudes))
  counts = [c for runs in arms.values() for c, _ in runs]
  if any((c != counts[0]).any() for c in counts):
    sys.exit('error: the workdirs were trained on different class counts.')
  text = features.report(arms)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
