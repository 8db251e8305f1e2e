"""One bundle of several compressors (adapters applied at run time) against one merged bundle per
compressor, side by side: disk, switching, prefill and decode speed, peak memory (issue 19).

    python benchmarks/compressor_choices.py export/edgelalm-default-none+avg2+avg3+unseg-q8_0 \\
        --merged avg2=export/edgelalm-default-avg2-q8_0 --merged avg3=export/edgelalm-default-avg3-q8_0 ... \\
        --out benchmarks/results/cpu-x86_64-default-compressor-choices

- disk: the bundle of several against the merged bundles' sum;
- switch: `LlamaContext.use_adapter` between two adapters (the only work a switch does; the next
  clip then evaluates the prompt prefix again, which `reused_prompt_tokens` shows), and the time to
  first token of a clip after a switch against after the same compressor;
- speed: for each adapted compressor, the same clip through the bundle of several (adapter applied)
  and its merged bundle, alternating `--repeats` times after a warm-up, medians of prefill and decode;
- the adapter's own cost: in one context of the bundle of several, the same 240 tokens prefilled
  and 32 decoded with an adapter applied and with none, alternating (`adapter_overhead`);
- memory: peak RSS of a child process that loads the bundle of several and runs every compressor,
  against one that loads a merged bundle and runs it.
Prints a table and writes OUT/compressor-choices.json.

For a preset with random weights (no realigned adapters), `--random-adapters CHECKPOINT OUT`
writes rank-16 LoRA adapters on q_proj and k_proj (alpha 32, as the paper trains them) with random
non-zero factors, one per label (avg2, avg3, unseg), to export the bundles with:

    python benchmarks/compressor_choices.py --random-adapters build/small build/small-adapters
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgelalm.manifest import read_manifest
from edgelalm.runtime.pipeline import Runtime

CLIP = Path("examples/set-a-timer.wav")


def bundle_bytes(bundle: Path) -> int:
    return sum(record.bytes for record in read_manifest(bundle, verify_files=False).files.values())


def peak_rss_child(bundle: Path, labels: list[str], clip: Path, max_tokens: int) -> float:
    """Peak RSS (MB) of a fresh process that loads `bundle` and runs `clip` with each label."""
    code = (
        "import json, sys; from edgelalm.runtime.pipeline import Runtime\n"
        "bundle, clip, tokens, labels = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])\n"
        "with Runtime(bundle) as runtime:\n"
        "    peaks = [runtime.run(clip, max_tokens=tokens, compressor=label).peak_rss_mb for label in labels]\n"
        "print(max(peaks))\n"
    )
    args = [sys.executable, "-c", code, str(bundle), str(clip), str(max_tokens), json.dumps(labels)]
    result = subprocess.run(args, capture_output=True, text=True, check=True, timeout=1800)
    return float(result.stdout.strip().splitlines()[-1])


def switch_ms(runtime: Runtime, first: str, second: str, repeats: int) -> float:
    """Median time of `use_adapter` from `first`'s adapter to `second`'s on a context of the runtime."""
    with runtime._run_slot() as context:  # the benchmark times the context's own switch
        times = []
        for _ in range(repeats):
            for label in (first, second):
                started = time.perf_counter()
                context.use_adapter(runtime.compressors[label].adapter)
                times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)


def random_adapters(checkpoint: Path, out: Path, labels: tuple[str, ...] = ("avg2", "avg3", "unseg")) -> None:
    """Rank-16 q/k LoRA adapters with random non-zero factors (peft starts B at zero), one per label.
    peft wraps a model built on the meta device, which gives the adapter's tensor names and shapes
    without loading any weights (the 7B preset would need 33.6 GB in fp32); the factors are then
    drawn and saved as peft saves them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, Qwen2AudioForConditionalGeneration

    config = AutoConfig.from_pretrained(checkpoint)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=r".*language_model.*\.(q_proj|k_proj)")
    with torch.device("meta"):
        peft_model = get_peft_model(Qwen2AudioForConditionalGeneration(config), lora)
    shapes = {name: tensor.shape for name, tensor in get_peft_model_state_dict(peft_model).items()}
    lora.base_model_name_or_path = str(checkpoint)
    for seed, label in enumerate(labels):
        generator = torch.Generator().manual_seed(seed)
        factors = {name: torch.randn(shape, generator=generator) * 0.01 for name, shape in sorted(shapes.items())}
        (out / label).mkdir(parents=True, exist_ok=True)
        save_file(factors, str(out / label / "adapter_model.safetensors"), metadata={"format": "pt"})
        lora.save_pretrained(str(out / label))
        print(out / label)


def adapter_overhead(runtime: Runtime, label: str, prompt_tokens: int, decode_tokens: int, repeats: int) -> dict:
    """The adapter's own cost, in one llama.cpp context of the bundle of several: the same tokens
    prefilled (then decoded one at a time) with `label`'s adapter applied and with none,
    alternating, medians. Without the adapter the decoder computes what a merged one does (the same
    shapes), so this is the overhead against merged without a second model competing for the cache."""
    with runtime._run_slot() as context:  # the benchmark drives the context directly
        # Ordinary tokens of this vocabulary (past the first 100: bytes and specials in small ones).
        highest = min(20000, runtime.decoder.n_vocab)
        tokens = [int(t) for t in np.random.default_rng(0).integers(100, highest, prompt_tokens + decode_tokens)]
        context.ensure_context(len(tokens) + 1)
        samples: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in ("adapter", "none")}
        for round_index in range(repeats + 1):  # the first round warms up
            for name, adapter in (("adapter", runtime.compressors[label].adapter), ("none", None)):
                context.use_adapter(adapter)
                context.reset()
                started = time.perf_counter()
                context.feed_tokens(tokens[:prompt_tokens])
                prefilled = time.perf_counter()
                for token in tokens[prompt_tokens:]:
                    context.feed_tokens([token])
                if round_index:
                    samples[name]["prefill"].append((prefilled - started) * 1000)
                    samples[name]["decode"].append(decode_tokens / (time.perf_counter() - prefilled))
        medians = {name: {key: statistics.median(v) for key, v in values.items()} for name, values in samples.items()}
        return {
            "prompt_tokens": prompt_tokens,
            "decode_tokens": decode_tokens,
            "repeats": repeats,
            "prefill_ms": {name: m["prefill"] for name, m in medians.items()},
            "decode_tokens_per_second": {name: m["decode"] for name, m in medians.items()},
            "prefill_adapter_over_none": medians["adapter"]["prefill"] / medians["none"]["prefill"],
            "decode_none_over_adapter": medians["none"]["decode"] / medians["adapter"]["decode"],
        }


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--random-adapters":
        random_adapters(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Also: --random-adapters CHECKPOINT OUT (as its only arguments) writes rank-16 q/k LoRA adapters "
        "with random factors for avg2, avg3 and unseg, for a preset that has no realigned ones.",
    )
    parser.add_argument("bundle", type=Path, help="a bundle of several compressors")
    parser.add_argument("--merged", action="append", default=[], help="LABEL=BUNDLE: that compressor merged")
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--overhead-repeats", type=int, default=10, help="rounds of the in-context adapter cost")
    parser.add_argument(
        "--no-merged-speed",
        action="store_true",
        help="skip the clip-through-both-bundles speed (two decoders loaded at once: 16 GB for the 7B)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    merged = {label: Path(folder) for label, folder in (item.split("=", 1) for item in args.merged)}
    manifest = read_manifest(args.bundle)
    labels = list(manifest.compressors)
    adapted = [label for label, choice in manifest.compressors.items() if choice.adapter]
    report: dict = {
        "bundle": str(args.bundle),
        "clip": str(args.clip),
        "disk_mb": {"several": bundle_bytes(args.bundle) / 1e6},
        "decoder_mb": manifest.files["decoder.gguf"].bytes / 1e6,
        "adapters_mb": {
            label: manifest.files[choice.adapter.file].bytes / 1e6
            for label, choice in manifest.compressors.items()
            if choice.adapter
        },
    }
    report["disk_mb"]["merged"] = {label: bundle_bytes(folder) / 1e6 for label, folder in merged.items()}
    speed: dict = {}
    with Runtime(args.bundle, max_concurrent_runs=1) as several:
        if len(adapted) >= 2:
            report["use_adapter_ms"] = switch_ms(several, adapted[0], adapted[1], args.repeats)
            # Time to first token after a switch (prefix evaluated again) against after the same one.
            after: dict[str, list[float]] = {"same": [], "switched": []}
            several.run(args.clip, max_tokens=1, compressor=adapted[0])
            for _ in range(args.repeats):
                for kind, label in (("same", adapted[0]), ("switched", adapted[1]), ("switched", adapted[0])):
                    result = several.run(args.clip, max_tokens=1, compressor=label)
                    if kind == "same" or result.reused_prompt_tokens == 0:
                        after[kind].append(result.timings_ms["time_to_first_token"])
            report["ttft_ms_after"] = {kind: statistics.median(values) for kind, values in after.items()}
        if adapted:
            report["adapter_overhead"] = adapter_overhead(several, adapted[0], 240, 32, args.overhead_repeats)
        for label in adapted:
            if label not in merged or args.no_merged_speed:
                continue
            with Runtime(merged[label], max_concurrent_runs=1) as single:
                samples: dict[str, list[dict]] = {"adapter": [], "merged": []}
                several.run(args.clip, max_tokens=args.max_tokens, compressor=label)
                single.run(args.clip, max_tokens=args.max_tokens)
                for _ in range(args.repeats):
                    for name, runtime, choice in (("adapter", several, label), ("merged", single, None)):
                        result = runtime.run(args.clip, max_tokens=args.max_tokens, compressor=choice)
                        samples[name].append(
                            {
                                "prefill_ms": result.timings_ms["prefill"],
                                "decode_tokens_per_second": result.decode_tokens_per_second,
                                "text": result.text,
                            }
                        )
                speed[label] = {
                    name: {
                        key: statistics.median(sample[key] for sample in values)
                        for key in ("prefill_ms", "decode_tokens_per_second")
                    }
                    for name, values in samples.items()
                }
                speed[label]["same_text"] = samples["adapter"][0]["text"] == samples["merged"][0]["text"]
    report["speed"] = speed
    report["peak_rss_mb"] = {"several": peak_rss_child(args.bundle, labels, args.clip, args.max_tokens)}
    if merged:
        label, folder = next(iter(merged.items()))
        report["peak_rss_mb"]["merged_" + label] = peak_rss_child(folder, [label], args.clip, args.max_tokens)
    print(json.dumps(report, indent=1))
    merged_total = sum(report["disk_mb"]["merged"].values())
    if merged_total:
        print(
            f"disk: {report['disk_mb']['several']:.1f} MB for {len(labels)} compressors vs {merged_total:.1f} MB "
            f"for {len(merged)} merged bundles ({report['disk_mb']['several'] / merged_total:.2f}x)"
        )
    for label, row in speed.items():
        adapter, single = row["adapter"], row["merged"]
        print(
            f"{label}: prefill {adapter['prefill_ms']:.1f} ms with the adapter vs {single['prefill_ms']:.1f} ms merged "
            f"({adapter['prefill_ms'] / single['prefill_ms']:.3f}x); decode {adapter['decode_tokens_per_second']:.1f} "
            f"vs {single['decode_tokens_per_second']:.1f} tokens/s; same text: {row['same_text']}"
        )
    if "adapter_overhead" in report:
        overhead = report["adapter_overhead"]
        print(
            f"in one context, {overhead['prompt_tokens']} tokens: prefill {overhead['prefill_adapter_over_none']:.3f}x "
            f"with an adapter applied; decode {overhead['decode_none_over_adapter']:.3f}x slower"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compressor-choices.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
