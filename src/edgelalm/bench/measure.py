"""Measurements, each in its own process (so each peak RSS is one configuration's): edgelalm's
runtime on a bundle, the PyTorch reference (transformers' model in fp32) on the checkpoint, and
llama.cpp's own audio path (mtmd, `edgelalm.bench.mtmd`) on the bundle's decoder with llama.cpp's
mmproj. The worker reads one JSON job from argv and prints one JSON result (`python -m edgelalm.bench`)."""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from pathlib import Path
from typing import Any

from edgelalm.bench.mtmd import MTMD_RUNTIME
from edgelalm.bench.plan import BenchPlan, parse_compressor
from edgelalm.constants import SAMPLING_RATE, Device, ExtraBuffers
from edgelalm.isolation import run_json_job
from edgelalm.manifest import DecoderInfo
from edgelalm.runtime.features import conv_positions, encoder_output_frames
from edgelalm.runtime.memory import GpuMemoryPeak, peak_rss_mb
from edgelalm.runtime.synthetic_audio import synthetic_clip

STAGES = ("features", "encoder", "compressor", "prefill", "decode", "time_to_first_token", "total")


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def kv_cache_mb(decoder: DecoderInfo, tokens: int, bytes_per_value: int = 2) -> float:
    """K and V for `tokens` positions in every layer (llama.cpp's default f16 cache)."""
    head_dim = decoder.hidden_size // decoder.attention_heads
    return 2 * decoder.layers * decoder.kv_heads * head_dim * tokens * bytes_per_value / 2**20


def measure_edgelalm(
    bundle: Path,
    seconds: float,
    repeats: int,
    max_tokens: int,
    threads: int | None,
    device: Device = "cpu",
    cpu_arena: bool = False,
    llama_extra_buffers: ExtraBuffers = "auto",
) -> dict[str, Any]:
    from edgelalm.runtime.pipeline import Runtime

    started = time.perf_counter()
    runtime = Runtime(
        bundle, threads=threads, device=device, cpu_arena=cpu_arena, llama_extra_buffers=llama_extra_buffers
    )
    load_ms = (time.perf_counter() - started) * 1000
    runtime.stop_at_end_of_answer = False  # max_tokens decoded, as the PyTorch reference does
    audio = synthetic_clip(seconds)
    # One prompt for the whole clip and greedy decoding, whatever the bundle advises: the bench
    # measures a clip's tokens, each token's decode and the first one's time, as mtmd's rows do.
    runs = [
        runtime.run(audio, max_tokens=max_tokens, windows="joined", beam_size=1, ctc_weight=0.0)
        for _ in range(repeats + 1)  # the first: a warm-up
    ][1:]
    last = runs[-1]
    tokens = last.prompt_tokens + last.audio_tokens + last.generated_tokens
    return {
        "load_ms": load_ms,
        "audio_tokens": last.audio_tokens,
        "prompt_tokens": last.prompt_tokens,
        "generated_tokens": last.generated_tokens,
        "timings_ms": {stage: summarize([run.timings_ms.get(stage, 0.0) for run in runs]) for stage in STAGES},
        "decode_tokens_per_second": summarize([run.decode_tokens_per_second for run in runs]),
        "kv_cache_mb": kv_cache_mb(runtime.decoder_info, tokens),
        "peak_rss_mb": peak_rss_mb(),
        "weight_buffers": runtime.decoder.weight_buffers,
        "encoder_providers": runtime.encoder.session.get_providers(),
    }


def measure_reference(
    model_dir: Path, label: str, seconds: float, repeats: int, max_tokens: int, threads: int | None, device: str = "cpu"
) -> dict[str, Any]:
    """transformers fp32, as a user would run it: the processor pads each window to the
    checkpoint's full window, the tower runs with its mask, then the same compressor in PyTorch,
    the projector, and greedy decoding with the KV cache; on the target's device, so that a GPU
    target compares GPU with GPU."""
    import torch
    from transformers import AutoProcessor
    from transformers.masking_utils import create_bidirectional_mask

    from edgelalm.export.checkpoint import load_model
    from edgelalm.export.compressor import build_compressor

    if threads:
        torch.set_num_threads(threads)
    on_gpu = device == "cuda"

    def elapsed_ms(since: float) -> float:
        if on_gpu:  # CUDA kernels run asynchronously: a stage ends when the GPU is done
            torch.cuda.synchronize()
        return (time.perf_counter() - since) * 1000

    started = time.perf_counter()
    model = load_model(model_dir, device)
    processor = AutoProcessor.from_pretrained(model_dir)
    load_ms = elapsed_ms(started)
    compressor = build_compressor(parse_compressor(label))
    extractor = processor.feature_extractor
    window = extractor.chunk_length * extractor.sampling_rate
    tower = model.model.audio_tower
    messages = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": "Transcribe the audio."}],
        }
    ]
    before, after = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False).split(
        processor.audio_token
    )
    embed = model.get_input_embeddings()
    text_before = embed(torch.tensor(processor.tokenizer(before, add_special_tokens=False).input_ids, device=device))
    text_after = embed(torch.tensor(processor.tokenizer(after, add_special_tokens=False).input_ids, device=device))
    audio = synthetic_clip(seconds)

    def one_run() -> tuple[dict[str, float], int, int]:
        timings = dict.fromkeys(STAGES, 0.0)
        run_started = time.perf_counter()
        tokens = []
        for start in range(0, len(audio), window):
            lap = time.perf_counter()
            features = extractor(
                audio[start : start + window],
                sampling_rate=SAMPLING_RATE,
                return_attention_mask=True,
                padding="max_length",
                return_tensors="pt",
            )
            features = features.to(device)
            timings["features"] += elapsed_ms(lap)
            lap = time.perf_counter()
            valid_mel = features["attention_mask"].sum(-1)
            mel_frames = int(valid_mel[0])
            conv_lengths = torch.tensor([conv_positions(mel_frames)], device=device)
            frame_lengths = [encoder_output_frames(mel_frames)]
            positions = features["input_features"].shape[-1] // 2
            mask_2d = (torch.arange(positions, device=device)[None] < conv_lengths[:, None]).long()
            mask = create_bidirectional_mask(
                config=tower.config, inputs_embeds=torch.zeros(1, positions, 1, device=device), attention_mask=mask_2d
            )
            frames = tower(features["input_features"], attention_mask=mask).last_hidden_state[
                0, : int(frame_lengths[0])
            ]
            timings["encoder"] += elapsed_ms(lap)
            lap = time.perf_counter()
            tokens.append(model.model.multi_modal_projector(compressor(frames)))
            timings["compressor"] += elapsed_ms(lap)
        audio_embeddings = torch.cat(tokens)
        lap = time.perf_counter()
        inputs = torch.cat([text_before, audio_embeddings, text_after])[None]
        output = model(inputs_embeds=inputs, use_cache=True)
        next_token = output.logits[0, -1].argmax()
        timings["prefill"] = elapsed_ms(lap)
        timings["time_to_first_token"] = elapsed_ms(run_started)
        lap = time.perf_counter()
        cache = output.past_key_values
        for _ in range(max_tokens - 1):
            output = model(input_ids=next_token.view(1, 1), past_key_values=cache, use_cache=True)
            cache, next_token = output.past_key_values, output.logits[0, -1].argmax()
        timings["decode"] = elapsed_ms(lap)
        timings["total"] = elapsed_ms(run_started)
        return timings, audio_embeddings.shape[0], max_tokens

    with torch.inference_mode():
        one_run()  # warm-up
        runs = [one_run() for _ in range(repeats)]
    decode_rates = [(generated - 1) / (t["decode"] / 1000) if t["decode"] > 0 else 0.0 for t, _, generated in runs]
    return {
        "load_ms": load_ms,
        "audio_tokens": runs[-1][1],
        "generated_tokens": max_tokens,
        "timings_ms": {stage: summarize([t[stage] for t, _, _ in runs]) for stage in STAGES},
        "decode_tokens_per_second": summarize(decode_rates),
        "peak_rss_mb": peak_rss_mb(),
    }


def measure_in_subprocess(
    runtime: str,
    source: Path,
    label: str,
    seconds: float,
    plan: BenchPlan,
    cpu_arena: bool = False,
    mmproj: Path | None = None,
) -> dict[str, Any]:
    """One (runtime, compressor, clip length) measured in a fresh process (`worker`), so its peak
    RSS is its own; {"error": how it ended} if it failed (a crash is named by its signal, and by
    ggml's assertion where one aborted it). `mmproj`: llama.cpp's audio GGUF, for the mtmd runtime."""
    job = {
        "runtime": runtime,
        "source": str(source),
        "label": label,
        "seconds": seconds,
        "repeats": plan.repeats,
        "max_tokens": plan.max_tokens,
        "threads": plan.threads,
        "device": plan.settings.get("device", "cpu"),
        "cpu_arena": cpu_arena,
        "llama_extra_buffers": plan.llama_extra_buffers,
        "mmproj": str(mmproj) if mmproj else None,
    }
    result = run_json_job("edgelalm.bench", job)
    if (measured := result.job_result()) is not None:
        return measured
    error = f"the {runtime} worker {result.failure()}"
    assertion = ggml_assertion(result.stderr) if result.returncode is not None and result.returncode < 0 else None
    return {"error": f"{error}: {assertion}" if assertion else error}


_ASSERTION = re.compile(r"(?:[\w.-]+:\d+: )?GGML_(?:ASSERT\(.*\) failed|ABORT.*)")


def ggml_assertion(stderr: str) -> str | None:
    """The last of ggml's assertion lines in a crashed worker's output, without the build folder:
    'whisper-enc.cpp:6: GGML_ASSERT(model.position_embeddings->ne[1] >= n_pos) failed'."""
    found = [match.group(0) for match in map(_ASSERTION.search, stderr.splitlines()) if match]
    return found[-1] if found else None


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """The child side of `measure_in_subprocess` (`python -m edgelalm.bench JOB`). On a GPU target
    the result also holds the GPU memory the measurement took (`peak_gpu_mb`)."""
    gpu_memory = GpuMemoryPeak()
    with gpu_memory if job["device"] == "cuda" else contextlib.nullcontext():
        result = _measure(job)
    if gpu_memory.peak_mb is not None:
        result["peak_gpu_mb"] = gpu_memory.peak_mb
    return result


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    args = (job["seconds"], job["repeats"], job["max_tokens"], job["threads"])
    if job["runtime"] == MTMD_RUNTIME:
        from edgelalm.bench.mtmd import measure_mtmd

        return measure_mtmd(
            Path(job["source"]),
            Path(job["mmproj"]),
            *args,
            device=job["device"],
            llama_extra_buffers=job["llama_extra_buffers"],
        )
    if job["runtime"] == "edgelalm":
        return measure_edgelalm(
            Path(job["source"]),
            *args,
            device=job["device"],
            cpu_arena=job["cpu_arena"],
            llama_extra_buffers=job["llama_extra_buffers"],
        )
    return measure_reference(Path(job["source"]), job["label"], *args, device=job["device"])
