"""`edgelalm bench`: latency and memory per compressor and clip length, against PyTorch.

For one model (a checkpoint folder, or a random-weights preset with realistic shapes), it
exports or reuses a bundle per compressor, then measures each (compressor, clip length) in a
fresh subprocess, so each peak RSS belongs to one configuration: a warm-up run, then repeats,
reported as medians with min and max. The reference runs in the same way, side by side:
transformers' PyTorch model in fp32 with the same compressor in PyTorch between audio tower
and projector, on the same clips. Results: results.json, results.csv, summary.md, PNG plots.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgelalm.compression import CompressorSpec
from edgelalm.constants import (
    MANIFEST_FILE,
    SAMPLING_RATE,
    CompressorName,
    Device,
    EncoderPrecision,
    ExtraBuffers,
    QuantType,
)
from edgelalm.errors import EdgelalmError
from edgelalm.isolation import run_child
from edgelalm.manifest import DecoderInfo, bundle_name, read_manifest
from edgelalm.runtime.features import conv_positions, encoder_output_frames
from edgelalm.runtime.memory import peak_rss_mb

STAGES = ("features", "encoder", "compressor", "prefill", "decode", "time_to_first_token", "total")
DEFAULT_COMPRESSORS = ("none", "avg2", "avg3", "avg4", "avg6", "sample3", "unseg")
DEFAULT_SECONDS = (5.0, 30.0, 120.0, 600.0)
# `bench --quick`: what it changes in the plan.
QUICK: dict[str, Any] = {
    "model": "tiny",
    "compressors": ("none", "avg3"),
    "seconds": (3.0, 12.0),
    "repeats": 1,
    "max_tokens": 8,
}


@dataclass
class BenchPlan:
    model: str  # a checkpoint folder or a preset name
    out_dir: Path
    compressors: tuple[str, ...] = DEFAULT_COMPRESSORS
    seconds: tuple[float, ...] = DEFAULT_SECONDS
    repeats: int = 3
    max_tokens: int = 32
    quant: QuantType = "q8_0"
    encoder_precision: EncoderPrecision = "fp32"
    threads: int | None = None
    reference: bool = True
    target: str = "cpu-x86_64"
    settings: dict[str, Any] = field(default_factory=dict)
    llama_extra_buffers: ExtraBuffers = "auto"  # see edgelalm.runtime.llama_backend


def target_settings(target: str) -> dict[str, Any]:
    """runtimes/<target>/settings.json: the threads and device a target's benchmark uses."""
    path = Path("runtimes") / target / "settings.json"
    if not path.is_file():
        raise EdgelalmError(f"--target {target}: no {path}")
    return json.loads(path.read_text())


def parse_compressor(label: str) -> CompressorSpec:
    """'avg3' -> CompressorSpec('avg', 3); 'unseg' -> CompressorSpec('unseg')."""
    name = label.rstrip("0123456789")
    digits = label[len(name) :]
    # CompressorSpec refuses an unknown name.
    return CompressorSpec(cast(CompressorName, name), int(digits) if digits else 1)


def synthetic_clip(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like 16 kHz audio (harmonics with a gliding pitch under a syllable-rate envelope,
    plus noise): random-weights models give the same cost for any audio, and unseg sees a
    realistic amount of change between frames."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLING_RATE))
    times = np.arange(n) / SAMPLING_RATE
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.3 * times)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLING_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * times) ** 2
    return (0.2 * envelope * voiced + 0.01 * rng.standard_normal(n)).astype(np.float32)


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def kv_cache_mb(decoder: DecoderInfo, tokens: int, bytes_per_value: int = 2) -> float:
    """K and V for `tokens` positions in every layer (llama.cpp's default f16 cache)."""
    head_dim = decoder.hidden_size // decoder.attention_heads
    return 2 * decoder.layers * decoder.kv_heads * head_dim * tokens * bytes_per_value / 2**20


# -- measurements, each run in its own process ---------------------------------------------


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
    audio = synthetic_clip(seconds)
    runtime.run(audio, max_tokens=max_tokens)  # warm-up
    runs = [runtime.run(audio, max_tokens=max_tokens) for _ in range(repeats)]
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
    }


def measure_reference(
    model_dir: Path, label: str, seconds: float, repeats: int, max_tokens: int, threads: int | None, device: str = "cpu"
) -> dict[str, Any]:
    """transformers fp32, as a user would run it: the processor pads each window to the
    checkpoint's full window, the tower runs with its mask, then the same compressor in PyTorch,
    the projector, and greedy decoding with the KV cache; on the target's device, so that a GPU
    target compares GPU with GPU."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
    from transformers.masking_utils import create_bidirectional_mask

    from edgelalm.export.compressor import build_compressor

    if threads:
        torch.set_num_threads(threads)
    on_gpu = device == "cuda"

    def elapsed_ms(since: float) -> float:
        if on_gpu:  # CUDA kernels run asynchronously: a stage ends when the GPU is done
            torch.cuda.synchronize()
        return (time.perf_counter() - since) * 1000

    started = time.perf_counter()
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval().to(device)
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


# -- orchestration ---------------------------------------------------------------------------


def run_bench(plan: BenchPlan) -> dict[str, Any]:
    from edgelalm.progress import Bar

    check_device(plan)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(plan)
    bundles: dict[str, Path] = {}
    for label in plan.compressors:
        bundles[label] = ensure_bundle(model_dir, label, plan, share_from=next(iter(bundles.values()), None))
    points = [("edgelalm", label, seconds) for label in plan.compressors for seconds in plan.seconds]
    if plan.reference:
        points += [
            ("pytorch", label, seconds) for label in plan.compressors[:1] + ("avg3",) for seconds in plan.seconds
        ]
        points = list(dict.fromkeys(points))
    rows = []
    with Bar(len(points), "benchmarking") as bar:
        for runtime, label, seconds in points:
            bar.update(status=f"{runtime} {label} {seconds:g} s")
            source = bundles[label] if runtime == "edgelalm" else model_dir
            result = measure_in_subprocess(runtime, source, label, seconds, plan)
            rows.append({"runtime": runtime, "compressor": label, "seconds": seconds, **result})
            bar.update(advance=1)
    check_rows(rows)
    results = {
        "machine": machine_description(plan),
        "model": str(plan.model),
        "quant": plan.quant,
        "encoder_precision": plan.encoder_precision,
        "repeats": plan.repeats,
        "max_tokens": plan.max_tokens,
        "rows": rows,
    }
    results["ratios"] = ratios(rows)
    write_results(results, plan.out_dir)
    return results


def check_device(plan: BenchPlan) -> None:
    """Refuse a GPU target on a machine without CUDA before any export: edgelalm's runtime
    and, with the reference on, torch must both reach the GPU."""
    from edgelalm.runtime.pipeline import device_settings

    device = plan.settings.get("device", "cpu")
    device_settings(device)
    if device == "cuda" and plan.reference:
        import torch

        if not torch.cuda.is_available():
            raise EdgelalmError(
                "--target cuda: this torch cannot reach a CUDA GPU, so the reference would run on the CPU; "
                "install a CUDA build of torch or pass --no-reference"
            )


def ensure_model(plan: BenchPlan) -> Path:
    from edgelalm import scaffold

    if plan.model in scaffold.PRESETS:
        folder = plan.out_dir / "models" / plan.model
        if not (folder / "config.json").exists():
            scaffold.preset_checkpoint(folder, plan.model)
        return folder
    folder = Path(plan.model)
    if not folder.is_dir():
        raise EdgelalmError(
            f"--model {plan.model} is neither a checkpoint folder nor a preset ({', '.join(scaffold.PRESETS)})"
        )
    return folder


def ensure_bundle(model_dir: Path, label: str, plan: BenchPlan, share_from: Path | None = None) -> Path:
    """Reuse a bundle of this model, compressor, quant and encoder precision if one was exported
    before; a new one reuses the encoder (a copy) and decoder (a hard link) of `share_from` (the
    same for every compressor: random weights carry no adapter), which saves most of a large
    model's export."""
    from edgelalm.export.bundle import ExportOptions, export_bundle

    folder = plan.out_dir / "bundles" / bundle_name(label, plan.quant, plan.encoder_precision)
    if (folder / MANIFEST_FILE).exists():
        try:
            manifest = read_manifest(folder, verify_files=False)
        except EdgelalmError:
            manifest = None  # unreadable: export it again
        if (
            manifest
            and manifest.decoder
            and manifest.model.source == str(model_dir.resolve())
            and manifest.decoder.quant == plan.quant
            and manifest.encoder.precision == plan.encoder_precision
        ):
            return folder
    export_bundle(
        ExportOptions(
            model_dir,
            folder,
            parse_compressor(label),
            plan.encoder_precision,
            plan.quant,
            None,
            force=True,
            share_from=share_from,
        )
    )
    return folder


def ensure_variant_bundles(plan: BenchPlan, variants: dict[str, BenchPlan], label: str = "none") -> dict[str, Path]:
    """One `label` bundle per variant of `plan` (another quant, encoder precision...), each new one
    sharing what it can with the first: for the benchmarks that compare one setting."""
    model_dir = ensure_model(plan)
    bundles: dict[str, Path] = {}
    for name, variant in variants.items():
        bundles[name] = ensure_bundle(model_dir, label, variant, share_from=next(iter(bundles.values()), None))
    return bundles


def measure_in_subprocess(
    runtime: str, source: Path, label: str, seconds: float, plan: BenchPlan, cpu_arena: bool = False
) -> dict[str, Any]:
    """One (runtime, compressor, clip length) measured in a fresh process (`_worker`), so its peak
    RSS is its own; {"error": how it ended} if it failed (a crash is named by its signal)."""
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
    }
    result = run_child([sys.executable, "-m", "edgelalm.bench", json.dumps(job)])
    if not result.ok:
        return {"error": f"the {runtime} worker {result.failure()}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_rows(rows: list[dict[str, Any]]) -> None:
    """A bench where nothing could be measured is an error, not a report of empty rows; a partial
    one goes on, and says on stderr which points failed."""
    failed = [row for row in rows if "error" in row]
    if failed and len(failed) == len(rows):
        raise EdgelalmError(f"no measurement succeeded; the first: {failed[0]['error']}")
    for row in failed:
        print(
            f"edgelalm: warning: {row['runtime']} {row['compressor']} {row['seconds']:g} s: {row['error']}",
            file=sys.stderr,
        )


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline comparisons, each measured side by side in this run."""

    measured = {(row["runtime"], row["compressor"], row["seconds"]): row for row in rows if "timings_ms" in row}

    def stage(runtime: str, label: str, seconds: float, name: str) -> float | None:
        row = measured.get((runtime, label, seconds))
        return row["timings_ms"][name]["median"] if row else None

    def memory(runtime: str, label: str, seconds: float) -> float | None:
        row = measured.get((runtime, label, seconds))
        return row["peak_rss_mb"] if row else None

    def divide(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    lengths = sorted({row["seconds"] for row in rows})
    out: dict[str, Any] = {"per_length": {}}
    for seconds in lengths:
        out["per_length"][str(seconds)] = {
            "prefill_none_over_avg3": divide(
                stage("edgelalm", "none", seconds, "prefill"), stage("edgelalm", "avg3", seconds, "prefill")
            ),
            "ttft_pytorch_over_edgelalm_none": divide(
                stage("pytorch", "none", seconds, "time_to_first_token"),
                stage("edgelalm", "none", seconds, "time_to_first_token"),
            ),
            "peak_rss_edgelalm_over_pytorch_none": divide(
                memory("edgelalm", "none", seconds), memory("pytorch", "none", seconds)
            ),
        }
    if 5.0 in lengths and 30.0 in lengths:
        out["encoder_5s_over_30s"] = divide(
            stage("edgelalm", "none", 5.0, "encoder"), stage("edgelalm", "none", 30.0, "encoder")
        )
    return out


def machine_description(plan: BenchPlan) -> dict[str, Any]:
    import platform

    import llama_cpp
    import onnxruntime

    from edgelalm.runtime.llama_backend import cpu_name, decide_extra_buffers, llama_system_info

    return {
        "target": plan.target,
        "cpu": cpu_name(),
        "llama_cpp_system_info": llama_system_info(),
        "llama_extra_buffers": decide_extra_buffers(plan.llama_extra_buffers).reason,
        "cores": os.cpu_count(),
        "threads": plan.threads or "default",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "llama_cpp_python": llama_cpp.__version__,
    }


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with (out_dir / "results.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [
                "runtime",
                "compressor",
                "seconds",
                "audio_tokens",
                *[f"{s}_ms" for s in STAGES],
                "decode_tokens_per_second",
                "kv_cache_mb",
                "peak_rss_mb",
                "error",
            ]
        )
        for row in results["rows"]:
            timings = row.get("timings_ms", {})
            writer.writerow(
                [
                    row["runtime"],
                    row["compressor"],
                    row["seconds"],
                    row.get("audio_tokens"),
                    *[round(timings[s]["median"], 2) if s in timings else "" for s in STAGES],
                    round(row["decode_tokens_per_second"]["median"], 2) if "decode_tokens_per_second" in row else "",
                    round(row["kv_cache_mb"], 2) if "kv_cache_mb" in row else "",
                    row.get("peak_rss_mb", ""),
                    row.get("error", ""),
                ]
            )
    (out_dir / "summary.md").write_text(summary_markdown(results))
    plot(results, out_dir)


def summary_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| runtime | compressor | clip s | audio tokens | encoder ms | prefill ms | TTFT ms | decode tok/s | KV "
        "MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if "timings_ms" not in row:
            lines.append(
                f"| {row['runtime']} | {row['compressor']} | {row['seconds']:g} | error: {row.get('error')} | | "
                "| | | | |"
            )
            continue
        t = row["timings_ms"]
        spread = f"{t['prefill']['min']:.0f}-{t['prefill']['max']:.0f}"
        kv = f"{row['kv_cache_mb']:.1f}" if "kv_cache_mb" in row else "-"
        lines.append(
            f"| {row['runtime']} | {row['compressor']} | {row['seconds']:g} | {row['audio_tokens']} | "
            f"{t['encoder']['median']:.0f} | {t['prefill']['median']:.0f} ({spread}) | "
            f"{t['time_to_first_token']['median']:.0f} | "
            f"{row['decode_tokens_per_second']['median']:.1f} | {kv} | {row['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["rows"] if row["runtime"] == "edgelalm" and "timings_ms" in row]
    labels = list(dict.fromkeys(row["compressor"] for row in rows))
    lengths = sorted({row["seconds"] for row in rows})
    by_key = {(row["compressor"], row["seconds"]): row for row in rows}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for seconds in lengths:
        present = [label for label in labels if (label, seconds) in by_key]
        axes[0].plot(
            present,
            [by_key[(label, seconds)]["timings_ms"]["prefill"]["median"] for label in present],
            marker="o",
            label=f"{seconds:g} s clip",
        )
        axes[1].plot(
            present,
            [by_key[(label, seconds)]["peak_rss_mb"] for label in present],
            marker="o",
            label=f"{seconds:g} s clip",
        )
    for label in labels:
        present = [seconds for seconds in lengths if (label, seconds) in by_key]
        axes[2].plot(
            present,
            [by_key[(label, seconds)]["timings_ms"]["time_to_first_token"]["median"] for seconds in present],
            marker="o",
            label=label,
        )
    axes[0].set(title="decoder prefill vs compressor", ylabel="ms (median)", yscale="log")
    axes[1].set(title="peak RSS vs compressor", ylabel="MB")
    axes[2].set(
        title="time to first token vs audio length",
        xlabel="clip seconds",
        ylabel="ms (median)",
        xscale="log",
        yscale="log",
    )
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"edgelalm bench: {results['model']} ({results['quant']}), {results['machine']['target']}")
    figure.tight_layout()
    figure.savefig(out_dir / "bench.png", dpi=110)
    plt.close(figure)


def _worker(argv: list[str]) -> None:
    """The child side of `measure_in_subprocess`: one JSON job in argv, one JSON result on stdout."""
    job = json.loads(argv[0])
    args = (job["seconds"], job["repeats"], job["max_tokens"], job["threads"])
    try:
        if job["runtime"] == "edgelalm":
            result = measure_edgelalm(
                Path(job["source"]),
                *args,
                device=job["device"],
                cpu_arena=job["cpu_arena"],
                llama_extra_buffers=job["llama_extra_buffers"],
            )
        else:
            result = measure_reference(Path(job["source"]), job["label"], *args, device=job["device"])
    except EdgelalmError as error:
        print(error, file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    _worker(sys.argv[1:])
