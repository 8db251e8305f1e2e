"""`edgelalm bench` and `scaffold` against careless and hostile use (an audit of both): one line and
a non-zero exit before any work, outputs written whole or not at all, and a benchmark's own
bookkeeping kept out of what it measures."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from edgelalm.bench.measure import synthetic_clip
from edgelalm.bench.report import write_results
from edgelalm.constants import SAMPLING_RATE
from edgelalm.errors import EdgelalmError
from edgelalm.files import folder_lock, replaced_file


def edgelalm(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def one_error_line(completed: subprocess.CompletedProcess) -> str:
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgelalm: error: "), completed.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["--compressors", ""], 2, "--compressors is empty; give it a value"),  # as any option given empty
        (["--compressors", " , "], 1, "--compressors names no compressor"),
        (["--max-tokens", "1"], 2, "--max-tokens"),  # decode speed needs a token after the first
        (["--max-tokens", "1025"], 2, "--max-tokens"),  # the PyTorch reference ran 10^9 for days
        # --out was made before the model was looked for
        (["--model", "no/such/checkpoint"], 1, "--model no/such/checkpoint is neither a checkpoint folder"),
        # a folder of something else: --out was made (holding .lock) before config.json was missed
        (["--model", "."], 1, "--model . is a folder without config.json: no checkpoint, and no preset"),
        # --quick replaced them without a word
        (["--quick", "--seconds", "5,30"], 1, "--quick chooses --seconds itself: drop it, or drop --quick"),
        (["--quick", "--repeats", "3", "--model", "small"], 1, "--quick chooses --model, --repeats itself"),
        # what --quick sets anyway is no conflict: its own values, as parsed, are only refused when different
        (["--quick", "--seconds", "3,12", "--compressors", "none,avg03", "--seconds", "3,4"], 1, "--seconds itself"),
    ],
)
def test_a_bench_asked_for_nothing_measurable_is_refused_before_any_work(tmp_path, args, code, said):
    out = tmp_path / "out"
    completed = edgelalm("bench", "--model", "tiny", "--no-mtmd", "--out", str(out), *args)
    assert completed.returncode == code
    assert said in one_error_line(completed)
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [("summary.md", "# my own notes\n"), ("results.json", '{"rows": []}'), ("bench.png", "")],
)
def test_result_files_no_bench_wrote_are_not_replaced(tmp_path, name, content):
    """A user's own summary.md (or results.json) in --out was replaced after the run, unasked."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / name).write_text(content)
    completed = edgelalm("bench", "--quick", "--out", str(out))
    assert f"{out} holds {name} and no results.json of an edgelalm bench" in one_error_line(completed)
    assert [path.name for path in out.iterdir()] == [name] and (out / name).read_text() == content


@pytest.mark.parametrize("cache", ["notes.txt", "notes.txt/deeper"])
def test_a_cache_that_cannot_be_a_folder_is_refused_before_any_work(tmp_path, cache):
    """The bench measured every edgelalm row, then warned that mtmd's could not run, exit 0."""
    (tmp_path / "notes.txt").write_text("mine")
    env = {**os.environ, "EDGELALM_CACHE": str(tmp_path / cache)}
    completed = edgelalm("bench", "--model", "tiny", "--seconds", "3", "--out", str(tmp_path / "out"), env=env)
    said = f"$EDGELALM_CACHE {tmp_path / cache}: {tmp_path / 'notes.txt'} is a file, not a folder"
    assert one_error_line(completed) == f"edgelalm: error: {said}"
    assert not (tmp_path / "out").exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_an_earlier_bench_s_results_may_be_replaced(tmp_path):
    from edgelalm.bench.report import check_results_folder

    results = {"machine": {"target": "cpu"}, "model": "tiny", "quant": "q8_0", "rows": [], "ratios": {}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "summary.md").write_text("| runtime |\n")
    check_results_folder(tmp_path)  # no error
    check_results_folder(tmp_path / "not-yet")


def test_a_second_bench_into_the_same_folder_is_refused(tmp_path):
    """Two at once read each other's half-written model and printed each other's rows."""
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out, "edgelalm bench"):
        completed = edgelalm("bench", "--quick", "--out", str(out))
    assert completed.returncode == 1
    assert one_error_line(completed) == (
        f"edgelalm: error: {out} is in use by another edgelalm bench (wait for it, or name another folder)"
    )
    assert sorted(path.name for path in out.iterdir()) == [".lock"]
    with folder_lock(out, "edgelalm bench"):  # let go when its holder ended
        pass


def test_an_interrupted_preset_leaves_no_folder_a_later_bench_would_take_for_a_checkpoint(tmp_path, monkeypatch):
    """A Ctrl-C while the preset was written left an empty config.json, and every later bench into
    that folder failed on it."""
    from edgelalm import scaffold

    def interrupted(out_dir: Path, preset: str, *, seed: int = 0) -> Path:
        (out_dir / "config.json").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(scaffold, "preset_checkpoint", interrupted)
    folder = tmp_path / "models" / "tiny"
    with pytest.raises(KeyboardInterrupt):
        scaffold.write_preset_checkpoint(folder, "tiny")
    assert not folder.exists() and not (tmp_path / "models").exists()


def test_a_full_disk_met_by_safetensors_is_one_line(tmp_path, monkeypatch):
    """safetensors' Rust writer raises its own error, not an OSError, when the disk fills."""
    from safetensors import SafetensorError

    from edgelalm import scaffold

    def full(out_dir: Path, preset: str, *, seed: int = 0) -> Path:
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(scaffold, "preset_checkpoint", full)
    with pytest.raises(EdgelalmError, match=r"^writing the checkpoint .* failed: Error while serializing"):
        scaffold.write_preset_checkpoint(tmp_path / "checkpoint", "tiny")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a" * 300, "sc_\udce9"])
def test_an_output_name_the_system_or_the_tokenizer_refuses_is_one_line(tmp_path, name):
    out = os.fsencode(tmp_path) + b"/" + os.fsencode(name)
    completed = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "scaffold", "--out", out], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 1
    line = one_error_line(completed)
    assert "File name too long" in line or "not valid UTF-8" in line
    assert list(tmp_path.iterdir()) == []


def test_results_are_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("earlier run")
    with pytest.raises(RuntimeError), replaced_file(target) as scratch:
        scratch.write_text("half of this run")
        raise RuntimeError("interrupted")
    assert target.read_text() == "earlier run" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with replaced_file(target) as scratch:
        scratch.write_text("this run")
    assert target.read_text() == "this run" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_results_that_cannot_be_written_are_one_line(tmp_path):
    (tmp_path / "results.json").mkdir()  # in the way: a folder of that name
    results = {"rows": [], "ratios": {}}
    with pytest.raises(EdgelalmError, match=r"^writing the results in .* failed: Is a directory"):
        write_results(results, tmp_path)


@pytest.mark.parametrize("seconds", [0.5, 16.384, 40.0])
def test_the_synthetic_clip_made_block_by_block_is_the_whole_formula(seconds):
    """Made whole in float64, a 600 s clip took 0.5 GB, which the peak RSS of the runtime measured
    in the same process counted; a block at a time it is the same audio."""
    rng = np.random.default_rng(0)
    n = int(round(seconds * SAMPLING_RATE))
    times = np.arange(n) / SAMPLING_RATE
    phase = 2 * np.pi * np.cumsum(140 + 40 * np.sin(2 * np.pi * 0.3 * times)) / SAMPLING_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    whole = 0.2 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * times) ** 2) * voiced + 0.01 * rng.standard_normal(n)
    clip = synthetic_clip(seconds)
    assert clip.dtype == np.float32 and clip.shape == (n,)
    np.testing.assert_allclose(clip, whole, rtol=0, atol=1e-6)


def test_a_llama_cpp_that_cannot_load_is_one_line(tmp_path):
    """A wheel built for another machine raises RuntimeError('Failed to load shared library ...')
    at import: doctor, the command meant for such a machine, gave a traceback."""
    fake = tmp_path / "fake" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        textwrap.dedent(
            """\
            raise RuntimeError("Failed to load shared library 'libllama.so': libcuda.so.1: cannot open shared object")
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    reason = (
        "llama-cpp-python cannot be loaded: Failed to load shared library 'libllama.so': "
        "libcuda.so.1: cannot open shared object"
    )
    completed = edgelalm("doctor", env=env)
    assert completed.returncode == 1
    assert one_error_line(completed) == f"edgelalm: error: {reason}"
    # The rest of the machine is still described: that report is what such a machine's bug needs.
    assert "cpu features" in completed.stdout and "onnxruntime       1." in completed.stdout
    assert "llama-cpp-python  " in completed.stdout and reason in completed.stdout
    # --json printed nothing at all: now the report, with the part that failed, then the line.
    completed = edgelalm("doctor", "--json", "--bundle", str(tmp_path), env=env)
    assert completed.returncode == 1 and one_error_line(completed) == f"edgelalm: error: {reason}"
    report = json.loads(completed.stdout)
    assert report["machine"]["llama_cpp"] == {"error": reason} and report["machine"]["errors"] == [reason]
    assert report["machine"]["onnxruntime"]["providers"] and report["machine"]["threads"] >= 1
    assert report["bundle"] == {"ok": False, "run": False, "error": reason}  # not on a machine that cannot


def test_doctor_json_with_more_threads_than_the_machine_has_is_still_json():
    completed = edgelalm("doctor", "--json", "--threads", "100000")
    line = one_error_line(completed)
    assert "threads must be from 1 to this machine's" in line
    report = json.loads(completed.stdout)
    assert report["machine"]["threads"] == {"error": line.removeprefix("edgelalm: error: ")}
    assert report["machine"]["llama_cpp"]["system_info"] and report["bundle"] is None


def test_a_checkpoint_replaced_under_the_same_path_is_exported_again(tmp_path):
    """Bundles were reused by the checkpoint's path alone: a replaced checkpoint was measured
    through its predecessor's bundle."""
    from edgelalm.bench.plan import changed_since

    model = tmp_path / "model"
    (model / "nested").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "nested" / "weights.safetensors").write_bytes(b"")
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    os.utime(model / "config.json", (1_000, 1_000))
    os.utime(model / "nested" / "weights.safetensors", (1_000, 1_000))
    os.utime(manifest, (2_000, 2_000))
    assert not changed_since(model, manifest)
    os.utime(model / "nested" / "weights.safetensors", (3_000, 3_000))
    assert changed_since(model, manifest)


def test_a_bench_folder_inside_the_checkpoint_is_not_a_change_of_it(tmp_path):
    """`bench --out model/bench`: its own bundles and results, newer than each manifest, made every
    run export every bundle again."""
    from edgelalm.bench.plan import changed_since

    model = tmp_path / "model"
    (model / "bench" / "bundles" / "none-q8_0").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    manifest = model / "bench" / "bundles" / "none-q8_0" / "manifest.json"
    manifest.write_text("{}")
    (model / "bench" / "results.json").write_text("{}")
    os.utime(model / "config.json", (1_000, 1_000))
    os.utime(manifest, (2_000, 2_000))
    os.utime(model / "bench" / "results.json", (3_000, 3_000))
    assert changed_since(model, manifest)  # without the bench folder named: its results are newer
    assert not changed_since(model, manifest, model / "bench")
    os.utime(model / "config.json", (3_000, 3_000))
    assert changed_since(model, manifest, model / "bench")  # the checkpoint itself still counts


def test_a_presets_checkpoint_inside_the_bench_folder_still_counts(tmp_path):
    """A preset is written to out/models/<preset>, inside --out: skipping --out's files (meant for
    an --out inside the checkpoint) skipped every file of the preset, a rewritten one included."""
    from edgelalm.bench.plan import changed_since

    out = tmp_path / "out"
    model = out / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"")
    manifest = out / "bundles" / "none-q8_0" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    os.utime(manifest, (2_000, 2_000))
    os.utime(model / "model.safetensors", (1_000, 1_000))
    assert not changed_since(model, manifest, out)
    os.utime(model / "model.safetensors", (3_000, 3_000))
    assert changed_since(model, manifest, out)
    (model / "sub").mkdir()
    (model / "sub" / "loop").symlink_to(model / "sub" / "loop")  # resolve() raised RuntimeError on it
    assert changed_since(model, manifest, out)
