"""The encoder's precision (fp32, int8, fp16), side by side: encoder time, time to first token, peak RSS.

    python benchmarks/encoder_precision.py --model small --seconds 5,30,120 --repeats 3 \\
        --out benchmarks/results/cpu-x86_64-small

For one model (a preset or a checkpoint folder), it exports or reuses `none` bundles under
OUT/bundles/ that differ only in the encoder (the decoder is hard-linked from the fp32 one), then
measures each (precision, clip length) in a fresh process (edgelalm.bench's worker: a warm-up, then
`--repeats` runs), alternating precisions so that all see the same machine. Writes
OUT/encoder-precision.json and OUT/encoder-precision.md, and prints the table. What int8 costs in
accuracy is measured on the default model by recipes/default_model/wer_table.py --encoder-precision.
"""

from __future__ import annotations

import argparse
import json
import sys

from side_by_side import add_common_options, clip_seconds, variant_bundles

from edgelalm.bench import measure_in_subprocess
from edgelalm.manifest import Manifest, is_encoder_file, read_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", default="fp32,int8", help="comma-separated; the first is the baseline")
    add_common_options(parser, seconds="5,30,120", max_tokens=8)
    args = parser.parse_args(argv)
    precisions = args.precisions.split(",")
    plan, bundles = variant_bundles(args, "encoder_precision", {p: {"encoder_precision": p} for p in precisions})

    rows = []
    for seconds in clip_seconds(args):
        for precision in precisions:
            result = measure_in_subprocess("edgelalm", bundles[precision], "none", seconds, plan)
            if "error" in result:
                raise SystemExit(f"encoder_precision: error: {precision}, {seconds:g} s: {result['error']}")
            timings = result["timings_ms"]
            rows.append(
                {
                    "seconds": seconds,
                    "precision": precision,
                    "peak_rss_mb": result["peak_rss_mb"],
                    "encoder_ms": timings["encoder"],
                    "time_to_first_token_ms": timings["time_to_first_token"],
                }
            )
            print(
                f"{seconds:g} s, {precision}: encoder {timings['encoder']['median']:.0f} ms, "
                f"{result['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
            )
    manifests = {precision: read_manifest(bundle, verify_files=False) for precision, bundle in bundles.items()}
    probes = {
        precision: manifest.encoder.probe.max_abs_diff_vs_pytorch_fp32 for precision, manifest in manifests.items()
    }
    files = {precision: encoder_bytes(manifest) for precision, manifest in manifests.items()}
    table = markdown_table(rows, precisions, probes, files)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder-precision.json").write_text(
        json.dumps(
            {
                "model": args.model,
                "bundles": {p: str(b) for p, b in bundles.items()},
                "encoder_bytes": files,
                "probe_max_abs_diff": probes,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    (args.out / "encoder-precision.md").write_text(table)
    print(table)
    return 0


def encoder_bytes(manifest: Manifest) -> int:
    """The encoder graph and its external weights, as the manifest lists them."""
    return sum(record.bytes for name, record in manifest.files.items() if is_encoder_file(name))


def markdown_table(rows: list[dict], precisions: list[str], probes: dict[str, float], files: dict[str, int]) -> str:
    baseline = precisions[0]
    lines = [
        f"| clip s | encoder | file MB | probe max abs diff | encoder ms | vs {baseline} | TTFT ms | vs "
        f"{baseline} | peak RSS MB | vs {baseline} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(row["seconds"], row["precision"]): row for row in rows}
    for row in rows:
        base = by_key[(row["seconds"], baseline)]
        encoder, ttft = row["encoder_ms"]["median"], row["time_to_first_token_ms"]["median"]
        base_encoder, base_ttft = base["encoder_ms"]["median"], base["time_to_first_token_ms"]["median"]
        diff = probes[row["precision"]]
        lines.append(
            f"| {row['seconds']:g} | {row['precision']} | {files[row['precision']] / 1e6:.0f} | {diff:.1e} | "
            f"{encoder:.0f} | {encoder / base_encoder:.2f} | {ttft:.0f} | {ttft / base_ttft:.2f} | "
            f"{row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] / base['peak_rss_mb']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
