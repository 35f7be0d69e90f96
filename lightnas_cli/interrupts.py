"""Stop requests (SIGTERM, Ctrl-C) that cannot get lost.

A run stops on SIGTERM as on Ctrl-C: a KeyboardInterrupt where the main thread is, which the
runner turns into status `interrupted` and exit 130. If the signal arrives while a finalizer
runs (MXNet's `NDArray.__del__` runs at arbitrary points, and often), Python prints "Exception
ignored in ..." and drops the exception: a CI run on 2026-11-30 saw a SIGTERMed search go on
to finish with exit 0. So every request is also recorded; a handler that finds itself inside
a finalizer only records it; and the training loops call `check()` between steps, which raises
for a recorded request.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

#: Signals received since `stop_on_signals` was entered (empty: no stop requested).
_requested: list[int] = []


def _in_finalizer(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _request_stop(signum: int, frame: FrameType | None) -> None:
    _requested.append(signum)
    if not _in_finalizer(frame):  # an exception raised in a finalizer is dropped
        raise KeyboardInterrupt()


def stop_requested() -> bool:
    return bool(_requested)


def check() -> None:
    """Raise KeyboardInterrupt when a stop was requested (call at points where stopping is
    safe, e.g. between training steps)."""
    if _requested:
        raise KeyboardInterrupt()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside, SIGTERM, and Ctrl-C unless SIGINT is ignored or handled by someone else (a
    background job ignores it), stop the main thread with a KeyboardInterrupt that `check()`
    repeats if it was lost."""
    _requested.clear()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig == signal.SIGINT and signal.getsignal(sig) is not signal.default_int_handler:
            continue
        previous[sig] = signal.signal(sig, _request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()
