"""Stopping cleanly on SIGTERM (cluster preemption) and SIGINT (Ctrl-C).

The handler only records the signal. The training loop looks at it once per step, after the
step's forward pass (under ``torchrun`` in one all-reduce, so that every process stops after the
same step), finishes that step, writes the checkpoint and ends with :class:`RunStopped`: exit
status 128 + the signal number, 143 for SIGTERM and 130 for SIGINT. A second Ctrl-C stops at once
(``KeyboardInterrupt``, the previous checkpoint stays); further SIGTERMs change nothing.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopRequest"]


class StopRequest:
    """Context manager that installs the handlers (main thread only) and restores the previous
    ones on exit; ``signum`` is the first signal received, or None."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal's name (SIGTERM where another process received it)."""
        return signal.Signals(self.signum or signal.SIGTERM).name

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
