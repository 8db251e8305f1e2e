"""Where a run's memory goes: resident memory after each load step and at the peak of each stage of
one clip, split into anonymous memory (heap: onnxruntime's weights and activations, llama.cpp's
buffers, Python) and file pages (the mmap'ed decoder GGUF, shared libraries).

    python benchmarks/memory_components.py benchmarks/results/cpu-x86_64-small/bundles/none-q8_0 \\
        --seconds 30 --out benchmarks/results/cpu-x86_64-small-memory

Each bundle runs in a fresh process. The loads are measured step by step (Python and the two
libraries, the encoder session, the compressor session, the decoder); a sampler thread reads
/proc/self/status every 2 ms during the clip, and each sample is put in the stage whose time span
(the run's own timings_ms) holds it. `--session-config KEY=VALUE` passes onnxruntime session
config entries to the encoder (e.g. session.disable_prepacking=1), to try what moves the peak.
Writes OUT/memory.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

STAGES = ("features", "encoder", "compressor", "prefill", "decode")


def status_mb() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM of this process, in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def worker(bundle: Path, seconds: float, session_config: dict[str, str], threads: int | None) -> dict:
    steps = {"python": status_mb()}
    import llama_cpp  # noqa: F401  the libraries themselves, before any model
    import numpy as np

    from edgelalm.constants import SAMPLING_RATE
    from edgelalm.runtime import encoder as encoder_stage
    from edgelalm.runtime.pipeline import Runtime

    steps["libraries"] = status_mb()
    if session_config:
        # The encoder's session only: the compressor stage holds its own reference to onnx_session.
        encoder_stage.onnx_session = partial(encoder_stage.onnx_session, config_entries=session_config)
    runtime = Runtime(bundle, threads=threads)
    steps["runtime loaded (encoder, compressor, decoder)"] = status_mb()
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(int(seconds * SAMPLING_RATE))).astype(np.float32)
    samples: list[tuple[float, dict[str, float]]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), status_mb()))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    sampler.start()
    result = runtime.run(clip, sampling_rate=SAMPLING_RATE, max_tokens=8)
    done.set()
    sampler.join()
    stages: dict[str, dict[str, float]] = {}
    edge = started
    for stage in STAGES:
        end = edge + result.timings_ms.get(stage, 0.0) / 1000
        inside = [s for t, s in samples if edge <= t < end]
        if inside:
            stages[stage] = {key: max(s[key] for s in inside) for key in ("VmRSS", "RssAnon", "RssFile")}
        edge = end
    return {
        "bundle": str(bundle),
        "seconds": seconds,
        "session_config": session_config,
        "load_steps": steps,
        "stage_peaks": stages,
        "peak_rss_mb": status_mb()["VmHWM"],
        "timings_ms": result.timings_ms,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| bundle | encoder session config | step | RSS MB | anonymous MB | file MB |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        name = Path(result["bundle"]).name
        config = ",".join(f"{k}={v}" for k, v in result["session_config"].items()) or "-"
        rows = [(f"after {step}", values) for step, values in result["load_steps"].items()]
        rows += [(f"{stage}, its peak", values) for stage, values in result["stage_peaks"].items()]
        for step, values in rows:
            lines.append(
                f"| {name} | {config} | {step} | {values['VmRSS']:.0f} | {values['RssAnon']:.0f} | "
                f"{values['RssFile']:.0f} |"
            )
        lines.append(f"| {name} | {config} | **peak (VmHWM)** | **{result['peak_rss_mb']:.0f}** | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--session-config", action="append", default=[], help="KEY=VALUE for the encoder session")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = dict(entry.split("=", 1) for entry in args.session_config)
    if args.worker:
        print(json.dumps(worker(args.bundles[0], args.seconds, config, args.threads)))
        return 0
    results = []
    for bundle in args.bundles:
        command = [sys.executable, __file__, str(bundle), "--seconds", str(args.seconds), "--worker"]
        command += [f"--session-config={entry}" for entry in args.session_config]
        command += ["--threads", str(args.threads)] if args.threads else []
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            raise SystemExit(f"memory_components: {bundle}: {finished.stderr.strip().splitlines()[-1:]}")
        results.append(json.loads(finished.stdout.strip().splitlines()[-1]))
    markdown = table(results)
    print(markdown)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "memory.md").write_text(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
