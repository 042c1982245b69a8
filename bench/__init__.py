"""Benchmarks and experiment drivers, by kind; run from the repository root.

* `bench.timing`: speed benchmarks, each printing ratios measured in one run
  (ours against a baseline on the same machine), never pass/fail.
* `bench.experiments`: training experiments and their reports (accuracy,
  seed sweeps, feature magnitudes, the drop-in into flax's ResNet).
* `bench.gpu`: the GPU evidence scripts (shell), under one time budget.

Each runs as a module, e.g. ``python -m bench.timing.nbn_overhead``; nothing
here edits `sys.path`, and tests import nothing from here.
"""
