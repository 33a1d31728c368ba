"""Turning a hang into an error: the batch watchdog and the collective timeout.

A stalled shard server is caught first by the reader's own timeouts
(:mod:`anchorbind.data.streaming`); these are the backstops for everything else:

- :class:`BatchWatchdog`: the training loop waits for each batch inside
  :meth:`BatchWatchdog.waiting`. When no batch arrives within ``data.batch_timeout_s``, a timer
  thread logs which batch was awaited (and every thread's stack, through :mod:`faulthandler`), then
  interrupts the main thread with a signal whose handler raises :class:`DataStallError`; a
  blocking system call in the main thread (``num_workers: 0``, a socket read) is interrupted too.
  Should the main thread not come back within a grace period (stuck in C code that never checks
  signals), the process exits with status 1. Works with and without DataLoader workers; no
  ``signal.alarm`` (one per process, easily taken by other code).
- :func:`process_group_kwargs`: ``InitProcessGroupKwargs(timeout=dist_timeout_s)`` for the
  Accelerator, so a rank waiting in a collective for a rank that hangs or died gives up after
  ``dist_timeout_s`` instead of torch's default (10 min NCCL, 30 min gloo).

Under ``accelerate launch`` a rank that raises exits non-zero, and the launcher stops the others;
the rest of the ranks see their next collective fail.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from anchorbind.errors import AnchorBindError

__all__ = ["BatchWatchdog", "DataStallError", "process_group_kwargs"]

log = logging.getLogger("anchorbind.train")

WATCHDOG_SIGNAL = signal.SIGUSR2
"""Sent to the main thread by a watchdog that fired (its handler raises :class:`DataStallError`)."""
EXIT_STALLED = 1


class DataStallError(AnchorBindError, RuntimeError):
    """No batch arrived within ``data.batch_timeout_s`` (CLI: one line, exit 1)."""


class _Stalled(BaseException):
    """What the signal handler raises: not an ``Exception``, so no ``except Exception`` on the way
    (webdataset's handlers, a decoder's) can swallow it; :meth:`BatchWatchdog.waiting` turns it
    into :class:`DataStallError`."""


def process_group_kwargs(timeout_s: float | None) -> list[Any]:
    """accelerate ``kwargs_handlers`` that set the torch.distributed timeout (none when ``timeout_s`` is unset)."""
    if not timeout_s:
        return []
    from accelerate.utils import InitProcessGroupKwargs

    return [InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=float(timeout_s)))]


class BatchWatchdog:
    """Raises :class:`DataStallError` in the main thread when a wait lasts longer than ``timeout_s``.

    Args:
        timeout_s: the longest wait; ``None`` or 0 disables the watchdog.
        grace_s: after the signal, how long the main thread has to raise before the process exits.
        describe: called when the watchdog fires; its text is added to the error (e.g. the shards
            being read).
    """

    def __init__(self, timeout_s: float | None, *, grace_s: float = 60.0,
                 describe: Callable[[], str] | None = None) -> None:
        self.timeout_s = timeout_s if timeout_s else None
        self.grace_s = grace_s
        self.describe = describe
        self._lock = threading.Lock()
        self._waiting: str | None = None
        self._pending: str | None = None  # the message the signal handler raises, once
        self._message: str | None = None
        self._timers: list[threading.Timer] = []
        self._previous: Any = None
        self._installed = False

    def _fire(self) -> None:
        with self._lock:
            if self._waiting is None:
                return
            extra = ""
            if self.describe is not None:
                with contextlib.suppress(Exception):
                    extra = self.describe()
            self._message = (f"no batch for {self.timeout_s:g} s while waiting for {self._waiting} "
                             f"(data.batch_timeout_s){'; ' + extra if extra else ''}")
            log.error("%s; stacks of every thread follow", self._message)
            with contextlib.suppress(Exception):
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            escalate = threading.Timer(self.grace_s, self._exit)
            escalate.daemon = True
            self._timers.append(escalate)
            escalate.start()
            self._pending = self._message
            signal.pthread_kill(threading.main_thread().ident, WATCHDOG_SIGNAL)

    def _exit(self) -> None:
        with self._lock:
            if self._waiting is None:
                return
        log.critical("%s; the main thread did not stop within %g s: exiting", self._message, self.grace_s)
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(EXIT_STALLED)

    def _raise(self, signum: int, frame: Any) -> None:
        message, self._pending = self._pending, None
        if message is not None:  # a stray signal (none pending) is ignored
            raise _Stalled(message)

    def _disarm(self, timer: threading.Timer) -> None:
        stall: _Stalled | None = None
        for _ in range(3):  # the handler raises at most once; a raise inside this retries it
            try:
                timer.cancel()
                with self._lock:
                    self._waiting = None
                    for escalate in self._timers:
                        escalate.cancel()
                    self._timers.clear()
                break
            except _Stalled as err:
                stall = err
        if stall is not None:
            raise DataStallError(str(stall)) from None

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """Run the body (the wait for one batch) under the watchdog; ``what`` names it in the error."""
        if self.timeout_s is None:
            yield
            return
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("BatchWatchdog.waiting must run in the main thread (it is interrupted by a signal)")
        if not self._installed:
            self._previous = signal.signal(WATCHDOG_SIGNAL, self._raise)
            self._installed = True
        timer = threading.Timer(self.timeout_s, self._fire)
        timer.daemon = True
        with self._lock:
            self._waiting, self._pending, self._message = what, None, None
        timer.start()
        try:
            yield
        except _Stalled as stall:
            self._disarm(timer)
            raise DataStallError(str(stall)) from None
        finally:
            self._disarm(timer)

    def close(self) -> None:
        """Restore the signal handler that was there before (the watchdog is not used again)."""
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(WATCHDOG_SIGNAL, self._previous)
            self._installed = False

    def __enter__(self) -> BatchWatchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
