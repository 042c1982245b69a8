"""The first SIGTERM/SIGINT asks the loop to stop; a second one exits."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from nbn_jax.training import preemption


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_first_signal_sets_the_stop_request_and_does_not_interrupt(signum):
  with preemption.StopSignals() as stop:
    assert not stop.stop_requested()
    os.kill(os.getpid(), signum)  # delivered before os.kill returns
    assert stop.stop_requested()
    assert stop.signal_name == signal.Signals(signum).name


def test_handlers_are_restored_on_exit():
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  with preemption.StopSignals():
    assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


def test_all_hosts_stop_when_any_host_was_signalled():
  # `agree` stands in for the all-gather over hosts: another host was
  # signalled, this one was not.
  with preemption.StopSignals(agree=lambda local: True) as stop:
    assert stop.stop_requested()
    assert stop.signal_name == 'a signal to another host'
  asked = []

  def no_host_agrees(local):
    asked.append(local)
    return False

  with preemption.StopSignals(agree=no_host_agrees) as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert not stop.stop_requested()
  assert asked == [True]


def test_any_host_on_one_host_is_the_local_flag():
  assert preemption.any_host(True) and not preemption.any_host(False)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_second_signal_exits_at_once_with_the_signal_status(signum):
  script = textwrap.dedent(f"""
      import os, time
      from nbn_jax.training import preemption
      with preemption.StopSignals() as stop:
        os.kill(os.getpid(), {int(signum)})
        assert stop.stop_requested()
        os.kill(os.getpid(), {int(signum)})
        time.sleep(30)
      print('not reached')
  """)
  result = subprocess.run(
      [sys.executable, '-c', script],
      capture_output=True,
      text=True,
      timeout=60,
      cwd=pathlib.Path(__file__).parents[3],
  )
  assert result.returncode == -signum
  assert 'not reached' not in result.stdout
  assert 'Traceback' not in result.stderr


def test_preempted_message_names_the_signal_and_step():
  error = preemption.Preempted(93, 'SIGTERM')
  assert str(error).startswith('stopped on SIGTERM after step 93;')
  assert error.step == 93


def test_outside_training_a_sigterm_stops_the_program_where_it_is():
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.Terminated) as stopped:
    with preemption.terminate_outside_training():
      os.kill(os.getpid(), signal.SIGTERM)  # handled before it returns
      pytest.fail('not stopped')
  assert str(stopped.value).startswith(
      'stopped on SIGTERM outside the training steps'
  )
  assert not isinstance(stopped.value, Exception)  # no handler takes it
  assert signal.getsignal(signal.SIGTERM) == before


class TestRunSignals:
  """A distributed run's processes share one StopSignals from before the
  distributed start: outside the training steps they stop together."""

  def test_one_process_keeps_stopping_at_once(self):
    before = signal.getsignal(signal.SIGTERM)
    with preemption.run_signals(distributed=False) as signals:
      assert signals is None
      assert signal.getsignal(signal.SIGTERM) == before

  def test_a_signal_is_kept_until_every_process_asks(self):
    import jax  # pylint: disable=g-import-not-at-top

    with preemption.run_signals(distributed=True) as signals:
      # JAX's own preemption notifier would take SIGTERM over in C.
      assert not jax.config.jax_enable_preemption_service
      os.kill(os.getpid(), signal.SIGTERM)  # no exception: only noted
      with pytest.raises(preemption.Terminated) as stopped:
        signals.terminate_if_requested()
    assert stopped.value.signal_name == 'SIGTERM'

  def test_a_process_not_signalled_stops_with_the_one_that_was(self):
    with preemption.StopSignals(agree=lambda local: True) as signals:
      with pytest.raises(preemption.Terminated) as stopped:
        signals.terminate_if_requested()
    assert str(stopped.value).startswith(
        'stopped on a signal to another host outside the training steps'
    )

  def test_without_a_signal_nothing_stops(self):
    with preemption.StopSignals(agree=lambda local: local) as signals:
      signals.terminate_if_requested()
