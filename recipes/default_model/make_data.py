"""Render the default model's training data: synthetic voice-assistant speech from espeak-ng.

    python recipes/default_model/make_data.py            # data/train (40000), data/test (300)
    python recipes/default_model/make_data.py /tmp/d --train-count 2000 --workers 2
    python recipes/default_model/make_data.py data-v1 --grammar-version 1 --train-count 30000

Writes OUT/test and OUT/train (see edgelalm.training.dataset for the layout) and OUT/.gitignore, so
nothing under OUT reaches git. A split already built with the same count, seed and grammar version
is kept; any other existing split folder is replaced only with --force. The same arguments build
the same bytes.
Needs espeak-ng (Debian/Ubuntu: apt-get install espeak-ng).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgelalm.errors import EdgelalmError
from edgelalm.training.dataset import SpeechDataset, build_dataset
from edgelalm.training.texts import GRAMMAR_VERSION, GRAMMAR_VERSIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="data", type=Path, help="output folder (default: data)")
    parser.add_argument("--train-count", type=int, default=40000)
    parser.add_argument("--test-count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--grammar-version",
        type=int,
        choices=GRAMMAR_VERSIONS,
        default=GRAMMAR_VERSION,
        help="sentence grammar (1: the shipped model's stages 1-3; default: the latest)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=10.0, help="skip clips longer than this")
    parser.add_argument("--force", action="store_true", help="replace split folders built with other settings")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    ignore = args.out / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# rendered by recipes/default_model/make_data.py; not for git\n*\n", encoding="utf-8")

    started = time.perf_counter()
    for split, count in (("test", args.test_count), ("train", args.train_count)):
        target = args.out / split
        if (target / "dataset.json").is_file():
            info = json.loads((target / "dataset.json").read_text(encoding="utf-8"))
            wanted = (split, count, args.seed, args.max_seconds, args.grammar_version)
            built = (
                info.get("split"),
                info.get("count"),
                info.get("seed"),
                info.get("max_seconds"),
                info.get("grammar_version", 1),
            )
            if built == wanted:
                print(f"{target}: already built ({SpeechDataset(target)!r}), kept", file=sys.stderr)
                continue
        if target.exists() and not args.force:
            raise EdgelalmError(f"{target} exists with other settings; pass --force to replace it")
        build_dataset(
            target,
            split,
            count,
            args.seed,
            workers=args.workers,
            progress=True,
            max_seconds=args.max_seconds,
            overwrite=args.force,
            grammar_version=args.grammar_version,
        )
    print(f"done in {time.perf_counter() - started:.1f} s: {args.out / 'train'}, {args.out / 'test'}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # the guard matters: the render workers are spawned processes
    try:
        sys.exit(main())
    except EdgelalmError as error:
        print(f"make_data: error: {error}", file=sys.stderr)
        sys.exit(1)
