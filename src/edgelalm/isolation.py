"""Run a command in a child process that may crash, and come back whatever it does.

Native code (llama.cpp above all) can die by a signal; in a child process that becomes a result
the caller words as one line, not a dead parent. Two more things make it safe to wait for:
- the child's output goes to temporary files, not pipes: a crashed llama.cpp may leave helper
  processes behind (ggml's backtrace handler forks a debugger) that hold a pipe open, and a
  parent reading a pipe would wait for them;
- the child runs in its own session, and whatever is left of that session when the child has
  exited (or timed out, or the parent is interrupted) is killed.
edgelalm's own children (the decode canary, bench's worker) speak one protocol: `run_json_job`
passes a JSON job on the command line, `serve_json_job` answers it with a JSON line on stdout, or
an error's one line on stderr and exit status 1.
Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from edgelalm.errors import EdgelalmError

# Marks the result line among whatever a native library prints on stdout before or after it.
_RESULT_PREFIX = "edgelalm-result "


@dataclass(frozen=True)
class ChildResult:
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        """How the child ended, for a message: 'crashed (SIGSEGV)', 'timed out', 'exited with status 1: <last line>'."""
        if self.returncode is None:
            return "timed out"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"crashed ({name})"
        last = (self.stderr.strip().splitlines() or ["no output"])[-1]
        if self.returncode == 0:  # a job's child that printed no result line
            return f"gave no result: {last}"
        return f"exited with status {self.returncode}: {last}"

    def job_result(self) -> dict[str, Any] | None:
        """What `serve_json_job` printed: its result, None where it printed none (it failed)."""
        if not self.ok:
            return None
        lines = [line for line in self.stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
        return json.loads(lines[-1].removeprefix(_RESULT_PREFIX)) if lines else None


def run_json_job(module: str, job: Mapping[str, Any], timeout: float | None = None) -> ChildResult:
    """`python -m module JOB` (`serve_json_job` in `module`) in a child process; its result:
    `.job_result()`."""
    return run_child([sys.executable, "-m", module, json.dumps(job)], timeout=timeout)


def serve_json_job(work: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The child's side of `run_json_job`: `work` on the job in argv, its result printed as the
    result line; an EdgelalmError's one line on stderr and exit status 1, which the parent words."""
    job = json.loads(sys.argv[1])
    try:
        result = work(job)
    except EdgelalmError as error:
        print(error, file=sys.stderr)
        sys.exit(1)
    print(_RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(command: Sequence[str], timeout: float | None = None, env: dict[str, str] | None = None) -> ChildResult:
    """Run `command`, wait at most `timeout` seconds, and return its exit and output."""
    child_env = {**os.environ, **(env or {}), "GGML_NO_BACKTRACE": "1"}
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=child_env, start_new_session=True
        )
        try:
            returncode: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            _kill_session(process)
        return ChildResult(returncode, _read(stdout), _read(stderr))


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    """Kill the child's whole session (it leads it: start_new_session), then reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _read(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")
