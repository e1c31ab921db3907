"""Stopping a batch on SIGINT (Ctrl-C) and SIGTERM: the driver's signal handling (see
:mod:`medseg.batch` for what a stop does to the cases, the ledger and the summaries)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["Stop", "StopSignals", "stop_signals"]


class Stop(BaseException):
    """A stop signal, raised in the driver where the cases in flight can be abandoned.

    A BaseException, so that ``except Exception`` in a case run in this process (local
    executor) lets it through.
    """

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


class StopSignals:
    """SIGINT and SIGTERM while a batch runs (see :mod:`medseg.batch`).

    A signal is noted; it raises :class:`Stop` at once only inside :meth:`armed` (waiting
    for a case, running one in this process, staging inputs), and otherwise at the driver's
    next :meth:`check`, so that ledger transactions and summaries are never cut in half.
    Handlers can only be installed from the main thread; elsewhere signals keep their
    default behaviour.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._armed = False
        self._previous: dict[int, Any] = {}
        self._previous_unraisable = sys.unraisablehook

    def install(self) -> None:
        """Catch SIGINT and SIGTERM (main thread only), keeping the handlers they had."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        self._previous_unraisable = sys.unraisablehook
        sys.unraisablehook = self._unraisable

    def reclaim(self) -> None:
        """Install the handlers again where a library replaced them (Ray's init may)."""
        for signum in self._previous:
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers :meth:`install` found (one set outside Python: the default)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = self._previous_unraisable

    def _unraisable(self, unraisable: Any) -> None:
        # a signal that lands while Python runs a finaliser or weakref callback (garbage
        # collection) raises Stop where it cannot propagate: Python would print it as
        # "Exception ignored ... Traceback". The signal is remembered, so the driver's next
        # check() raises it; nothing needs printing.
        if isinstance(unraisable.exc_value, Stop):
            return
        self._previous_unraisable(unraisable)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_number is None:
            self.signal_number = signum
        if self._armed:
            self._armed = False
            raise Stop(self.signal_number)

    def check(self) -> None:
        """Raise :class:`Stop` if a signal came."""
        if self.signal_number is not None:
            raise Stop(self.signal_number)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """A section a signal may interrupt at any point."""
        self.check()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False


_ACTIVE: list[StopSignals] = []


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """The batch's stop handling; nested calls (run_batch -> run_cases) share one."""
    if threading.current_thread() is not threading.main_thread():
        yield StopSignals()  # signals cannot be caught here: they stay as they are
        return
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    stop = StopSignals()
    stop.install()
    _ACTIVE.append(stop)
    try:
        yield stop
    finally:
        _ACTIVE.pop()
        stop.restore()
