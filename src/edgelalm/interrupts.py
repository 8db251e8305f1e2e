"""SIGINT and SIGTERM for the CLI: unwind like Ctrl-C, so half-written outputs are removed.

The first signal raises KeyboardInterrupt, except inside `deferred()`: torch's exporter traces
under C++ dispatch-mode guards, and an exception raised in the middle of one left torch's state
inconsistent and the process aborting (SIGABRT, a staging folder left behind; seen once in 24
random SIGTERMs), so there the interrupt waits for the export call to return. A second signal is
ignored, so it cannot cut the cleanup short; a third ends the process at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

_signals_seen = 0
_deferring = 0
_pending = False


def install() -> None:
    """Handle SIGINT and SIGTERM so; a signal the parent ignores (a shell's background job
    ignores SIGINT) stays ignored."""
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signal_number) != signal.SIG_IGN:
            signal.signal(signal_number, _on_signal)


def interrupted() -> bool:
    """Whether a signal has come: then any error on the way out is the interrupt (a library may
    rewrap the KeyboardInterrupt as an error of its own)."""
    return _signals_seen > 0


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a first signal until the block ends (a no-op where install() was not called)."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            _pending = False
            raise KeyboardInterrupt


def _on_signal(signum: int, frame: object) -> None:
    global _signals_seen, _pending
    _signals_seen += 1
    if _signals_seen >= 2:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return
    if _deferring:
        _pending = True
        print("edgelalm: interrupting once the current export call returns", file=sys.stderr, flush=True)
        return
    raise KeyboardInterrupt
