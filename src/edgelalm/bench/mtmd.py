"""llama.cpp's own audio path, measured beside edgelalm: the peer a user would pick instead.

llama.cpp runs Qwen2-Audio with two GGUFs: the text model (here the very decoder.gguf of
edgelalm's bundle, so both sides share weights, quant and llama.cpp build) and an "mmproj" GGUF
holding the audio tower and projector (projector type qwen2a), which llama.cpp's converter writes:
`convert_hf_to_gguf.py CHECKPOINT --mmproj --outtype f16`, taken with its gguf-py from the sdist of
the installed llama-cpp-python (`llama_cpp_source`; the gguf package on PyPI lags the converter)
and run as a subprocess. Its multimodal library, libmtmd, ships compiled in llama-cpp-python
(`llama_cpp.mtmd_cpp`), and `measure_mtmd` drives it the way llama.cpp's mtmd-cli does:
`mtmd_tokenize` the prompt with the clip at the media marker (mtmd computes the log-mel and adds
<|audio_bos|> / <|audio_eos|> around the audio itself), then each chunk in order: text through
`mtmd_helper_eval_chunk_single`, audio as `mtmd_encode_chunk` (timed alone: the encoder) then
`mtmd_helper_decode_image_chunk` (the decoder's prefill of its embeddings), which is what
`mtmd_helper_eval_chunk_single` does for a media chunk, with a clock in between. Then greedy
decoding in the same context. No prefix cache: every run evaluates its whole prompt.

mtmd pads every clip to whole 30 s windows (750 tokens each for Qwen2-Audio) and runs the tower on
3000 mel frames; on a tower with fewer positions (a 10 s window) it aborts in a GGML_ASSERT. The
worker's crash becomes the row's error, named by its signal and ggml's assertion, and
`explain_failure` adds what mtmd needs and what the model has. Imports nothing heavy at module
level (the reference worker must not load llama.cpp).
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from edgelalm.bench.llama_cpp_source import installed_version, llama_cpp_source
from edgelalm.constants import AUDIO_BOS, AUDIO_EOS, Device, ExtraBuffers
from edgelalm.errors import EdgelalmError
from edgelalm.isolation import run_child
from edgelalm.manifest import PromptInfo, read_manifest

MTMD_RUNTIME = "llama.cpp mtmd"
# The mmproj's float type, as issue 16's side-by-side run used (the converter keeps norms and
# biases in f32 and the convolutions in f16 whatever is asked).
MMPROJ_TYPE = "f16"
CONVERTER = "convert_hf_to_gguf.py"
CONVERTER_PATHS = (CONVERTER, "conversion", "gguf-py")
CONVERT_TIMEOUT_S = 3600
# What mtmd.cpp puts around a qwen2a projector's audio (so the prompt text must not carry them).
AUDIO_BEGIN = AUDIO_BOS
AUDIO_END = AUDIO_EOS
# mtmd's Whisper preprocessing: whole 30 s windows, 3000 mel frames -> 1500 encoder positions
# (50 a second).
MTMD_WINDOW_SECONDS = 30
MTMD_ENCODER_POSITIONS = 1500
POSITIONS_PER_SECOND = MTMD_ENCODER_POSITIONS // MTMD_WINDOW_SECONDS


def mmproj_path(out_dir: Path) -> Path:
    """Where a bench's --out keeps the converted mmproj."""
    return out_dir / "mtmd" / f"mmproj-{MMPROJ_TYPE}.gguf"


def ensure_mmproj(model_dir: Path, out_dir: Path, cache: Path | None = None) -> Path:
    """out_dir/mtmd/mmproj-f16.gguf: the checkpoint's audio tower and projector as llama.cpp's
    converter writes them (pinned to the installed llama-cpp-python), reused while the checkpoint
    folder and llama-cpp-python release are the same. EdgelalmError (one line, the converter's
    own last words) when it cannot be written."""
    target = mmproj_path(out_dir)
    folder = target.parent
    record = folder / "mmproj.json"
    wanted = {"source": str(model_dir.resolve()), "llama_cpp_python": installed_version(), "type": MMPROJ_TYPE}
    if target.is_file() and record.is_file():
        try:
            if json.loads(record.read_text()) == wanted:
                return target
        except (json.JSONDecodeError, OSError):
            pass  # unreadable: convert again
    root = llama_cpp_source(CONVERTER_PATHS, cache)
    folder.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    partial = folder / f".mmproj-{MMPROJ_TYPE}.partial.gguf"
    command = [sys.executable, str(root / CONVERTER), str(model_dir), "--mmproj", "--outfile", str(partial)]
    result = run_child([*command, "--outtype", MMPROJ_TYPE], timeout=CONVERT_TIMEOUT_S)
    if not result.ok or not partial.is_file():
        partial.unlink(missing_ok=True)
        reason = result.failure() + _converter_hint(result.stderr, model_dir)
        raise EdgelalmError(f"llama.cpp's converter could not write the mmproj: it {reason}")
    partial.replace(target)
    record.write_text(json.dumps(wanted) + "\n")
    return target


def _converter_hint(stderr: str, model_dir: Path) -> str:
    """Why, where the converter's own words leave it unclear."""
    if "Can not map tensor 'audio_tower.conv" not in stderr:
        return ""
    layers = _audio_config(model_dir).get("encoder_layers")
    return (
        f" (its tensor map numbers audio_tower.convN like the tower's layers, so a tower of {layers} layers "
        "has no conv2)"
        if isinstance(layers, int) and layers < 3
        else ""
    )


def _audio_config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    audio = config.get("audio_config") if isinstance(config, dict) else None
    return audio if isinstance(audio, dict) else {}


def explain_failure(error: str, model_dir: Path) -> str:
    """A failed mtmd row's error, with what mtmd needs and what the model has where ggml's
    assertion is about the audio tower's positions."""
    if "position_embeddings" not in error:
        return error
    positions = _audio_config(model_dir).get("max_source_positions")
    if not isinstance(positions, int) or positions >= MTMD_ENCODER_POSITIONS:
        return error
    return (
        f"{error} (mtmd pads every clip to {MTMD_WINDOW_SECONDS} s, {MTMD_ENCODER_POSITIONS} encoder positions; "
        f"this model's audio tower has {positions}, a {positions / POSITIONS_PER_SECOND:g} s window)"
    )


def mtmd_prompt(prompt: PromptInfo, marker: str) -> str:
    """The bundle's prompt (the default one, in its chat template) around mtmd's media marker,
    without the audio's begin and end tokens, which mtmd adds itself: the same text tokens as
    edgelalm's run."""
    if not prompt.before_audio.endswith(AUDIO_BEGIN) or not prompt.after_audio.startswith(AUDIO_END):
        raise EdgelalmError(
            f"the bundle's prompt does not wrap the audio in {AUDIO_BEGIN} ... {AUDIO_END}, as mtmd does for "
            "Qwen2-Audio"
        )
    return (
        prompt.before_audio.removesuffix(AUDIO_BEGIN)
        + marker
        + prompt.after_audio.removeprefix(AUDIO_END)
        + prompt.default_prompt
        + prompt.after_prompt
    )


# mtmd's log lines at ggml's ERROR level (4), kept for a failure's message; of the rest only the
# size of the compute buffer it reserves for the tower (its activations), for memory reports.
_errors: deque[str] = deque(maxlen=5)
_COMPUTE_BUFFER = re.compile(r"compute buffer size\s*=\s*([0-9.]+) MiB")
_compute_buffer_mib: list[float] = []


def _last_error() -> str:
    return f": {_errors[-1].strip()}" if _errors else ""


def measure_mtmd(
    bundle: Path,
    mmproj: Path,
    seconds: float,
    repeats: int,
    max_tokens: int,
    threads: int | None,
    device: Device = "cpu",
    llama_extra_buffers: ExtraBuffers = "auto",
) -> dict[str, Any]:
    """llama.cpp's decoder (the bundle's decoder.gguf) with mtmd and `mmproj` on a synthetic clip:
    a warm-up run, then `repeats` runs; the stages of `edgelalm.bench.measure.STAGES` (features:
    mtmd_tokenize, which computes the log-mel; compressor: none), the audio and prompt tokens as
    mtmd counted them, decode rate and peak RSS."""
    from edgelalm.runtime.llama_backend import import_llama_cpp

    llama_cpp = import_llama_cpp()
    from llama_cpp import mtmd_cpp

    from edgelalm.bench.measure import STAGES, kv_cache_mb, summarize, synthetic_clip
    from edgelalm.runtime.decoder import LlamaContext, LlamaModel
    from edgelalm.runtime.llama_backend import check_threads
    from edgelalm.runtime.memory import peak_rss_mb

    manifest = read_manifest(bundle, verify_files=False)
    if manifest.decoder is None:
        raise EdgelalmError(f"bundle {bundle} has no decoder")
    on_gpu = device == "cuda"
    if on_gpu and not llama_cpp.llama_supports_gpu_offload():
        raise EdgelalmError("--target cuda: llama-cpp-python was built without GPU offload")
    threads = check_threads(threads)

    @llama_cpp.llama_log_callback
    def keep_errors(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode(errors="replace")
        if level == 4:
            _errors.append(line)
        elif found := _COMPUTE_BUFFER.search(line):
            _compute_buffer_mib.append(float(found.group(1)))

    _compute_buffer_mib.clear()
    started = time.perf_counter()
    model = LlamaModel(
        bundle / manifest.decoder.file,
        n_threads=threads,
        n_gpu_layers=999 if on_gpu else 0,
        extra_buffers=llama_extra_buffers,
    )
    mtmd_cpp.mtmd_helper_log_set(keep_errors, ctypes.c_void_p())
    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu = on_gpu
    params.n_threads = threads
    params.print_timings = False
    media = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), model.model, params)
    if not media:
        raise EdgelalmError(f"mtmd could not load {mmproj}{_last_error()}")
    if not mtmd_cpp.mtmd_support_audio(media):
        raise EdgelalmError(f"{mmproj} has no audio encoder")
    # mtmd reserves the tower's compute buffer while it loads (its warm-up); read before any llama.cpp
    # context, whose own buffers log the same words where mtmd's log setting reaches llama.cpp's too.
    encoder_compute_buffer_mib = max(_compute_buffer_mib, default=None)
    load_ms = (time.perf_counter() - started) * 1000

    text = mtmd_prompt(manifest.prompt, mtmd_cpp.mtmd_default_marker().decode()).encode()
    text_input = mtmd_cpp.mtmd_input_text(text, len(text), False, True)
    audio = synthetic_clip(seconds)
    samples = audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    no_callback = mtmd_cpp.mtmd_helper_post_decode_callback()

    def tokenize() -> Any:
        """The prompt's chunks with the clip's log-mel (the caller frees them)."""
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        bitmap = mtmd_cpp.mtmd_bitmap_init_from_audio(len(audio), samples)
        try:
            bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
            status = mtmd_cpp.mtmd_tokenize(media, chunks, ctypes.byref(text_input), bitmaps, 1)
        finally:
            mtmd_cpp.mtmd_bitmap_free(bitmap)
        if status != 0:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            raise EdgelalmError(f"mtmd could not tokenize the prompt with the clip (status {status}){_last_error()}")
        return chunks

    chunks = tokenize()
    n_pos = mtmd_cpp.mtmd_helper_get_n_pos(chunks)
    mtmd_tokens = mtmd_cpp.mtmd_helper_get_n_tokens(chunks)
    mtmd_cpp.mtmd_input_chunks_free(chunks)
    if n_pos + max_tokens > model.n_ctx_train:
        raise EdgelalmError(
            f"mtmd needs {n_pos} positions for a {seconds:g} s clip, plus {max_tokens} answer tokens: more than the "
            f"decoder's context of {model.n_ctx_train}"
        )
    context = LlamaContext(model, n_pos + max_tokens)

    def one_run() -> tuple[dict[str, float], int, int, int, int]:
        timings = dict.fromkeys(STAGES, 0.0)
        context.reset()
        run_started = time.perf_counter()
        chunks = tokenize()
        timings["features"] = (time.perf_counter() - run_started) * 1000
        audio_tokens = text_tokens = audio_chunks = n_past = 0
        try:
            count = mtmd_cpp.mtmd_input_chunks_size(chunks)
            for index in range(count):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, index)
                n_tokens = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
                new_n_past = llama_cpp.llama_pos(n_past)
                if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    lap = time.perf_counter()
                    status = mtmd_cpp.mtmd_helper_eval_chunk_single(
                        media, context.context, chunk, n_past, 0, context.n_batch, index == count - 1,
                        ctypes.byref(new_n_past),
                    )  # fmt: skip
                    timings["prefill"] += (time.perf_counter() - lap) * 1000
                    text_tokens += n_tokens
                else:
                    lap = time.perf_counter()
                    status = mtmd_cpp.mtmd_encode_chunk(media, chunk)
                    timings["encoder"] += (time.perf_counter() - lap) * 1000
                    if status != 0:
                        raise EdgelalmError(f"mtmd could not encode the audio (status {status}){_last_error()}")
                    lap = time.perf_counter()
                    status = mtmd_cpp.mtmd_helper_decode_image_chunk(
                        media, context.context, chunk, mtmd_cpp.mtmd_get_output_embd(media), n_past, 0,
                        context.n_batch, ctypes.byref(new_n_past), no_callback, None,
                    )  # fmt: skip
                    timings["prefill"] += (time.perf_counter() - lap) * 1000
                    audio_tokens += n_tokens
                    audio_chunks += 1
                if status != 0:
                    raise EdgelalmError(f"llama.cpp could not evaluate mtmd's chunk {index} (status {status})")
                n_past = new_n_past.value
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
        context.n_past = n_past
        generated = 0
        first_token_at = None
        decode_started = time.perf_counter()
        for _ in context.generate(max_tokens, stop_at_end=False):  # max_tokens, as edgelalm's rows
            if first_token_at is None:
                first_token_at = decode_started = time.perf_counter()
            generated += 1
        finished = time.perf_counter()
        timings["decode"] = (finished - decode_started) * 1000
        timings["time_to_first_token"] = ((first_token_at or finished) - run_started) * 1000
        timings["total"] = (finished - run_started) * 1000
        return timings, audio_tokens, text_tokens, audio_chunks, generated

    one_run()  # warm-up
    runs = [one_run() for _ in range(repeats)]
    _, audio_tokens, text_tokens, audio_chunks, generated = runs[-1]
    rates = [(run[4] - 1) / (run[0]["decode"] / 1000) if run[4] > 1 and run[0]["decode"] > 0 else 0.0 for run in runs]
    result = {
        "load_ms": load_ms,
        "audio_tokens": audio_tokens,
        "prompt_tokens": text_tokens,
        "generated_tokens": generated,
        "audio_chunks": audio_chunks,
        "mtmd_tokens": mtmd_tokens,
        "timings_ms": {stage: summarize([run[0][stage] for run in runs]) for stage in STAGES},
        "decode_tokens_per_second": summarize(rates),
        "kv_cache_mb": kv_cache_mb(manifest.decoder, n_pos + generated),
        "peak_rss_mb": peak_rss_mb(),
        "weight_buffers": model.weight_buffers,
        "mmproj": f"{mmproj.name} ({mmproj.stat().st_size / 1e6:.1f} MB)",
        # What mtmd reserved for the tower's activations (MiB, as its log says), if it said.
        "encoder_compute_buffer_mib": encoder_compute_buffer_mib,
    }
    context.close()
    mtmd_cpp.mtmd_free(media)
    model.close()
    return result
