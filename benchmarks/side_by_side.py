"""What the side-by-side benchmark scripts share: their common options and their bundles.

    parser = argparse.ArgumentParser(...)
    add_common_options(parser, seconds="5,30", max_tokens=32)
    plan, bundles = variant_bundles(args, "llama_extra_buffers", {"q8_0": {"quant": "q8_0"}})

(Imported as a sibling module: each script runs as `python benchmarks/<name>.py`.)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from edgelalm.bench import BenchPlan, ensure_variant_bundles
from edgelalm.errors import EdgelalmError


def add_common_options(parser: argparse.ArgumentParser, seconds: str, max_tokens: int, model: bool = True) -> None:
    """--model (a preset or checkpoint folder; left out where the script takes a bundle), --seconds,
    --repeats, --max-tokens, --out."""
    if model:
        parser.add_argument(
            "--model", default="small", help="a preset (tiny, small, qwen2-audio-7b) or a checkpoint folder"
        )
    parser.add_argument("--seconds", default=seconds, help="clip lengths, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latest"))


def clip_seconds(args: argparse.Namespace) -> list[float]:
    return [float(s) for s in args.seconds.split(",")]


def variant_bundles(
    args: argparse.Namespace, script: str, variants: dict[str, dict[str, Any]]
) -> tuple[BenchPlan, dict[str, Path]]:
    """The `none` bundle of args.model for each variant (BenchPlan fields to change), exported once
    under OUT/bundles/ and reused; an export that fails ends the script with one line."""
    try:
        plan = BenchPlan(
            model=args.model, out_dir=args.out, compressors=("none",), repeats=args.repeats, max_tokens=args.max_tokens
        )
        changed = {name: dataclasses.replace(plan, **fields) for name, fields in variants.items()}
        return plan, ensure_variant_bundles(plan, changed)
    except EdgelalmError as error:
        raise SystemExit(f"{script}: error: {error}") from None
