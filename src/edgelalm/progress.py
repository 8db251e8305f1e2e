"""Numbered steps on stderr: a spinner while a step runs, then its time and result lines."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

stderr_console = Console(stderr=True, highlight=False, soft_wrap=True)


class Steps:
    def __init__(self, total: int, console: Console = stderr_console) -> None:
        self.total = total
        self.done = 0
        self.console = console
        self._notes: list[str] = []

    @contextmanager
    def step(self, title: str) -> Iterator[Callable[[str], None]]:
        """Run one step; the yielded function shows a detail beside it (e.g. "12/291 tensors")."""
        label = f"[{self.done + 1}/{self.total}] {title}"
        started = time.perf_counter()
        self._notes = []
        with self.console.status(label) as status:
            yield lambda detail: status.update(f"{label}: {detail}")
        self.done += 1
        self.console.print(f"{label} [green]done[/green] ({time.perf_counter() - started:.1f} s)", markup=True)
        for note in self._notes:
            self.console.print(f"      {note}", markup=False)

    def note(self, text: str) -> None:
        """A result line, printed under the current step when it ends."""
        self._notes.append(text)
