"""One `Runtime` serving several threads: max_concurrent_runs 1 (runs take turns, one llama.cpp
context) against 2 (a context per running thread on the shared weights), side by side.

    python benchmarks/concurrent_runs.py export/edgelalm-default-unseg-q8_0 --threads 4 --repeats 3 \\
        --out benchmarks/results/cpu-x86_64-concurrent-runs

Each setting runs in a fresh process (its peak RSS is its own): load the bundle, one warm-up run,
then `--threads` threads each transcribe every example clip (examples/*.wav) once; the wall time
of that burst is the measure. Settings alternate over `--repeats` rounds, so both see the same
machine. Writes OUT/concurrent-runs.json and prints the table (medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SETTINGS = (1, 2)


def _one(bundle: Path, max_concurrent_runs: int, threads: int, llama_threads: int | None) -> dict:
    from edgelalm.runtime.memory import peak_rss_mb
    from edgelalm.runtime.pipeline import Runtime

    clips = sorted(Path("examples").glob("*.wav"))
    with Runtime(bundle, threads=llama_threads, max_concurrent_runs=max_concurrent_runs) as runtime:
        runtime.run(clips[0], max_tokens=48)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                for clip in clips:
                    runtime.run(clip, max_tokens=48)
            except BaseException as error:
                errors.append(error)

        started = time.perf_counter()
        workers = [threading.Thread(target=serve) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - started
        if errors:
            raise errors[0]
        return {"wall_s": round(wall, 3), "runs": threads * len(clips), "contexts": runtime.contexts_made,
                "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=4, help="caller threads")
    parser.add_argument("--llama-threads", type=int, default=None, help="threads per run (default: the cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child's setting
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(_one(args.bundle, args.one, args.threads, args.llama_threads)))
        return 0
    rows: dict[int, list[dict]] = {setting: [] for setting in SETTINGS}
    for _ in range(args.repeats):
        for setting in SETTINGS:
            command = [
                sys.executable,
                __file__,
                str(args.bundle),
                "--threads",
                str(args.threads),
                "--one",
                str(setting),
            ]
            if args.llama_threads:
                command += ["--llama-threads", str(args.llama_threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {
        setting: {
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "contexts": max(r["contexts"] for r in runs),
            "runs": runs[0]["runs"],
        }
        for setting, runs in rows.items()
    }
    base = summary[1]
    print(f"{args.threads} caller threads, {base['runs']} runs per burst, medians of {args.repeats}:")
    print("| max_concurrent_runs | contexts | wall | speed-up | peak RSS |\n|---|---|---|---|---|")
    for setting, row in summary.items():
        print(f"| {setting} | {row['contexts']} | {row['wall_s']:.2f} s | {base['wall_s'] / row['wall_s']:.2f}x "
              f"| {row['peak_rss_mb']:.0f} MB |")  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "concurrent-runs.json").write_text(json.dumps({"summary": summary, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
