"""llama.cpp's extra weight buffers on and off, side by side: prefill, decode speed, peak RSS.

    python benchmarks/llama_extra_buffers.py --model small --quants q8_0,q4_0 --seconds 5,30 --repeats 3 \\
        --out benchmarks/results/cpu-x86_64-small-extra-buffers

The runtime's "auto" keeps llama.cpp's extra buffers (CPU repack, AMX) except where its AMX buffer
would crash (edgelalm.runtime.llama_backend); where it turns them off, this is what that costs.
For one model (a preset or a checkpoint folder) it exports or reuses a `none` bundle per quant
under OUT/bundles/, then measures each (quant, clip length, setting) in a fresh process
(edgelalm.bench's worker: a warm-up, then `--repeats` runs), alternating the settings so both see
the same machine. A setting that crashes llama.cpp here (on, on an AMX machine) is a row saying
so. Writes OUT/extra-buffers.json and OUT/extra-buffers.md, and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from side_by_side import add_common_options, clip_seconds, variant_bundles

from edgelalm.bench import machine_description, measure_in_subprocess

SETTINGS = ("on", "off")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quants", default="q8_0,q4_0")
    add_common_options(parser, seconds="5,30", max_tokens=32)
    args = parser.parse_args(argv)
    quants = args.quants.split(",")
    plan, bundles = variant_bundles(args, "llama_extra_buffers", {quant: {"quant": quant} for quant in quants})

    rows = []
    for quant in quants:
        for seconds in clip_seconds(args):
            for setting in SETTINGS:
                result = measure_in_subprocess(
                    "edgelalm", bundles[quant], "none", seconds, dataclasses.replace(plan, llama_extra_buffers=setting)
                )
                row = {"quant": quant, "seconds": seconds, "setting": setting, **result}
                rows.append(row)
                print(
                    f"{quant}, {seconds:g} s, extra buffers {setting}: "
                    + (row["error"] if "error" in row else f"prefill {row['timings_ms']['prefill']['median']:.0f} ms"),
                    file=sys.stderr,
                )
    table = markdown_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "extra-buffers.json").write_text(
        json.dumps(
            {
                "model": args.model,
                "machine": machine_description(plan),
                "repeats": args.repeats,
                "max_tokens": args.max_tokens,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    (args.out / "extra-buffers.md").write_text(table)
    print(table)
    return 0


def markdown_table(rows: list[dict]) -> str:
    """One line per (quant, clip length): both settings and off/on ratios (above 1: off is slower)."""
    lines = [
        "| quant | clip s | prompt + audio tokens | weights with extra buffers on | prefill ms, on | off | off/on | "
        "decode tok/s, on | off | on/off | peak RSS MB, on | off |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(row["quant"], row["seconds"], row["setting"]): row for row in rows}
    for quant, seconds in dict.fromkeys((row["quant"], row["seconds"]) for row in rows):
        on, off = by_key[(quant, seconds, "on")], by_key[(quant, seconds, "off")]
        if "error" in on or "error" in off:
            failed = "on" if "error" in on else "off"
            lines.append(
                f"| {quant} | {seconds:g} | | {failed}: {(on if failed == 'on' else off)['error']} | | | | | | | | |"
            )
            continue
        prefill_on, prefill_off = on["timings_ms"]["prefill"]["median"], off["timings_ms"]["prefill"]["median"]
        decode_on, decode_off = on["decode_tokens_per_second"]["median"], off["decode_tokens_per_second"]["median"]
        tokens = on["audio_tokens"] + on.get("prompt_tokens", 0)
        lines.append(
            f"| {quant} | {seconds:g} | {tokens} | {', '.join(on['weight_buffers'])} | {prefill_on:.0f} | "
            f"{prefill_off:.0f} | "
            f"{prefill_off / prefill_on:.2f} | {decode_on:.1f} | {decode_off:.1f} | {decode_on / decode_off:.2f} | "
            f"{on['peak_rss_mb']:.0f} | {off['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
