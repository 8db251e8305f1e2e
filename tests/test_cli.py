"""The command line as a first-time user meets it: help at 80 columns, plain `edgelalm`, usage
errors, a runtime-only install, `doctor`, and `inspect`'s wording."""

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the tiny_bundles fixture exports with torch

from edgelalm.runtime.llama_backend import decide_extra_buffers

COMMANDS = ("export", "run", "inspect", "bench", "finetune", "scaffold", "doctor")
# A Python that cannot import the export extra: what `pip install edgelalm` (no [export]) gives.
_RUNTIME_ONLY = (
    "import sys; "
    "[sys.modules.__setitem__(m, None) for m in ('torch', 'transformers', 'peft', 'onnx', 'onnxscript', 'gguf')]; "
    "sys.argv = ['edgelalm'] + sys.argv[1:]; "
    "from edgelalm.cli import main; main()"
)


def edgelalm(*args, columns=None, python_args=("-m", "edgelalm.cli"), cwd=None):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    if columns:
        env["COLUMNS"] = str(columns)
    result = subprocess.run(
        [sys.executable, *python_args, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    return result.returncode, result.stdout, result.stderr


def one_error_line(code, stderr):
    assert code != 0 and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgelalm: error: "), stderr
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_is_whole(command):
    code, stdout, stderr = edgelalm(command, "--help", columns=80)
    assert code == 0 and stderr == ""
    assert "…" not in stdout and "<bool>" not in stdout and "{" not in stdout.splitlines()[0]
    assert max(len(line) for line in stdout.splitlines()) <= 80


def test_help_shows_defaults_and_flags_as_a_user_types_them():
    _, export_help, _ = edgelalm("export", "--help", columns=80)
    assert "export/<model>-<label>-<quant>" in export_help and "-encoder-<precision>" in export_help
    assert "--llama-extra-buffers" in export_help
    _, run_help, _ = edgelalm("run", "--help", columns=80)
    assert run_help.startswith("Usage: edgelalm run [OPTIONS] AUDIO...\n")
    assert "--json " in run_help and "mp3" in run_help
    assert "the cores this process may use" in run_help and "llama.cpp's own" not in run_help
    assert "20824" in run_help  # why the extra buffers are off where they are


def test_plain_edgelalm_prints_the_help():
    code, stdout, stderr = edgelalm()
    assert code == 0 and stderr == ""
    assert stdout.startswith("Usage: edgelalm") and all(command in stdout for command in COMMANDS)


def test_version_and_short_help():
    from edgelalm import __version__

    assert edgelalm("--version")[:2] == (0, f"edgelalm {__version__}\n")
    assert edgelalm("-V")[:2] == (0, f"edgelalm {__version__}\n")
    code, stdout, _ = edgelalm("run", "-h")
    assert code == 0 and stdout.startswith("Usage: edgelalm run [OPTIONS] AUDIO...")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_standard_output_that_refuses_writes_is_one_line(tiny_bundles):
    """A full disk under stdout gave a traceback; stdout closed lost the answer with exit 0."""
    bundle = tiny_bundles("avg", 3)
    command = [sys.executable, "-m", "edgelalm.cli", "inspect", str(bundle)]
    _assert_full_and_closed_stdout_are_one_line(command)
    # A reader that leaves (`| head -c 5`): quietly, no traceback.
    result = subprocess.run(
        " ".join(map(shlex.quote, command)) + " | head -c 5 >/dev/null; exit ${PIPESTATUS[0]}",
        shell=True, executable="/bin/bash", stderr=subprocess.PIPE, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode in (0, 1) and result.stderr == "", result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("arguments", [["--help"], ["export", "--help"], []])
def test_help_into_a_full_or_closed_standard_output_is_one_line(arguments):
    """`edgelalm --help >/dev/full` was a traceback (click's own write); `>&-` printed nothing with
    exit 0, where --version said standard output was closed."""
    _assert_full_and_closed_stdout_are_one_line([sys.executable, "-m", "edgelalm.cli", *arguments])


def _assert_full_and_closed_stdout_are_one_line(command: list[str]) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert one_error_line(result.returncode, result.stderr) == (
        "edgelalm: error: cannot write to standard output: No space left on device"
    )
    result = subprocess.run(
        " ".join(map(shlex.quote, command)) + " >&-", shell=True, stderr=subprocess.PIPE, text=True, timeout=300
    )
    assert "standard output is closed" in one_error_line(result.returncode, result.stderr)


@pytest.mark.parametrize("weight", ["nan", "1.5", "-0.1"])
def test_a_ctc_weight_outside_0_to_1_is_said_so(weight):
    """typer's range check answered NaN with "Input should be less than or equal to 1"."""
    code, _, stderr = edgelalm("run", "clip.wav", "--ctc-weight", weight)
    assert one_error_line(code, stderr) == (
        f"edgelalm: error: Invalid value for '--ctc-weight': must be a number from 0 to 1, got {float(weight):g}"
    )


def test_an_unknown_compressor_is_worded_plainly():
    line = one_error_line(*edgelalm("export", "--compressor", "avgg")[::2])
    assert "'avgg' is not one of" in line and "Value error" not in line


def test_a_flag_takes_no_value():
    code, _, stderr = edgelalm("doctor", "--json", "true")  # (run takes it as a second audio file)
    assert code == 2 and "Traceback" not in stderr


def test_out_in_a_folder_that_takes_no_new_folders(tiny_checkpoint):
    line = one_error_line(*edgelalm("export", "--model", tiny_checkpoint, "--out", "/proc/edgelalm-x")[::2])
    assert line == "edgelalm: error: cannot write to /proc: it does not accept new folders"


def test_scaffold_refuses_in_one_line_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    line = one_error_line(*edgelalm("scaffold", "--out", blocker / "ckpt")[::2])
    assert line == f"edgelalm: error: cannot write to {blocker}: it is not a folder"
    (tmp_path / "taken").mkdir()
    line = one_error_line(*edgelalm("scaffold", "--out", tmp_path / "taken")[::2])
    assert line == f"edgelalm: error: {tmp_path / 'taken'} already exists"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "taken"] and blocker.read_text() == "mine"


def test_scaffold_writes_no_progress_bar_into_a_log(tmp_path):
    """transformers' shard bar wrote carriage returns into a non-terminal stderr."""
    code, stdout, stderr = edgelalm("scaffold", "--out", tmp_path / "ckpt")
    assert code == 0 and stdout.strip() == str(tmp_path / "ckpt") and "\r" not in stderr, stderr


def test_a_full_disk_during_scaffold_is_one_line_and_leaves_nothing(tmp_path):
    """The checkpoint is written beside --out and renamed into place: a write that fails halfway
    (ENOSPC raised after the first files) leaves no half checkpoint."""
    script = (
        "import errno, sys; import edgelalm.scaffold as scaffold\n"
        "def half(out, *args, **kwargs):\n"
        "    (out / 'config.json').write_text('{}')\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "scaffold.preset_checkpoint = half\n"
        "sys.argv = ['edgelalm', 'scaffold', '--out', 'ckpt']\n"
        "from edgelalm.cli import main; main()\n"
    )
    done = _python(script, tmp_path)
    line = one_error_line(done.returncode, done.stderr)
    assert line.startswith("edgelalm: error: writing the checkpoint ckpt failed: No space left on device (")
    assert line.endswith(" MB free there)") and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command", [("export",), ("scaffold", "--out", "x"), ("bench", "--quick"), ("finetune", "--data", "x")]
)
def test_a_runtime_only_install_names_the_extra_to_install(command, tmp_path):
    code, _, stderr = edgelalm(*command, python_args=("-c", _RUNTIME_ONLY), cwd=tmp_path)
    line = one_error_line(code, stderr)
    assert f"edgelalm {command[0]} needs the export extra" in line and "pip install 'edgelalm[export]'" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        ("MemoryError()", "out of memory (a memory or address-space limit? ulimit -v, a container's)"),
        ('RuntimeError("can\'t start new thread")', "cannot start a thread (a limit on processes or threads?"),
        (
            'ImportError("libtorch_cpu.so: failed to map segment from shared object", name="torch")',
            "cannot load torch: libtorch_cpu.so: failed to map segment from shared object",
        ),
    ],
    ids=["memory", "threads", "import"],
)
def test_what_a_machine_s_limits_raise_is_one_line(tmp_path, raised, said):
    """`prlimit --as` (an address-space limit), a container's pids limit: MemoryError, a thread that
    cannot start (the signal watcher's, as the command starts) and a library that cannot be mapped
    were tracebacks."""
    script = (
        "import sys; import edgelalm.cli as cli\n"
        f"def app(**kwargs): raise {raised}\n"
        "cli.app = app\n"
        "sys.argv = ['edgelalm', 'doctor']\n"
        "cli.main()\n"
    )
    done = _python(script, tmp_path)
    line = one_error_line(done.returncode, done.stderr)
    assert line.startswith(f"edgelalm: error: {said}"), line


def test_export_from_a_deleted_folder_or_without_docstrings_is_one_line(tmp_path):
    """A working folder deleted under the shell: torch's MKL then failed to load (`Intel oneMKL FATAL
    ERROR`, exit 2), whatever --out said. Docstrings stripped (python -OO): transformers' 81-line
    traceback, as it builds its output classes from their docstrings."""
    gone = tmp_path / "gone"
    gone.mkdir()
    command = [sys.executable, "-m", "edgelalm.cli", "export", "--out", str(tmp_path / "bundle")]
    done = subprocess.run(
        ["sh", "-c", 'cd "$1" && rmdir "$1" && shift && exec "$@"', "sh", str(gone), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one_error_line(done.returncode, done.stderr) == (
        "edgelalm: error: the current folder no longer exists (deleted?): cd to one that does"
    )
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONOPTIMIZE": "2"}
    )
    line = one_error_line(done.returncode, done.stderr)
    assert "cannot run with docstrings stripped (python -OO, PYTHONOPTIMIZE=2)" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_inspect_names_the_compressor_by_its_label(tiny_bundles):
    _, unseg, _ = edgelalm("inspect", tiny_bundles("unseg", 1))
    _, avg3, _ = edgelalm("inspect", tiny_bundles("avg", 3))
    assert "compressor.onnx  unseg: rate depends on the audio" in unseg and "K=" not in unseg
    assert "compressor.onnx  avg3: 8.33 audio tokens/s" in avg3


def test_more_threads_than_cpus_are_refused_in_one_line(tmp_path):
    """100000 threads once held 16 GB in thread stacks before the first token."""
    cpus = os.cpu_count()
    for command in (("doctor",), ("bench", "--quick", "--out", tmp_path / "b"), ("finetune", "--data", "x")):
        line = one_error_line(*edgelalm(*command, "--threads", cpus + 1)[::2])
        assert line == f"edgelalm: error: threads must be from 1 to this machine's {cpus} logical CPUs, got {cpus + 1}"
    assert list(tmp_path.iterdir()) == []


def test_check_threads_defaults_to_the_usable_cores_and_takes_up_to_the_cpus(monkeypatch):
    from edgelalm.errors import EdgelalmError
    from edgelalm.runtime import llama_backend

    monkeypatch.setattr(llama_backend.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(llama_backend, "usable_cores", lambda: 3)
    assert llama_backend.check_threads(None) == 3
    assert llama_backend.check_threads(8) == 8
    for threads in (0, 9):
        with pytest.raises(EdgelalmError, match=f"from 1 to this machine's 8 logical CPUs, got {threads}"):
            llama_backend.check_threads(threads)


@pytest.mark.parametrize("out", ["/proc/edgelalm-bench", "a-file", "a-file/deeper"])
def test_bench_out_that_cannot_be_a_folder_is_one_line(tmp_path, out):
    (tmp_path / "a-file").write_text("mine")
    line = one_error_line(*edgelalm("bench", "--quick", "--out", out, cwd=tmp_path)[::2])
    expected = {
        "/proc/edgelalm-bench": "cannot write to /proc: it does not accept new folders",
        "a-file": f"{tmp_path / 'a-file'} is a file, not a folder",
        "a-file/deeper": f"cannot write to {tmp_path / 'a-file'}: it is not a folder",
    }[out]
    assert line == f"edgelalm: error: {expected}" and (tmp_path / "a-file").read_text() == "mine"


@pytest.mark.parametrize("seconds", ["nan", "0", "-1", "inf", "1e9", "0.01"])
def test_bench_clip_lengths_are_checked_before_any_work(tmp_path, seconds):
    """Each failed only after the bench's exports, in numpy's words (`Unable to allocate 116. TiB`),
    or the runtime's (0.01: `the clip is too short (10 ms)`)."""
    line = one_error_line(*edgelalm("bench", "--model", "tiny", "--seconds", seconds, "--out", tmp_path / "b")[::2])
    assert "--seconds takes clip lengths from 0.05 s (the encoder needs 30 ms) up to 3600 s" in line
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        # "not an audio file: .": in a batch, which argument was it?
        (["run", "", "b.wav"], "edgelalm run's argument 1 is empty (an unset variable?)"),
        (["run", "a.wav", "--json", ""], "edgelalm run's argument 3 is empty"),  # --json takes no value
        (["run", "a.wav", "--bundle", ""], "--bundle is empty; give it a value"),  # was the working folder
        (["export", "--model=", "--compressor", "none"], "--model is empty; give it a value"),
        # it exported into the working folder, and left the shell in a deleted one
        (["export", "--compressor", "none", "--out", "", "--force"], "--out is empty; give it a value"),
        (["run", "a.wav", "--prompt", ""], "--prompt is empty; leave it out for the bundle's transcription prompt"),
        # an argument before it that starts with - is no option: "- is empty", "-1 is empty"
        (["run", "-", ""], "edgelalm run's argument 2 is empty"),
        (["run", "a.wav", "--seed", "-1", ""], "edgelalm run's argument 4 is empty"),
        # an option's value that ends in = is no empty option ("--note is empty")
        (["run", "--prompt", "--note=", "a.wav", "--bundle", "no-bundle"], "bundle folder not found: no-bundle"),
    ],
)
def test_an_empty_argument_is_refused_naming_it(tmp_path, arguments, said):
    code, stdout, stderr = edgelalm(*arguments, cwd=tmp_path)
    assert said in one_error_line(code, stderr) and stdout == ""
    assert list(tmp_path.iterdir()) == []


# -- doctor --------------------------------------------------------------------------------


def test_doctor_describes_this_machine():
    code, stdout, stderr = edgelalm("doctor")
    assert code == 0 and stderr == "", stderr
    fields = dict(line.split(None, 1) if " " in line else (line, "") for line in stdout.splitlines())
    import llama_cpp
    import onnxruntime

    assert onnxruntime.__version__ in stdout and llama_cpp.__version__ in stdout
    assert llama_cpp.llama_print_system_info().decode().strip() in stdout
    assert decide_extra_buffers("auto").reason in stdout
    assert fields["threads"].startswith(str(len(os.sched_getaffinity(0))))
    assert "torch 2" in stdout  # the export extra is installed here


def test_doctor_reports_every_package_export_needs(monkeypatch):
    """doctor's list lacked safetensors and onnxscript: it reported a whole export extra where
    export refused for a missing onnxscript."""
    import importlib.util

    from edgelalm import cli
    from edgelalm.doctor import machine_report
    from edgelalm.errors import EdgelalmError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name, *a)
    )
    with pytest.raises(EdgelalmError, match=r"\(onnxscript missing\)"):
        cli._require_export_extra("export")
    report = machine_report(None, "auto")["export_extra"]
    assert report["onnxscript"] is None and report["safetensors"] and report["torch"]


def test_doctor_runs_a_bundle_in_a_child_process(tiny_bundles):
    bundle = tiny_bundles("avg", 3)
    code, stdout, stderr = edgelalm("doctor", "--bundle", bundle, "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["bundle"]["ok"] is True
    assert report["machine"]["llama_cpp"]["extra_buffers"]["enabled"] == decide_extra_buffers("auto").enabled
    canary = report["bundle"]["canary"]
    assert report["bundle"]["files_verified"] == 5
    assert report["bundle"]["compressor"] == "avg3" and list(canary["compressors_run"]) == ["avg3"]  # "avg" before
    assert canary["audio_tokens"] == 25 and canary["generated_tokens"] == 8  # 3 s at avg3; 8 whatever they are
    assert canary["weight_buffers"] and canary["timings_ms"]["prefill"] > 0
    code, stdout, _ = edgelalm("doctor", "--bundle", bundle)
    assert code == 0 and "canary run        ok in a child process" in stdout
    assert f"bundle            {bundle}: {report['bundle']['model']}, avg3, q8_0; 5 files match" in stdout


def test_doctor_with_a_broken_bundle_reports_the_machine_then_one_error(tiny_bundles, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundles("avg", 3), broken)
    with (broken / "decoder.gguf").open("ab") as stream:
        stream.write(b"\0")
    code, stdout, stderr = edgelalm("doctor", "--bundle", broken)
    assert "llama.cpp " in stdout  # the machine report came first
    assert "decoder.gguf does not match" in one_error_line(code, stderr)
    # With --json the machine's report was lost: stdout stayed empty.
    code, stdout, stderr = edgelalm("doctor", "--bundle", broken, "--json")
    line = one_error_line(code, stderr)
    report = json.loads(stdout)
    assert report["machine"]["llama_cpp"]
    assert report["bundle"] == {"ok": False, "run": True, "error": line.split(": ", 2)[2]}


def test_forcing_extra_buffers_on_where_they_crash_warns(monkeypatch, capsys):
    """`--llama-extra-buffers on` on a machine (faked: the AMX Xeon) where auto would turn them off."""
    from pathlib import Path

    from edgelalm import cli
    from edgelalm.runtime import llama_backend

    cpus = Path(__file__).parent / "data" / "cpus"
    for name, expect_warning in (("intel-xeon-amx", True), ("amd-epyc", False)):
        system_info = (cpus / f"{name}.system_info").read_text().strip()
        flags = llama_backend.cpu_flags((cpus / f"{name}.cpuinfo").read_text())
        monkeypatch.setattr(llama_backend, "llama_system_info", lambda info=system_info: info)
        monkeypatch.setattr(llama_backend, "cpu_flags", lambda cpuinfo=None, known=flags: known)
        cli._warn_if_extra_buffers_crash("on")
        cli._warn_if_extra_buffers_crash("auto")
        err = capsys.readouterr().err
        if expect_warning:
            assert (
                err.startswith("edgelalm: warning: --llama-extra-buffers on: llama.cpp's AMX buffer crashes")
                and err.count("\n") == 1
            )
        else:
            assert err == ""


# A command in place of the CLI's app: it signals its own process, as `kill` or Ctrl-C would.
_SIGNALLED_APP = """
import os, signal, sys
from pathlib import Path
import edgelalm.cli as cli

def app(**_):
    try:
        signal.raise_signal(signal.SIGTERM)  # this thread: os.kill may reach another, later
        raise AssertionError("the signal did not interrupt")
    except KeyboardInterrupt as interrupt:
        {unwinding}

cli.app = app
cli.main()
"""


_DEFERRED_APP = """
import os, signal
from pathlib import Path
import edgelalm.cli as cli
from edgelalm.interrupts import deferred

def app(**_):
    with deferred():
        signal.raise_signal(signal.SIGTERM)  # this thread: os.kill may reach another, later
        Path("block").write_text("finished")
    Path("after").write_text("the interrupt did not come")

cli.app = app
cli.main()
"""


def _python(script: str, cwd, preexec_fn=None) -> subprocess.CompletedProcess:
    """`script` in a fresh Python in `cwd` (a replaced app, a replaced writer: things the CLI cannot be told)."""
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=120, preexec_fn=preexec_fn
    )


def _run_signalled_app(unwinding: str, tmp_path, preexec_fn=None):
    return _python(_SIGNALLED_APP.format(unwinding=unwinding.replace("\n", "\n        ")), tmp_path, preexec_fn)


def test_an_interrupt_a_library_rewraps_still_exits_130(tmp_path):
    """torch's exporter can turn the KeyboardInterrupt into an error of its own (seen as a traceback
    and status 1): once signalled, any error on the way out is the interrupt."""
    done = _run_signalled_app(
        'raise RuntimeError("Failed to export the model. See the stack trace above.") from interrupt', tmp_path
    )
    assert (done.returncode, done.stderr) == (130, "edgelalm: error: interrupted\n")


def test_ctrl_c_while_the_cli_loads_is_one_line(tmp_path):
    """The console script imported edgelalm.cli (typer, rich: about 0.2 s) before any handler was in
    place: Ctrl-C then was a traceback."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"edgelalm": "edgelalm.__main__:main"}
    script = (
        "import sys\n"
        "class Interrupting:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'edgelalm.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupting())\n"
        "from edgelalm.__main__ import main\n"
        "main()\n"
    )
    done = _python(script, tmp_path)
    assert (done.returncode, done.stderr) == (130, "edgelalm: error: interrupted\n")
    # python -m edgelalm is the same CLI.
    done = subprocess.run([sys.executable, "-m", "edgelalm", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("edgelalm ")


def test_a_second_signal_cannot_cut_the_cleanup_short(tmp_path):
    """A scheduler's repeated SIGTERM or an impatient second Ctrl-C arrives while the unwinding
    removes the half-written output: it is ignored, the cleanup finishes, the exit is 130."""
    done = _run_signalled_app(
        'signal.raise_signal(signal.SIGINT)\nPath("cleaned").write_text("yes")\nraise interrupt', tmp_path
    )
    assert (done.returncode, done.stderr) == (130, "edgelalm: error: interrupted\n")
    assert (tmp_path / "cleaned").read_text() == "yes"


def test_an_interrupt_waits_for_a_deferred_block_to_end(tmp_path):
    """Inside torch's exporter an interrupt raised mid-trace aborted the process (SIGABRT, staging
    folder left): there the signal waits for the export call to return, then unwinds as usual."""
    done = _python(_DEFERRED_APP, tmp_path)
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines() == [
        "edgelalm: interrupting once the current export call returns (a third signal stops it at once, leaving "
        "its hidden staging folder for the next export to remove)",
        "edgelalm: error: interrupted",
    ]
    assert (tmp_path / "block").read_text() == "finished" and not (tmp_path / "after").exists()


# An output folder committed by atomic_folder, the process signalling itself during one of the
# commit's renames (`at`: the first of them, or the last).
_COMMITTING_APP = """
import signal
from pathlib import Path
import edgelalm.cli as cli
from edgelalm.files import atomic_folder

renames = []
rename = Path.rename

def signalling_rename(self, target):
    result = rename(self, target)
    renames.append(target)
    if len(renames) == {at}:
        signal.raise_signal(signal.SIGINT)
    return result

def app(**_):
    Path.rename = signalling_rename
    with atomic_folder(Path("bundle"), force=True, marker="manifest.json") as staging:
        (staging / "manifest.json").write_text("new")
    Path("after").write_text("the interrupt did not come")

cli.app = app
cli.main()
"""


@pytest.mark.parametrize("replacing", [False, True])
def test_an_interrupt_while_an_output_is_committed_waits_for_it_and_says_it_is_kept(tmp_path, replacing):
    """After the last rename it said "interrupted" of a whole folder (a re-run then refused it as
    existing); between --force's two, the user's older folder was left only in a hidden one."""
    if replacing:
        (tmp_path / "bundle").mkdir()
        (tmp_path / "bundle" / "manifest.json").write_text("old")
    done = _python(_COMMITTING_APP.format(at=1), tmp_path)
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines() == [
        "edgelalm: interrupting once the output folder is in place",
        f"edgelalm: error: interrupted; {tmp_path / 'bundle'} had been written whole, and is kept",
    ]
    assert (tmp_path / "bundle" / "manifest.json").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle"]


def test_an_interrupt_ends_the_process_while_stdout_waits_for_a_reader(tmp_path):
    """A pipe whose reader does not read (a pager at its prompt): the interrupt's unwinding flushed
    what stdout still buffered and waited with it, for as long as the reader did (for ever)."""
    import fcntl

    script = (
        "import os, signal, threading\n"
        "import edgelalm.cli as cli\n"
        "def app(**_):\n"
        "    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "    for _ in range(100_000):\n"
        "        cli._say('x' * 100)\n"
        "cli.app = app\n"
        "cli.main()\n"
    )
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=environment
    )
    fcntl.fcntl(child.stdout, 1031, 4096)  # F_SETPIPE_SZ: a small pipe, full at once; never read
    try:
        code = child.wait(timeout=30)
    finally:
        child.kill()
    assert code == 130
    assert child.stderr.read().decode().endswith("edgelalm: error: interrupted\n")


def test_an_interrupted_run_leaves_a_shared_pipe_blocking(tmp_path):
    """The unwinding made stdout's pipe non-blocking, and the pipe's mode is every writer's: the
    next command writing into the same pipe (`{ edgelalm run ...; next; } | tee log`) had its
    output cut."""
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import os, signal\n"
        "import edgelalm.cli as cli\n"
        "def app(**_):\n"
        "    cli._say('part of an answer', end='')\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "cli.app = app\n"
        "cli.main()\n"
    )
    after = "import os; print(os.get_blocking(1))"
    group = (
        f"{{ {shlex.quote(sys.executable)} {script}; {shlex.quote(sys.executable)} -c {shlex.quote(after)}; }} | cat"
    )
    done = subprocess.run(["bash", "-c", group], capture_output=True, text=True, timeout=120)
    assert done.stdout == "part of an answer\nTrue\n", done.stderr


def test_a_closed_terminal_unwinds_as_ctrl_c_does(tmp_path):
    """SIGHUP (a terminal closed, an ssh session dropped) ended the process at once: a bundle's
    staging folder, a subtitle file's scratch and the saved copy of standard input stayed."""
    unwinding = 'Path("cleaned").write_text("yes")\nraise interrupt'.replace("\n", "\n        ")
    script = _SIGNALLED_APP.replace("signal.SIGTERM", "signal.SIGHUP").format(unwinding=unwinding)
    done = _python(script, tmp_path)
    assert (done.returncode, done.stderr) == (130, "edgelalm: error: interrupted\n")
    assert (tmp_path / "cleaned").read_text() == "yes"


@pytest.mark.parametrize("ending", ["raise KeyboardInterrupt", "raise EdgelalmError('the window failed')"])
def test_an_answer_cut_short_has_its_line_ended_before_the_error(tmp_path, ending):
    """`...i'll call you lateredgelalm: error: interrupted` on a terminal: the half answer's line
    was left open, and the next line read from stdout was glued to it."""
    script = (
        "import edgelalm.cli as cli\n"
        "from edgelalm.errors import EdgelalmError\n"
        "def app(**_):\n"
        "    cli._say('half an answer', end='')\n"
        f"    {ending}\n"
        "cli.app = app\n"
        "cli.main()\n"
    )
    done = _python(script, tmp_path)
    assert done.stdout == "half an answer\n" and done.stderr.count("\n") == 1, (done.stdout, done.stderr)


def test_a_signal_the_parent_ignores_stays_ignored(tmp_path):
    """A background job of a shell ignores SIGTERM/SIGINT from its parent: the CLI keeps that."""
    done = _run_signalled_app("pass", tmp_path, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    assert done.returncode != 130 and "the signal did not interrupt" in done.stderr


def test_a_signal_after_the_command_cannot_change_its_status(tmp_path):
    """Python's shutdown puts its signal handlers back to the default: a Ctrl-C there ended a
    complete `inspect` by SIGINT (status -2, no line; 9 of 24 tries at the right moment). Once the
    status is chosen the program ignores them. main() alone, which tests run in their own process,
    leaves them handled: ignored, they stayed ignored in that process and the children it starts."""
    script = (
        "import signal, sys\n"
        "from edgelalm import interrupts\n"
        "from edgelalm.cli import main, program\n"
        "sys.argv = ['edgelalm', '--version']\n"
        "for entry in (main, program):\n"
        "    try:\n"
        "        entry()\n"
        "    except SystemExit as done:\n"
        "        assert not done.code, done.code\n"
        "    handled = signal.getsignal(signal.SIGINT)\n"
        "    said = {interrupts._on_signal: 'handled', signal.SIG_IGN: 'ignored'}.get(handled, repr(handled))\n"
        "    print(entry.__name__, said)\n"
        "signal.raise_signal(signal.SIGINT)  # as a Ctrl-C during Python's shutdown\n"
        "signal.raise_signal(signal.SIGTERM)\n"
        "print('status kept')\n"
    )
    done = _python(script, tmp_path)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stdout.splitlines() if not line.startswith("edgelalm ")]
    assert said == ["main handled", "program ignored", "status kept"], done.stdout


_PROGRESS_SCRIPT = """
import time
from edgelalm.progress import Bar, Steps

steps = Steps(total=1)
with steps.step("a step") as detail:
    detail("half way")
    time.sleep(0.3)
with Bar(2, "a bar") as bar:
    for number in range(2):
        bar.update(advance=1)
        bar.note(f"note {number}")
print("finished", flush=True)
"""


def test_progress_on_a_terminal_finishes():
    """On a terminal rich puts a proxy in sys.stderr while a spinner or a bar runs; progress that
    wrote to sys.stderr as it found it wrote to the proxy, which prints through the console
    again: every export, dataset and bench hung at its first step (tests never gave stderr a
    terminal)."""
    import pty
    import threading

    leader, follower = pty.openpty()
    seen = bytearray()

    def drain() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(leader, 4096):
                seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROGRESS_SCRIPT], stdout=follower, stderr=follower, stdin=follower, timeout=60
        )
    finally:
        os.close(follower)
    reader.join(timeout=10)
    os.close(leader)
    assert done.returncode == 0 and b"finished" in seen and b"note 1" in seen, bytes(seen)


@pytest.mark.parametrize("terminal", [True, False])
def test_a_bar_turned_off_writes_nothing(terminal):
    """progress=False (finetune's, the datasets'): one Bar that shows nothing, neither the bar on a
    terminal nor its notes in a log, where each caller had its own stand-in."""
    from rich.console import Console

    from edgelalm.progress import Bar

    written = {}
    for shown in (True, False):
        console = Console(file=io.StringIO(), force_terminal=terminal, width=80)
        with Bar(2, "a bar", console=console, shown=shown) as bar:
            bar.update(advance=1, status="half")
            bar.note("a note")
        written[shown] = console.file.getvalue()
    assert "a note" in written[True] and ("a bar" in written[True]) == terminal
    assert written[False] == ""
