"""onnxruntime's CPU memory arena on and off, side by side: peak RSS and encoder time per clip length.

    python benchmarks/cpu_arena.py benchmarks/results/cpu-x86_64-small/bundles/none-q8_0 \\
        --seconds 5,30,120 --repeats 3 --out benchmarks/results/cpu-x86_64-small-arena

Each (setting, clip length) runs in a fresh process (edgelalm.bench's worker: a warm-up, then
`--repeats` runs), alternating the two settings, so both see the same machine. "on" keeps the
arena for the session's life (`cpu_arena=True`); "off" is the runtime's default: no arena for the
compressor, and for the encoder the arena shrunk at the end of every run. Writes OUT/arena.json
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from side_by_side import add_common_options, clip_seconds

from edgelalm.bench import BenchPlan, measure_in_subprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    add_common_options(parser, seconds="5,30,120", max_tokens=8, model=False)
    args = parser.parse_args(argv)
    plan = BenchPlan(model=str(args.bundle), out_dir=args.out, repeats=args.repeats, max_tokens=args.max_tokens)
    rows = []
    for seconds in clip_seconds(args):
        for cpu_arena in (True, False):
            result = measure_in_subprocess("edgelalm", args.bundle, "-", seconds, plan, cpu_arena=cpu_arena)
            if "error" in result:
                raise SystemExit(f"cpu_arena: error: {result['error']}")
            rows.append(
                {
                    "seconds": seconds,
                    "cpu_arena": cpu_arena,
                    "peak_rss_mb": result["peak_rss_mb"],
                    "encoder_ms": result["timings_ms"]["encoder"],
                    "total_ms": result["timings_ms"]["total"],
                }
            )
            print(
                f"{seconds:g} s, arena {'on' if cpu_arena else 'off'}: {result['peak_rss_mb']:.0f} MB", file=sys.stderr
            )
    lines = [
        "| clip s | peak RSS MB, arena on | arena off | off/on | encoder ms, arena on | arena off | off/on |",
        "|---|---|---|---|---|---|---|",
    ]
    for on, off in zip(rows[::2], rows[1::2], strict=True):
        rss_on, rss_off = on["peak_rss_mb"], off["peak_rss_mb"]
        enc_on, enc_off = on["encoder_ms"]["median"], off["encoder_ms"]["median"]
        lines.append(
            f"| {on['seconds']:g} | {rss_on:.0f} | {rss_off:.0f} | {rss_off / rss_on:.2f} | "
            f"{enc_on:.0f} | {enc_off:.0f} | {enc_off / enc_on:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "arena.json").write_text(json.dumps({"bundle": str(args.bundle), "rows": rows}, indent=1) + "\n")
        (args.out / "arena.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
