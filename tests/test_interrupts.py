"""Stop requests that a finalizer would swallow still stop the run (lightnas_cli/interrupts.py)."""
from __future__ import annotations

import os
import signal

import mxnet as mx
import pytest

from lightnas_cli import interrupts
from lightnas_cli.search import training


class SignalsWhenCollected:
    """Sends `sig` to this process from its finalizer: the handler then runs inside __del__,
    where Python drops any exception it raises (as with MXNet's NDArray.__del__)."""

    def __init__(self, sig: int) -> None:
        self.sig = sig

    def __del__(self) -> None:
        os.kill(os.getpid(), self.sig)
        for _ in range(1000):  # bytecode boundaries, where the handler runs
            pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_inside_a_finalizer_is_kept_and_check_raises(sig):
    with interrupts.stop_on_signals():
        SignalsWhenCollected(sig)  # collected at once: the signal arrives inside __del__
        assert interrupts.stop_requested()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert not interrupts.stop_requested()
    interrupts.check()  # outside: nothing pending


def test_a_signal_elsewhere_raises_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.stop_on_signals():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_training_loops_stop_at_the_next_batch():
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    batches = [(mx.nd.ones((4, 3)), mx.nd.zeros((4,)))] * 3
    seen = []

    def loader():
        for index, batch in enumerate(batches):
            seen.append(index)
            if index == 1:
                SignalsWhenCollected(signal.SIGTERM)
            yield batch

    task = training.ClassificationTask()
    with interrupts.stop_on_signals():
        with pytest.raises(KeyboardInterrupt):
            training.evaluate(net, loader(), task, [mx.cpu()], "val")
    assert seen == [0, 1]
