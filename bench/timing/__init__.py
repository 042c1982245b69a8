"""Speed benchmarks: ratios against a baseline, measured in one run."""
