"""Numbered steps on stderr: a spinner while a step runs, then its time and result lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape

from edgelalm.errors import printable


def _stderr() -> Any:
    """sys.stderr as it is now, under the proxy rich puts in its place while a live display runs
    (writing to the proxy prints through the console again: a loop that hung every spinner on a
    terminal)."""
    return getattr(sys.stderr, "rich_proxied_file", sys.stderr)


class _BestEffortStderr:
    """sys.stderr, as progress writes it: a write that fails (a reader gone, `2>&1 | head -1`; a
    full disk, `2>/dev/full`) ends the progress silently. It ended the export, blaming the disk
    its bundle was written to."""

    def __init__(self) -> None:
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                _stderr().write(text)
            except (OSError, ValueError, AttributeError):  # AttributeError: stderr closed (None)
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                _stderr().flush()
            except (OSError, ValueError, AttributeError):
                self.broken = True

    def isatty(self) -> bool:
        try:
            return not self.broken and bool(_stderr().isatty())
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        return int(_stderr().fileno())

    @property
    def encoding(self) -> str:
        return getattr(_stderr(), "encoding", None) or "utf-8"


stderr_console = Console(file=_BestEffortStderr(), highlight=False, soft_wrap=True)  # type: ignore[arg-type]


def _spinner(console: Console) -> str:
    """Braille dots where the terminal's encoding holds them, else - \\ | / (a latin-1 terminal
    printed every frame as the text `\\u2839`)."""
    return "dots" if console.encoding.lower().replace("-", "").startswith("utf") else "line"


class Steps:
    def __init__(self, total: int, console: Console = stderr_console) -> None:
        self.total = total
        self.done = 0
        self.console = console
        self._notes: list[str] = []

    @contextmanager
    def step(self, title: str) -> Iterator[Callable[[str], None]]:
        """Run one step; the yielded function shows a detail beside it (e.g. "12/291 tensors")."""
        # Titles and details name paths: `[exp1]` in one is text, not rich's markup, and a line
        # break or a terminal's escape code in one is shown, not obeyed.
        label = escape(printable(f"[{self.done + 1}/{self.total}] {title}"))
        started = time.perf_counter()
        self._notes = []
        with self.console.status(label, spinner=_spinner(self.console)) as status:
            yield lambda detail: status.update(f"{label}: {escape(printable(detail))}")
        self.done += 1
        self.console.print(f"{label} [green]done[/green] ({time.perf_counter() - started:.1f} s)", markup=True)
        for note in self._notes:
            self.console.print(f"      {printable(note)}", markup=False)

    def note(self, text: str) -> None:
        """A result line, printed under the current step when it ends."""
        self._notes.append(text)


class Bar:
    """A bar on stderr for `total` items with elapsed time and ETA, a status beside it, and lines
    printed above it (`note`): what dataset rendering, training and `bench` show. Where stderr is
    not a terminal (a log file), only the notes are written; not `shown` (progress turned off),
    nothing is."""

    def __init__(self, total: float, title: str, console: Console = stderr_console, shown: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not (shown and console.is_terminal),  # a log file gets the notes, not the bar's last frame
        )
        self.shown = shown
        self.title = title
        self.task = self.progress.add_task(escape(title), total=total)

    def __enter__(self) -> Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, completed: float | None = None, advance: float = 0, status: str | None = None) -> None:
        description = escape(printable(f"{self.title}: {status}" if status else self.title))
        self.progress.update(self.task, completed=completed, advance=advance, description=description)

    def note(self, text: str) -> None:
        if self.shown:
            self.progress.console.print(printable(text), markup=False, highlight=False)
