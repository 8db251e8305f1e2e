"""The prompt prefix cache on and off, side by side: time to first token and prefill per clip.

    python benchmarks/prefix_cache.py export/edgelalm-default-unseg-q8_0 --repeats 5 \\
        --out benchmarks/results/cpu-x86_64-prefix-cache

Two `Runtime`s of the same bundle in one process, one with `prefix_cache=False`; each example clip
(examples/*.wav) runs on both in turn, `--repeats` times, after one warm-up run each (so the cached
one holds the prefix, as when serving many clips). Prints medians per clip and writes
OUT/prefix-cache.json. `--seconds 5,10` runs the bench's speech-like synthetic clips of those
lengths instead (for a random-weights preset); `--compressor` picks the entry of a bundle of several.

    python benchmarks/prefix_cache.py export/small-choices-q8_0 --compressor avg3 --seconds 1,5,10 \
        --out benchmarks/results/cpu-x86_64-small-prefix-cache-avg3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from edgelalm.bench.measure import synthetic_clip
from edgelalm.constants import SAMPLING_RATE
from edgelalm.runtime.pipeline import Runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seconds", default=None, help="synthetic clips of these lengths, comma-separated")
    parser.add_argument("--compressor", default=None, help="the entry of a bundle of several compressors")
    args = parser.parse_args(argv)
    clips: list[tuple[str, Path | np.ndarray]] = [(path.name, path) for path in sorted(Path("examples").glob("*.wav"))]
    options = {"max_tokens": args.max_tokens, "compressor": args.compressor}
    if args.seconds:
        clips = [(f"{float(s):g} s synthetic", synthetic_clip(float(s))) for s in args.seconds.split(",")]
        options["sampling_rate"] = SAMPLING_RATE  # samples, not files
    rows = []
    with Runtime(args.bundle, prefix_cache=True) as cached, Runtime(args.bundle, prefix_cache=False) as fresh:
        for runtime in (cached, fresh):
            runtime.run(clips[0][1], **options)
        for name_of_clip, clip in clips:
            samples: dict[str, list[dict]] = {"on": [], "off": []}
            for _ in range(args.repeats):
                for name, runtime in (("on", cached), ("off", fresh)):
                    result = runtime.run(clip, **options)
                    counts = {"reused": result.reused_prompt_tokens, "prompt_tokens": result.prompt_tokens,
                              "audio_tokens": result.audio_tokens}  # fmt: skip
                    samples[name].append({**result.timings_ms, **counts})
            first = samples["on"][0]
            row = {"clip": name_of_clip, **{key: first[key] for key in ("audio_tokens", "prompt_tokens", "reused")}}
            for name in ("on", "off"):
                for measure in ("time_to_first_token", "prefill"):
                    row[f"{measure}_ms_{name}"] = statistics.median(s[measure] for s in samples[name])
            rows.append(row)
    print("| clip | audio tokens | prompt tokens (reused) | TTFT off | on | off/on | prefill off | on | off/on |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ttft_off, ttft_on = r["time_to_first_token_ms_off"], r["time_to_first_token_ms_on"]
        pre_off, pre_on = r["prefill_ms_off"], r["prefill_ms_on"]
        print(f"| {r['clip']} | {r['audio_tokens']} | {r['prompt_tokens']} ({r['reused']}) | {ttft_off:.1f} ms "
              f"| {ttft_on:.1f} ms | {ttft_off / ttft_on:.2f} | {pre_off:.1f} ms | {pre_on:.1f} ms "
              f"| {pre_off / pre_on:.2f} |")  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "prefix-cache.json").write_text(
            json.dumps({"bundle": str(args.bundle), "compressor": args.compressor, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
