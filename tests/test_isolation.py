"""`run_child`: a child that crashes, hangs, or leaves helpers behind holding its output, comes
back as a result the caller words as one line, and nothing of it outlives the call.

The children are real processes doing what a crashed llama.cpp does: die by SIGSEGV, and fork a
helper (ggml's backtrace handler starts a debugger) that keeps the child's stdout open.
"""

import subprocess
import sys
import textwrap
import time

from edgelalm.isolation import run_child

# Each scenario runs inside its own Python with a bound: a regression (the parent waiting on a
# pipe that the helper holds) fails the test instead of hanging the suite.
BOUND_S = 120


def python(code):
    return [sys.executable, "-c", textwrap.dedent(code)]


def pid_alive(pid):
    """False once `pid` is gone or a zombie (it holds no output and runs no code); SIGKILL takes
    effect when the process next runs, so give it a moment."""
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/stat") as stream:
                if stream.read().split(")")[-1].split()[0] == "Z":
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.05)
    return True


def test_a_segfault_is_named_by_its_signal():
    result = run_child(python("print('started', flush=True); import ctypes; ctypes.string_at(0)"))
    assert result.returncode == -11 and not result.ok
    assert result.failure() == "crashed (SIGSEGV)"
    assert result.stdout == "started\n"


def test_an_abort_is_named_by_its_signal():
    assert run_child(python("import os; os.abort()")).failure() == "crashed (SIGABRT)"


def test_an_error_exit_gives_the_last_line_of_stderr():
    result = run_child(python("import sys; print('a\\nthe reason', file=sys.stderr); sys.exit(3)"))
    assert result.failure() == "exited with status 3: the reason"


def test_success_returns_the_output():
    result = run_child(python("print('{\"ok\": 1}')"))
    assert result.ok and result.stdout.strip() == '{"ok": 1}'


def test_the_backtrace_handler_is_switched_off_in_the_child():
    assert run_child(python("import os; print(os.environ.get('GGML_NO_BACKTRACE'))")).stdout.strip() == "1"


def test_a_crash_with_a_helper_holding_stdout_does_not_hang_the_caller(tmp_path):
    """The child forks a helper that sleeps for an hour with the child's stdout open, then
    segfaults. The caller (here, a Python that captures *its* output through a pipe, as
    `$(edgelalm ...)` does) must come back, and the helper must be gone."""
    pid_file = tmp_path / "helper.pid"
    child = f"""
        import ctypes, os, time
        if os.fork() == 0:
            with open({str(pid_file)!r}, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3600)
            os._exit(0)
        while not os.path.exists({str(pid_file)!r}):
            time.sleep(0.01)
        time.sleep(0.2)
        ctypes.string_at(0)
    """
    caller = f"""
        import sys
        from edgelalm.isolation import run_child
        result = run_child([sys.executable, "-c", {textwrap.dedent(child)!r}])
        print(result.failure())
    """
    completed = subprocess.run(python(caller), capture_output=True, text=True, timeout=BOUND_S)
    assert completed.stdout.strip() == "crashed (SIGSEGV)", completed.stderr
    assert not pid_alive(int(pid_file.read_text()))


def test_a_hang_ends_at_the_timeout_and_leaves_nothing(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(3600)"
    result = run_child(python(code), timeout=2)
    assert result.returncode is None and result.failure() == "timed out"
    assert not pid_alive(int(pid_file.read_text()))


_JOB_MODULE = """
import os
import sys

from edgelalm.errors import EdgelalmError
from edgelalm.isolation import serve_json_job


def work(job):
    print("a native library's line before", flush=True)
    if job["ending"] == "error":
        raise EdgelalmError("the job's own line")
    if job["ending"] == "silent":
        os._exit(0)
    return {"doubled": job["number"] * 2, "name": job["name"]}


serve_json_job(work)
print("and one after", flush=True)
"""


def test_a_json_job_comes_back_whatever_else_the_child_prints(tmp_path, monkeypatch):
    """The canary's and bench's children: a result among a native library's stdout lines (it was
    the last line, whatever it held), an error's own line, and a child that printed no result."""
    from edgelalm.isolation import run_json_job

    (tmp_path / "job_child.py").write_text(_JOB_MODULE)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")
    done = run_json_job("job_child", {"ending": "result", "number": 2, "name": 'caf\u00e9 "x"\n'}, timeout=BOUND_S)
    assert done.job_result() == {"doubled": 4, "name": 'caf\u00e9 "x"\n'}
    failed = run_json_job("job_child", {"ending": "error"}, timeout=BOUND_S)
    assert failed.job_result() is None and failed.failure() == "exited with status 1: the job's own line"
    silent = run_json_job("job_child", {"ending": "silent"}, timeout=BOUND_S)
    assert silent.ok and silent.job_result() is None and silent.failure() == "gave no result: no output"
