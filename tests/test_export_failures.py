"""Export interrupted at each step, onto a full disk, onto a read-only file system: exit 130 or one
line, and nothing left behind (issue 18). Real signals to a real `edgelalm export` process; real
small file systems (tmpfs, mounted by the test where the machine lets it)."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.slow

STEPS = 8


def _default_sigint() -> None:
    """In the child, before exec: SIGINT handled by default and not blocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def export_command(tiny_checkpoint: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "edgelalm.cli", "export", "--model", str(tiny_checkpoint), "--compressor", "none",
            "--out", str(out)]  # fmt: skip


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize("after_step", range(STEPS))
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_export_exits_130_and_leaves_nothing(tiny_checkpoint, tmp_path, after_step, signal_number):
    """The signal arrives once `after_step` steps have finished (0: while the first runs)."""
    out = tmp_path / "out" / "bundle"
    # A shell's background job ignores SIGINT and its children inherit that: give the export the
    # default disposition a user's terminal gives it, however pytest itself was started.
    process = subprocess.Popen(
        export_command(tiny_checkpoint, out),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    seen = []
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if sum(" done (" in seen_line for seen_line in seen) >= after_step:
            break
    process.send_signal(signal_number)
    rest = process.communicate(timeout=300)[1]
    stderr = "".join(seen) + rest
    if process.returncode == 0:  # the signal came after the last step's work: a whole bundle
        assert after_step == STEPS - 1 and (out / "manifest.json").is_file()
        return
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "edgelalm: error: interrupted" and "Traceback" not in stderr
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 700 KB tmpfs: the tiny bundle needs about 1.2 MB."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()

    def mount(*options: str) -> Path:
        size = ",".join(["size=700k", *options])
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mount_point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        return mount_point

    yield mount
    subprocess.run(["umount", str(mount_point)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(tiny_checkpoint, small_tmpfs):
    disk = small_tmpfs()
    done = subprocess.run(export_command(tiny_checkpoint, disk / "bundle"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last.startswith(f"edgelalm: error: writing the bundle {disk / 'bundle'} failed: ") and "MB free there" in last
    )
    assert leftovers(disk) == []


def test_the_quantizer_on_a_full_disk_says_why(tiny_checkpoint, small_tmpfs, tmp_path):
    """llama.cpp's quantizer says why it failed only in its log, which edgelalm keeps quiet: the
    line was `could not quantize the decoder to q8_0 (status 1)`."""
    from edgelalm.errors import EdgelalmError
    from edgelalm.export.checkpoint import open_checkpoint
    from edgelalm.export.decoder import quantize_gguf, write_decoder

    source = tmp_path / "decoder.f16.gguf"
    write_decoder(open_checkpoint(tiny_checkpoint), source, "f16", None)
    disk = small_tmpfs()
    # Filled to 40 KB short of full: the q8_0 file is about half of the f16 one's 320 KB.
    (disk / "filler").write_bytes(bytes(shutil.disk_usage(disk).free - 40_000))
    with pytest.raises(EdgelalmError) as caught:
        quantize_gguf(source, disk / "decoder.gguf", "q8_0")
    line = str(caught.value)
    assert line.startswith("llama.cpp could not quantize the decoder to q8_0: ") and "MB free there)" in line
    assert "status" not in line and "\n" not in line
    assert sorted(path.name for path in disk.iterdir()) == ["filler"]


def test_a_read_only_file_system_is_one_line(tiny_checkpoint, small_tmpfs):
    disk = small_tmpfs("ro")
    done = subprocess.run(export_command(tiny_checkpoint, disk / "bundle"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [f"edgelalm: error: cannot write to {disk}: Read-only file system"]


def test_a_torch_too_old_to_trace_the_graphs_is_one_line_and_leaves_nothing(tiny_checkpoint, tmp_path):
    """torch 2.7.1 fails deep inside torch.export (a compressor's frames) with pages of traceback;
    export says which torch it needs before it writes anything."""
    out = tmp_path / "bundle"
    script = (
        "import sys, torch; torch.__version__ = '2.7.1+cu126'; from edgelalm.cli import main; "
        "sys.argv = ['edgelalm', *sys.argv[1:]]; main()"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, *export_command(tiny_checkpoint, out)[3:]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        "edgelalm: error: export needs torch >= 2.11 to trace its graphs; this is torch 2.7.1+cu126 "
        "(pip install 'torch>=2.11')"
    ], completed.stderr
    assert leftovers(tmp_path) == []


def test_the_torch_floor_is_the_one_pyproject_declares():
    import tomllib

    from edgelalm.export.encoder import MIN_TORCH_VERSION, check_torch_version

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    floors = [spec for spec in pyproject["project"]["optional-dependencies"]["export"] if spec.startswith("torch")]
    assert floors == [f"torch>={'.'.join(map(str, MIN_TORCH_VERSION))}"]
    check_torch_version("2.11.0+cu130")
    check_torch_version("2.13.0+cpu")
    check_torch_version("3.0")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_progress_that_cannot_be_written_does_not_stop_the_export(tiny_checkpoint, tmp_path):
    """stderr full (`2>/dev/full`) or its reader gone (`2>&1 | head -1`): the export stopped at its
    first progress line, exit 1, blaming the bundle's disk ("writing the bundle ... failed: No
    space left on device")."""
    out = tmp_path / "bundle"
    with open("/dev/full", "w") as full:
        done = subprocess.run(export_command(tiny_checkpoint, out), stdout=subprocess.PIPE, stderr=full, timeout=600)
    assert done.returncode == 0 and (out / "manifest.json").is_file()
    assert done.stdout.decode().strip() == str(out)


def test_an_export_with_standard_output_closed_is_refused_before_its_work(tiny_checkpoint, tmp_path):
    """`>&-`: the whole bundle was written, then `standard output is closed`, exit 1."""
    command = " ".join(map(shlex.quote, export_command(tiny_checkpoint, tmp_path / "bundle"))) + " >&-"
    done = subprocess.run(command, shell=True, stderr=subprocess.PIPE, text=True, timeout=600)
    assert done.returncode == 1 and done.stderr == (
        "edgelalm: error: standard output is closed: there is nowhere to write the result\n"
    )
    assert not (tmp_path / "bundle").exists()
