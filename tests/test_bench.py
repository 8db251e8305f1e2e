"""`edgelalm bench --quick`: the output is complete and sane (no timing is asserted: machines
here are shared and noisy; speed targets live in the benchmark's own results)."""

import csv
import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from edgelalm.bench import QUICK, kv_cache_mb, parse_compressor, synthetic_clip
from edgelalm.compression import CompressorSpec
from edgelalm.manifest import DecoderInfo

# Minutes of export, training or benchmarking: `pytest -m 'not slow'` skips them locally; CI runs all.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    completed = subprocess.run(
        # --quick's own clip lengths and compressors, given again in other spellings, are no conflict.
        [
            sys.executable,
            "-m",
            "edgelalm.cli",
            "bench",
            "--quick",
            "--seconds",
            "3,12.0",
            "--compressors",
            "none,avg03",
            "--out",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return out, json.loads((out / "results.json").read_text()), completed.stdout


def test_every_point_is_measured(quick_results):
    out, results, _ = quick_results
    rows = results["rows"]
    expected = {(r, c, s) for r in ("edgelalm", "pytorch") for c in ("none", "avg3") for s in (3.0, 12.0)}
    assert {(row["runtime"], row["compressor"], row["seconds"]) for row in rows} == expected
    for row in rows:
        assert "error" not in row, row
        for stage in ("features", "encoder", "compressor", "prefill", "decode", "time_to_first_token", "total"):
            timing = row["timings_ms"][stage]
            assert timing["min"] <= timing["median"] <= timing["max"]
            assert math.isfinite(timing["median"]) and timing["median"] >= 0
        assert row["timings_ms"]["total"]["median"] >= row["timings_ms"]["time_to_first_token"]["median"] > 0
        assert row["peak_rss_mb"] > 10
        assert row["decode_tokens_per_second"]["median"] > 0
        # every runtime decodes --max-tokens (--quick's), past the end of an answer (a trained model
        # ends its answer to a synthetic clip at once: 0 tokens and 0.0 tokens/s, against the reference's all)
        assert row["generated_tokens"] == QUICK["max_tokens"], row


def test_token_counts_follow_the_compressor(quick_results):
    _, results, _ = quick_results
    tokens = {(row["runtime"], row["compressor"], row["seconds"]): row["audio_tokens"] for row in results["rows"]}
    for runtime in ("edgelalm", "pytorch"):
        assert tokens[(runtime, "none", 3.0)] == 75  # 25 per second
        assert tokens[(runtime, "none", 12.0)] == 300  # two windows (10 s + 2 s) of the tiny model
        assert tokens[(runtime, "avg3", 3.0)] == 25
        assert tokens[(runtime, "avg3", 12.0)] == math.ceil(250 / 3) + math.ceil(50 / 3)


def test_outputs_are_written(quick_results):
    out, results, stdout = quick_results
    assert (out / "bench.png").stat().st_size > 10_000
    with (out / "results.csv").open() as stream:
        assert len(list(csv.DictReader(stream))) == len(results["rows"])
    assert (out / "summary.md").read_text().count("\n") == len(results["rows"]) + 2
    ratios = results["ratios"]["per_length"]["12.0"]
    assert ratios["prefill_none_over_avg3"] > 0 and ratios["peak_rss_edgelalm_over_pytorch_none"] > 0
    assert '"per_length"' in stdout


def run_benchmark_script(script, out, *extra):
    """benchmarks/<script> on the tiny preset, one short run per point, as a user would call it."""
    command = [sys.executable, f"benchmarks/{script}", "--model", "tiny", "--seconds", "3", "--repeats", "1"]
    command += ["--max-tokens", "4", "--out", str(out), *extra]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_helpers():
    assert parse_compressor("avg3") == CompressorSpec("avg", 3)
    assert parse_compressor("unseg") == CompressorSpec("unseg")
    clip = synthetic_clip(2.0)
    assert clip.shape == (32000,) and clip.dtype.name == "float32" and 0 < abs(clip).max() <= 1
    # Qwen2-Audio-7B's decoder: 32 layers, 32 KV heads of 128: 0.5 MiB per token at f16.
    decoder = DecoderInfo(
        file="decoder.gguf",
        format="gguf",
        architecture="qwen2",
        quant="q8_0",
        layers=32,
        hidden_size=4096,
        attention_heads=32,
        kv_heads=32,
        context_length=8192,
        vocab_size=156032,
        tied_embeddings=False,
        adapter=None,
    )
    assert kv_cache_mb(decoder, 1000) == pytest.approx(500.0)


def test_bundles_share_the_encoder_and_decoder(quick_results):
    """Random weights carry no adapter: every compressor's bundle reuses the first one's encoder
    (a copy) and decoder (a hard link)."""
    out, _, _ = quick_results
    none, avg3 = out / "bundles" / "none-q8_0", out / "bundles" / "avg3-q8_0"
    assert (avg3 / "decoder.gguf").samefile(none / "decoder.gguf")
    assert (avg3 / "encoder.onnx.data").read_bytes() == (none / "encoder.onnx.data").read_bytes()
    assert (avg3 / "compressor.onnx").read_bytes() != (none / "compressor.onnx").read_bytes()


def test_encoder_precision_benchmark(tmp_path):
    """benchmarks/encoder_precision.py: an int8-encoder bundle beside the fp32 one (decoder shared),
    both measured, and a table whose ratios are computed against fp32."""
    run_benchmark_script("encoder_precision.py", tmp_path)
    results = json.loads((tmp_path / "encoder-precision.json").read_text())
    assert [row["precision"] for row in results["rows"]] == ["fp32", "int8"]
    fp32, int8 = (tmp_path / "bundles" / "none-q8_0"), (tmp_path / "bundles" / "none-q8_0-encoder-int8")
    assert (int8 / "decoder.gguf").samefile(fp32 / "decoder.gguf")
    assert json.loads((int8 / "manifest.json").read_text())["encoder"]["precision"] == "int8"
    assert results["probe_max_abs_diff"]["fp32"] < 1e-4 < results["probe_max_abs_diff"]["int8"]
    assert results["encoder_bytes"]["int8"] < results["encoder_bytes"]["fp32"]
    table = (tmp_path / "encoder-precision.md").read_text().splitlines()
    assert len(table) == 4 and table[2].split("|")[6].strip() == "1.00"


def test_gpu_target_without_cuda_refuses_before_exporting(tmp_path):
    """--target cuda where onnxruntime, llama.cpp or torch cannot reach a GPU: one line naming
    what is missing, before any model or bundle is written (minutes, for a 7B preset)."""
    import llama_cpp
    import onnxruntime
    import torch

    runtime_has_cuda = (
        "CUDAExecutionProvider" in onnxruntime.get_available_providers() and llama_cpp.llama_supports_gpu_offload()
    )
    if runtime_has_cuda and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU benchmark runs here instead")
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "bench", "--quick", "--target", "cuda", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgelalm: error: ") and "cuda" in lines[0], completed.stderr
    assert (
        ("onnxruntime" in lines[0] or "llama-cpp-python" in lines[0]) if not runtime_has_cuda else "torch" in lines[0]
    )
    assert not out.exists()


def test_a_worker_killed_by_a_signal_is_reported_as_such(tmp_path, monkeypatch):
    """Every worker crashing (as llama.cpp did on AMX CPUs) is one error naming the signal, not a
    report of empty rows and null ratios; a partial failure goes on and names the failed points."""
    from edgelalm import bench
    from edgelalm.errors import EdgelalmError
    from edgelalm.isolation import ChildResult

    monkeypatch.setattr(bench.measure, "run_json_job", lambda module, job, timeout=None: ChildResult(-11, "", ""))
    plan = bench.BenchPlan(
        model="tiny",
        out_dir=tmp_path,
        compressors=("none",),
        seconds=(3.0,),
        repeats=1,
        max_tokens=4,
        reference=False,
        mtmd=False,  # its rows are tests/test_mtmd_peer.py's
    )
    with pytest.raises(
        EdgelalmError, match=r"no measurement succeeded; the first: the edgelalm worker crashed \(SIGSEGV\)"
    ):
        bench.run_bench(plan)
    assert not (tmp_path / "results.json").exists()


def test_a_partial_failure_is_named_on_stderr(capsys):
    from edgelalm.bench import check_rows

    rows = [
        {"runtime": "edgelalm", "compressor": "none", "seconds": 3.0, "timings_ms": {}},
        {"runtime": "edgelalm", "compressor": "avg3", "seconds": 3.0, "error": "the edgelalm worker crashed (SIGSEGV)"},
    ]
    check_rows(rows)
    assert capsys.readouterr().err == "edgelalm: warning: edgelalm avg3 3 s: the edgelalm worker crashed (SIGSEGV)\n"


def test_extra_buffers_benchmark(tmp_path):
    """benchmarks/llama_extra_buffers.py: both settings per quant, each in its own worker, and a
    table of off/on ratios; on a machine where `on` crashes llama.cpp, that row says so."""
    from edgelalm.runtime.llama_backend import decide_extra_buffers

    run_benchmark_script("llama_extra_buffers.py", tmp_path, "--quants", "q8_0,q4_0")
    results = json.loads((tmp_path / "extra-buffers.json").read_text())
    assert [(r["quant"], r["setting"]) for r in results["rows"]] == [
        ("q8_0", "on"),
        ("q8_0", "off"),
        ("q4_0", "on"),
        ("q4_0", "off"),
    ]
    for row in results["rows"]:
        if row["setting"] == "on" and not decide_extra_buffers("auto").enabled and "error" in row:
            assert row["error"].startswith("the edgelalm worker crashed (")  # llama.cpp's AMX buffer, as reported
            continue
        assert "error" not in row, row
        assert row["weight_buffers"]
        if row["setting"] == "off":
            assert set(row["weight_buffers"]) <= {"CPU", "CPU_Mapped"}
    table = (tmp_path / "extra-buffers.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| q8_0 | 3 |") and table[3].startswith("| q4_0 | 3 |")


def test_the_reference_worker_loads_neither_onnxruntime_nor_llama_cpp():
    """The PyTorch side's peak RSS is the memory ratio's denominator: its worker must measure
    only what it runs (importing the runtime to read the peak once inflated it)."""
    code = "import sys, edgelalm.bench; print(sorted(m for m in ('onnxruntime', 'llama_cpp') if m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.stdout.strip() == "[]", completed.stderr
