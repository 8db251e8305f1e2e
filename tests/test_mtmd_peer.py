"""llama.cpp's own audio path (mtmd) as a peer in `edgelalm bench` (issue 16): llama.cpp's converter
writes the mmproj, mtmd runs a clip end to end in a worker beside edgelalm's, and where mtmd cannot
run a model its rows say why in one line while the bench goes on. No timing is asserted.

Tiny models: llama.cpp's converter numbers the tower's convolutions like its layers (conv2 needs 3
or more), and mtmd pads every clip to 30 s, so the runnable model here is a tiny checkpoint with 3
tower layers and a 30 s window. The converter comes from the installed llama-cpp-python's sdist,
downloaded with pip once into build/test-data (as tests/published_layout.py's tokenizer vectors).
"""

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from published_layout import VECTOR_CACHE

from edgelalm import bench, scaffold
from edgelalm.bench.llama_cpp_source import CACHE_VARIABLE
from edgelalm.bench.mtmd import MTMD_RUNTIME, ensure_mmproj

MTMD_TOKENS_PER_WINDOW = 750  # Qwen2-Audio: 30 s -> 1500 tower positions -> 750 after pooling


@pytest.fixture(scope="module", autouse=True)
def source_cache():
    """llama.cpp's converter, from the sdist cached with the tests' other llama.cpp files."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_VARIABLE, str(VECTOR_CACHE))
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def tiny_tower_checkpoint(folder: Path, window_seconds: int) -> Path:
    tokenizer = scaffold.train_tokenizer(scaffold.SAMPLE_TEXTS, vocab_size=600)
    config = scaffold.model_config(
        tokenizer, **{**scaffold.PRESETS["tiny"], "window_seconds": window_seconds, "encoder_layers": 3}
    )
    return scaffold.write_checkpoint(folder, config, tokenizer)


@pytest.fixture(scope="module")
def window_30s(tmp_path_factory) -> Path:
    return tiny_tower_checkpoint(tmp_path_factory.mktemp("mtmd") / "tower3-30s", 30)


@pytest.fixture(scope="module")
def bench_30s(window_30s, tmp_path_factory):
    """`edgelalm bench` on the 30 s model: edgelalm none and llama.cpp mtmd at 3 s and 35 s (two of
    mtmd's 30 s windows), no reference."""
    out = tmp_path_factory.mktemp("bench-30s")
    plan = bench.BenchPlan(
        model=str(window_30s),
        out_dir=out,
        compressors=("none",),
        seconds=(3.0, 35.0),
        repeats=1,
        max_tokens=4,
        threads=1,
        reference=False,
    )
    return out, bench.run_bench(plan)


def test_llama_cpps_converter_writes_the_mmproj(window_30s, tmp_path):
    from gguf import GGUFReader

    path = ensure_mmproj(window_30s, tmp_path)
    reader = GGUFReader(path)

    def value(key):
        field = reader.fields[key]
        return field.contents()

    assert value("general.architecture") == "clip"
    assert value("clip.projector_type") == "qwen2a"
    assert value("clip.has_audio_encoder") is True
    names = {tensor.name for tensor in reader.tensors}
    assert {"a.conv1d.1.weight", "a.conv1d.2.weight", "a.position_embd.weight"} <= names
    assert sum(name.startswith("a.blk.") and name.endswith(".attn_q.weight") for name in names) == 3
    modified = path.stat().st_mtime_ns
    assert ensure_mmproj(window_30s, tmp_path) == path and path.stat().st_mtime_ns == modified  # reused


def test_mtmd_runs_a_clip_end_to_end_beside_edgelalm(bench_30s, window_30s):
    out, results = bench_30s
    rows = {(row["runtime"], row["seconds"]): row for row in results["rows"]}
    assert set(rows) == {(runtime, s) for runtime in ("edgelalm", MTMD_RUNTIME) for s in (3.0, 35.0)}
    for seconds in (3.0, 35.0):
        mtmd, edgelalm = rows[(MTMD_RUNTIME, seconds)], rows[("edgelalm", seconds)]
        assert "error" not in mtmd and "error" not in edgelalm, (mtmd, edgelalm)
        assert mtmd["compressor"] == "none"
        windows = math.ceil(seconds / 30)
        assert mtmd["audio_chunks"] == windows
        # mtmd's own count: every clip padded to whole 30 s windows, whatever its length
        assert mtmd["audio_tokens"] == MTMD_TOKENS_PER_WINDOW * windows
        assert mtmd["audio_tokens"] + mtmd["prompt_tokens"] == mtmd["mtmd_tokens"]
        # the same text around the audio (mtmd adds <|audio_bos|>/<|audio_eos|> itself)
        assert mtmd["prompt_tokens"] == edgelalm["prompt_tokens"]
        assert edgelalm["audio_tokens"] == 25 * seconds  # edgelalm: the clip's own length
        timings = {stage: mtmd["timings_ms"][stage]["median"] for stage in bench.STAGES}
        assert all(math.isfinite(value) and value >= 0 for value in timings.values())
        assert timings["encoder"] > 0 and timings["prefill"] > 0 and timings["compressor"] == 0
        first_token = timings["features"] + timings["encoder"] + timings["prefill"]
        assert first_token <= timings["time_to_first_token"] <= timings["total"]
        assert mtmd["generated_tokens"] == edgelalm["generated_tokens"] == 4 and mtmd["peak_rss_mb"] > 10
        assert mtmd["kv_cache_mb"] > 0 and mtmd["mmproj"].startswith("mmproj-f16.gguf")
        # what mtmd's log says it reserved for the tower's activations: part of its peak
        assert 0 < mtmd["encoder_compute_buffer_mib"] < mtmd["peak_rss_mb"]
        ratios = results["ratios"]["per_length"][str(seconds)]
        assert ratios["ttft_mtmd_over_edgelalm_none"] > 0 and ratios["peak_rss_edgelalm_none_over_mtmd"] > 0
        assert ratios["encoder_edgelalm_none_over_mtmd"] > 0
    summary = (out / "summary.md").read_text().splitlines()
    assert sum(line.startswith(f"| {MTMD_RUNTIME} | none | ") for line in summary) == 2
    assert (out / "bench.png").stat().st_size > 10_000
    assert json.loads((out / "results.json").read_text())["mmproj_type"] == "f16"


def test_the_audio_token_count_is_mtmds_own(bench_30s, window_30s):
    """The row's audio tokens are what mtmd itself reports for the clip's audio chunk."""
    import ctypes

    from llama_cpp import mtmd_cpp

    from edgelalm.runtime.decoder import LlamaModel

    out, results = bench_30s
    row = next(r for r in results["rows"] if r["runtime"] == MTMD_RUNTIME and r["seconds"] == 3.0)
    model = LlamaModel(out / "bundles" / "none-q8_0" / "decoder.gguf", n_threads=1)
    params = mtmd_cpp.mtmd_context_params_default()
    params.n_threads, params.warmup, params.print_timings = 1, False, False
    media = mtmd_cpp.mtmd_init_from_file(str(out / "mtmd" / "mmproj-f16.gguf").encode(), model.model, params)
    audio = bench.synthetic_clip(3.0)
    bitmap = mtmd_cpp.mtmd_bitmap_init_from_audio(len(audio), audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    text = mtmd_cpp.mtmd_default_marker()
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    try:
        status = mtmd_cpp.mtmd_tokenize(
            media,
            chunks,
            ctypes.byref(mtmd_cpp.mtmd_input_text(text, len(text), False, True)),
            (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap),
            1,
        )
        assert status == 0
        kinds = [
            mtmd_cpp.mtmd_input_chunk_get_type(mtmd_cpp.mtmd_input_chunks_get(chunks, i))
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks))
        ]
        audio_chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, kinds.index(mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_AUDIO))
        assert kinds.count(mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_AUDIO) == 1
        assert mtmd_cpp.mtmd_input_chunk_get_n_tokens(audio_chunk) == row["audio_tokens"]
    finally:
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)
        mtmd_cpp.mtmd_free(media)
        model.close()


def test_mtmd_aborting_on_a_10s_window_is_a_row_that_says_why(bench_30s, tmp_path):
    """mtmd pads every clip to 30 s; on a tower with a 10 s window ggml aborts the worker. The row
    names the signal, the assertion and the window."""
    out, _ = bench_30s
    window_10s = tiny_tower_checkpoint(tmp_path / "tower3-10s", 10)
    mmproj = ensure_mmproj(window_10s, tmp_path)  # llama.cpp's converter does not mind the window
    plan = bench.BenchPlan(model=str(window_10s), out_dir=tmp_path, repeats=1, max_tokens=4, threads=1)
    result = bench.measure_in_subprocess(MTMD_RUNTIME, out / "bundles" / "none-q8_0", "none", 3.0, plan, mmproj=mmproj)
    error = bench.explain_failure(result["error"], window_10s)
    assert error == (
        "the llama.cpp mtmd worker crashed (SIGABRT): whisper-enc.cpp:6: GGML_ASSERT(model.position_embeddings->ne[1] "
        ">= n_pos) failed (mtmd pads every clip to 30 s, 1500 encoder positions; this model's audio tower has 500, a "
        "10 s window)"
    )


def test_the_tiny_checkpoint_gets_rows_that_say_why_and_the_bench_goes_on(tiny_checkpoint, tmp_path, capsys):
    """The 10 s-window tiny checkpoint (2 tower layers): llama.cpp's converter refuses it before mtmd
    would; every mtmd row says so in one line, edgelalm's rows are measured, the results written."""
    plan = bench.BenchPlan(
        model=str(tiny_checkpoint),
        out_dir=tmp_path,
        compressors=("none",),
        seconds=(3.0,),
        repeats=1,
        max_tokens=4,
        threads=1,
        reference=False,
    )
    results = bench.run_bench(plan)
    edgelalm, mtmd = results["rows"]
    assert edgelalm["runtime"] == "edgelalm" and "error" not in edgelalm
    assert mtmd["runtime"] == MTMD_RUNTIME
    assert mtmd["error"] == (
        "llama.cpp's converter could not write the mmproj: it exited with status 1: ValueError: Can not map tensor "
        "'audio_tower.conv2.bias' (its tensor map numbers audio_tower.convN like the tower's layers, so a tower of 2 "
        "layers has no conv2)"
    )
    assert f"edgelalm: warning: {MTMD_RUNTIME} none 3 s: llama.cpp's converter" in capsys.readouterr().err
    assert (tmp_path / "results.json").is_file() and not (tmp_path / "mtmd" / "mmproj-f16.gguf").exists()


def test_a_cache_that_is_a_file_is_one_line(tmp_path):
    """$EDGELALM_CACHE naming a file gave a NotADirectoryError traceback after the bench's export."""
    from edgelalm.bench.llama_cpp_source import llama_cpp_source
    from edgelalm.errors import EdgelalmError

    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    with pytest.raises(EdgelalmError, match=r"\$EDGELALM_CACHE.* failed: Not a directory"):
        llama_cpp_source(["convert_hf_to_gguf.py"], cache)
