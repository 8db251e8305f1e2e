"""SIGINT, SIGTERM and SIGHUP for the CLI: unwind like Ctrl-C, so half-written outputs are removed
(SIGHUP: the terminal closed, an ssh session dropped).

The first signal raises KeyboardInterrupt, except inside `deferred()`: torch's exporter traces
under C++ dispatch-mode guards, and an exception raised in the middle of one left torch's state
inconsistent and the process aborting (SIGABRT, a staging folder left behind; seen once in 24
random SIGTERMs), so there the interrupt waits for the export call to return. A second signal is
ignored, so it cannot cut the cleanup short; a third ends the process at once.

Python runs a signal handler only between bytecodes, so a signal that comes during a long
native call (an onnxruntime run) would wait for the call to return; a graph that loops for ever
would never see it. A watcher thread reads the signals as they arrive (signal.set_wakeup_fd):
on the first it stops the native calls running inside `stoppable()` (onnxruntime's
RunOptions.terminate), and on the third it ends the process even while the main thread is
still inside one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from edgelalm.errors import printable

# SIGHUP where the platform has one (Windows has none).
_HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
# What the CLI prints when a signal ends it (cli._fail_interrupted, and the watcher's third signal).
INTERRUPTED_LINE = "edgelalm: error: interrupted\n"
_signals_seen = 0
_deferring = 0
_EXPORT_CALL_NOTE = (
    "edgelalm: interrupting once the current export call returns (a third signal stops it at once, leaving its "
    "hidden staging folder for the next export to remove)"
)
_deferred_note = _EXPORT_CALL_NOTE
_kept: Path | None = None
_pending = False
_swallowed = False
_previous_unraisablehook = sys.unraisablehook
_stoppers: set[Callable[[], None]] = set()
_stoppers_lock = threading.Lock()
_watching = False


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP so; a signal the parent ignores (a shell's background job
    ignores SIGINT, nohup SIGHUP) stays ignored."""
    handled = [number for number in _HANDLED if signal.getsignal(number) != signal.SIG_IGN]
    for signal_number in handled:
        signal.signal(signal_number, _on_signal)
    global _watching, _previous_unraisablehook
    if handled and not _watching:  # once per process (tests call the CLI's main many times)
        _watching = True
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _keep_dropped_interrupt
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        threading.Thread(target=_watch, args=(read_end,), name="edgelalm-signals", daemon=True).start()


@contextlib.contextmanager
def stoppable(stop: Callable[[], None]) -> Iterator[None]:
    """A native call that `stop()` ends early (from another thread) when a signal comes."""
    with _stoppers_lock:
        _stoppers.add(stop)
    try:
        yield
    finally:
        with _stoppers_lock:
            _stoppers.discard(stop)


def _watch(read_end: int) -> None:
    """The signals as the C-level handler sees them, whatever the main thread is doing."""
    seen = 0
    while chunk := os.read(read_end, 64):
        for number in chunk:
            if number not in _HANDLED:
                continue
            seen += 1
            if seen == 1:
                with _stoppers_lock:
                    stops = list(_stoppers)
                for stop in stops:
                    stop()
            elif seen >= 3:
                with contextlib.suppress(OSError):
                    os.write(2, INTERRUPTED_LINE.encode())
                os._exit(130)


def _keep_dropped_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
    """ctypes hands the exception of a callback it cannot pass on (llama.cpp's log runs Python
    inside native calls) to sys.unraisablehook, prints it and drops it. The handler's
    KeyboardInterrupt lands there when a signal comes during the native call: Python runs the
    handler at the callback's first instruction (an export then finished with exit 0). It is kept,
    for `deliver_swallowed` to raise once the native call has returned."""
    global _swallowed
    if _signals_seen and issubclass(unraisable.exc_type, KeyboardInterrupt):
        _swallowed = True
        return
    _previous_unraisablehook(unraisable)


def deliver_swallowed() -> None:
    """Raise, once a native call has returned, the KeyboardInterrupt a callback dropped."""
    global _swallowed
    if _swallowed and not _deferring:
        _swallowed = False
        raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether a signal has come: then any error on the way out is the interrupt (a library may
    rewrap the KeyboardInterrupt as an error of its own)."""
    return _signals_seen > 0


def raise_if_interrupted() -> None:
    """For an error that a signal can cause: a native module's initialisation interrupted comes out
    as its ImportError, which is the interrupt, not a library that cannot load."""
    if interrupted():
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred(note: str = _EXPORT_CALL_NOTE) -> Iterator[None]:
    """Hold a first signal until the block ends, saying `note` when one comes (a no-op where
    install() was not called)."""
    global _deferring, _pending, _swallowed, _deferred_note
    _deferring += 1
    outer_note, _deferred_note = _deferred_note, note
    try:
        yield
    finally:
        _deferring -= 1
        _deferred_note = outer_note
        if not _deferring and (_pending or _swallowed):
            _pending = _swallowed = False
            raise KeyboardInterrupt


@contextlib.contextmanager
def kept_if_interrupted(output: Path) -> Iterator[None]:
    """`output` is whole once the block ends: a signal held until then (`deferred`) says so in the
    interrupted line, where the command's result would have named it."""
    global _kept
    yield
    if _pending:
        _kept = output


def interrupted_line() -> str:
    """The line a command ended by a signal prints: with what was already written whole, if any."""
    if _kept is None:
        return INTERRUPTED_LINE
    return f"edgelalm: error: interrupted; {printable(os.fsdecode(_kept))} had been written whole, and is kept\n"


def settle() -> None:
    """The command's work is done and its exit status chosen, and the process is about to end:
    signals from now on are ignored. Python's shutdown puts its own handlers back to the default,
    and a Ctrl-C there ended the process by SIGINT (status -2, no line) after a complete answer;
    an ignored signal it leaves ignored."""
    for signal_number in _HANDLED:
        if signal.getsignal(signal_number) is _on_signal:
            signal.signal(signal_number, signal.SIG_IGN)


def _on_signal(signum: int, frame: object) -> None:
    global _signals_seen, _pending
    _signals_seen += 1
    if _signals_seen >= 2:
        for signal_number in _HANDLED:
            if signal.getsignal(signal_number) is _on_signal:
                signal.signal(signal_number, signal.SIG_DFL)
        return
    if _deferring:
        _pending = True
        with contextlib.suppress(OSError, ValueError):  # a closed terminal (SIGHUP) takes stderr with it
            print(_deferred_note, file=sys.stderr, flush=True)
        return
    raise KeyboardInterrupt
