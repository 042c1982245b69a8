"""Analyses of trained runs, outside the trainer.

`features`: the per-class magnitude of the features the classifier reads,
BN against NBN (the paper's mechanism). `comparison`: paired differences
of two arms over seeds, with 95% intervals. Both read what the trainer
wrote (workdirs, summaries); the trainer imports neither.
"""
