"""Graceful stop on SIGTERM (preemption) and SIGINT (Ctrl-C).

Cloud TPU, Kubernetes and SLURM preempt a job by sending SIGTERM and killing
it a grace period later. Inside `StopSignals`, the first SIGTERM or SIGINT
only sets a flag: the training loop asks `stop_requested()` after each chunk
of steps, writes a checkpoint at that step and raises `Preempted`, which
`train.py` turns into one log line and exit status `EXIT_PREEMPTED`. A
second signal exits at once, with the signal's own status (128 + signal
number: 143 for SIGTERM, 130 for SIGINT), as if no handler were installed.
Outside the training steps (`terminate_outside_training`), a SIGTERM stops
the program where it is, with the same status and one line.

On several hosts, `stop_requested()` is a collective: every host calls it
after the same step and all get True if any host was signalled, so all
hosts checkpoint the same step together. A process of several cannot stop
alone outside the training steps either (the others would wait for it in
their next collective): from before the distributed start on, `run_signals`
gives the run one `StopSignals`, and every process stops together where
they all ask: before the training steps, after each chunk of them, and
before the results are written (`StopSignals.terminate_if_requested`).

    with preemption.StopSignals() as stop:
      for step in ...:
        ...
        if stop.stop_requested():
          save_checkpoint(state)
          raise preemption.Preempted(step, stop.signal_name)
"""

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator

import numpy as np
from absl import logging

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to
# retry". A scheduler that restarts on this status resumes the run.
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on a signal after checkpointing `step`."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(
        f'stopped on {signal_name} after step {step}; the checkpoint at step '
        f'{step} is saved. Rerun the same command to resume.'
    )
    self.step = step
    self.signal_name = signal_name


class Terminated(BaseException):
  """SIGTERM arrived outside the training steps (starting, or finishing).

  A BaseException, like KeyboardInterrupt, so that no `except Exception`
  on the way takes it for an error of its own.
  """

  def __init__(self, signal_name: str):
    super().__init__(
        f'stopped on {signal_name} outside the training steps (while '
        'starting or finishing); the checkpoints are as they were. Rerun the '
        'same command to resume.'
    )
    self.signal_name = signal_name


@contextlib.contextmanager
def terminate_outside_training() -> Iterator[None]:
  """Within it, the first SIGTERM raises `Terminated` where the program is.

  Outside the training steps there is nothing to checkpoint, so the run
  stops at once; the exception unwinds it (the workdir's lock is released).
  `StopSignals` takes over around the training steps. A second SIGTERM
  exits at once.
  """

  def handle(signum: int, frame):
    del frame
    signal.signal(signum, signal.SIG_DFL)  # a second one: exit at once
    raise Terminated(signal.Signals(signum).name)

  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def any_host(flag: bool) -> bool:
  """True on every host if `flag` is True on any host (a collective)."""
  import jax  # only when there are several hosts

  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.int32(flag))
  return bool(np.asarray(flags).any())


class StopSignals:
  """Turns the first SIGTERM/SIGINT into a stop request (a context manager).

  Attributes:
    signal_name: 'SIGTERM' or 'SIGINT' once a signal arrived, else None.
  """

  def __init__(self, agree: Callable[[bool], bool] = any_host):
    """`agree(local_flag) -> global_flag` combines the hosts' flags."""
    self._agree = agree
    self._previous = {}
    self.signal_name: str | None = None

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError('StopSignals must be entered in the main thread.')
    for signum in SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame):
    del frame
    if self.signal_name is not None:  # the second signal: exit at once
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signal_name = signal.Signals(signum).name
    logging.warning(
        'Received %s: stopping after the current step with a checkpoint '
        '(send it again to exit at once without one).',
        self.signal_name,
    )

  def stop_requested(self) -> bool:
    """Whether to stop now; call it at the same step on every host."""
    stop = self._agree(self.signal_name is not None)
    if stop and self.signal_name is None:
      self.signal_name = 'a signal to another host'
    return stop

  def terminate_if_requested(self):
    """Raises `Terminated` if any host was signalled (outside the training
    steps: nothing to checkpoint). A collective, as `stop_requested`."""
    if self.stop_requested():
      raise Terminated(self.signal_name)


@contextlib.contextmanager
def run_signals(distributed: bool) -> Iterator['StopSignals | None']:
  """The stop signals of a whole run of several processes; None for one.

  One process stops at once outside the training steps
  (`terminate_outside_training`) and installs `StopSignals` around them
  itself. The processes of a distributed run share one `StopSignals` from
  before `jax.distributed.initialize` on (see the module docstring), with
  JAX's own preemption service off: its notifier would install a SIGTERM
  handler in C over this one and keep the signal to itself.
  """
  if not distributed:
    yield None
    return
  import jax  # only for a distributed run

  jax.config.update('jax_enable_preemption_service', False)
  with StopSignals() as signals:
    yield signals
