"""What stops a run early and cleanly: a non-finite loss (``Diverged``) and SIGTERM / SIGINT (``Preempted``).

Schedulers (SLURM, Kubernetes) send SIGTERM before they kill a job; ``StopSignals`` turns it, and Ctrl-C, into a
request that the trainer honours at the next update: it saves ``last.pt`` there and raises ``Preempted``, whose exit
status is the shell's 128 + signal number (143 for SIGTERM, 130 for SIGINT), what a scheduler expects of a job that
ended on its signal; SLURM's ``--requeue`` then runs the same command again, and ``trainer.resume=auto`` continues
at that update. A second Ctrl-C interrupts at once.
"""
import math
import signal
import threading
from typing import Optional

from attnvision.errors import RunStopped

__all__ = ["Diverged", "NonFinite", "Preempted", "StopSignals", "first_non_finite"]


class NonFinite(Exception):
    """A training loss, validation loss or weight that is not finite; the message says which and where. The trainer
    turns it into ``Diverged`` after writing the run's ``diverged`` row."""


class Diverged(RunStopped):
    """The loss (or the weights) stopped being finite; nothing after the last finite checkpoint was saved."""

    exit_code = 3


class Preempted(RunStopped):
    """A signal asked the run to stop; a checkpoint was saved at the update where it did."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager: while active, SIGTERM and SIGINT set ``requested`` (the signal number) instead of ending the
    process. Outside the main thread, where handlers cannot be installed, it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def first_non_finite(values):
    """``(index, value)`` of the first non-finite number in ``values``, or None."""
    for i, value in enumerate(values):
        if not math.isfinite(value):
            return i, value
    return None
