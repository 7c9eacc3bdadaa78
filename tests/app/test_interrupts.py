"""Ctrl-C and SIGTERM as a request to stop (``jaxdigits.interrupts``), in this process: the
handlers only note it, ``check`` raises at the safe point, and everything is put back after.
(Whole commands interrupted in a subprocess: tests/app/test_cli.py, test_reports.py, test_serve.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from jaxdigits import interrupts
from jaxdigits.training import TrainInterrupted


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_is_noted_and_raised_only_at_the_next_check(signum):
    before = signal.getsignal(signum)
    with interrupts.handled():
        interrupts.check()  # nothing asked yet
        os.kill(os.getpid(), signum)  # lands here, in the middle of the work: nothing is raised
        total = sum(range(1000))
        assert interrupts.requested() and total == 499500
        with pytest.raises(interrupts.Interrupted) as stopped:
            interrupts.check()
        assert isinstance(stopped.value, KeyboardInterrupt)  # unwinds as Ctrl-C always did
    assert signal.getsignal(signum) is before and not interrupts.requested()
    interrupts.check()  # outside handled() it does nothing


def test_check_does_nothing_outside_the_main_thread_and_wait_wakes_at_once():
    with interrupts.handled():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs
        errors = []
        thread = threading.Thread(target=lambda: errors.extend([interrupts.check()]))
        thread.start()
        thread.join()
        assert errors == [None]  # a server's or a heartbeat's thread is not stopped this way
        began = time.monotonic()
        with pytest.raises(interrupts.Interrupted):
            interrupts.wait(30)
        assert time.monotonic() - began < 5


def test_train_interrupted_keeps_its_meaning():
    stop = TrainInterrupted(3)
    assert stop.saved_epochs == 3 and isinstance(stop, interrupts.Interrupted) and isinstance(stop, KeyboardInterrupt)
