"""What the loop and the results share for one invocation of a workdir."""

import dataclasses

from nbn_jax.training.checkpoints import Checkpoints
from nbn_jax.training.evaluation import Evaluator
from nbn_jax.training.plan import Plan
from nbn_jax.training.records import RunRecord
from nbn_jax.training.reporting import MetricWriter


@dataclasses.dataclass(frozen=True)
class RunContext:
  """The plan and the workdir's open parts, for the loop's steps.

  The train state is not part of it: the loop passes it along as it
  changes.

  Attributes:
    plan: the run, fully decided.
    workdir: where the run writes.
    checkpoints: the workdir's checkpoints (latest and each run's best).
    writers: each run's scalar writer, run k's at k.
    evaluator: the plan's evaluator (it remembers the latest step's).
    records: each run's record, run k's at k; the loop adds to them.
  """

  plan: Plan
  workdir: str
  checkpoints: Checkpoints
  writers: list[MetricWriter]
  evaluator: Evaluator
  records: list[RunRecord]
