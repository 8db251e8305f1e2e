"""Where a run's memory goes: resident memory after each load step and at the peak of each stage of
one clip, split into anonymous memory (heap: onnxruntime's weights and activations, llama.cpp's
buffers, Python) and file pages (the mmap'ed decoder GGUF, shared libraries).

    python benchmarks/memory_components.py benchmarks/results/cpu-x86_64-small/bundles/none-q8_0 \\
        --seconds 30 --out benchmarks/results/cpu-x86_64-small-memory

Each bundle runs in a fresh process. The loads are measured step by step (Python and the two
libraries, the encoder session, the compressor session, the decoder); a sampler thread reads
/proc/self/status every 2 ms during the clip, and each sample is put in the stage whose time span
(the run's own timings_ms) holds it. `--warm-up` runs the clip once before the measured run, as
`edgelalm bench` does: the steady state of a second clip, with llama.cpp's buffers already held.
`--mtmd MMPROJ` measures llama.cpp's mtmd too (the first bundle's decoder with that mmproj, a
warm-up and one run, `edgelalm.bench.mtmd`), sampled the same way, with the compute buffer mtmd
reserved for the tower as its log gives it. `--session-config KEY=VALUE` passes onnxruntime
session config entries to the encoder (e.g. session.disable_prepacking=1), to try what moves the
peak. Writes OUT/memory.json and prints a markdown table.
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


class Sampler:
    """/proc/self/status every 2 ms on a thread, with the time of each sample."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.perf_counter(), status_mb()))
            time.sleep(0.002)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def at_peak(self) -> dict[str, float]:
        """The sample with the most resident memory: how it splits into heap and file pages."""
        return max((values for _, values in self.samples), key=lambda values: values["VmRSS"])


def worker(bundle: Path, seconds: float, session_config: dict[str, str], threads: int | None, warm_up: bool) -> dict:
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
    with Sampler() as sampler:
        if warm_up:
            runtime.run(clip, sampling_rate=SAMPLING_RATE, max_tokens=8)
            steps["the warm-up run"] = status_mb()
        started = time.perf_counter()
        result = runtime.run(clip, sampling_rate=SAMPLING_RATE, max_tokens=8)
    stages: dict[str, dict[str, float]] = {}
    edge = started
    for stage in STAGES:
        end = edge + result.timings_ms.get(stage, 0.0) / 1000
        inside = [s for t, s in sampler.samples if edge <= t < end]
        if inside:
            stages[stage] = {key: max(s[key] for s in inside) for key in ("VmRSS", "RssAnon", "RssFile")}
        edge = end
    return {
        "runtime": "edgelalm",
        "bundle": str(bundle),
        "seconds": seconds,
        "warm_up": warm_up,
        "session_config": session_config,
        "load_steps": steps,
        "stage_peaks": stages,
        "at_peak": sampler.at_peak(),
        "peak_rss_mb": status_mb()["VmHWM"],
        "timings_ms": result.timings_ms,
    }


def mtmd_worker(bundle: Path, mmproj: Path, seconds: float, threads: int | None) -> dict:
    """llama.cpp's mtmd on the bundle's decoder: a warm-up and one run, sampled throughout."""
    steps = {"python": status_mb()}
    import llama_cpp  # noqa: F401  the library itself, before any model

    from edgelalm.bench.mtmd import measure_mtmd

    steps["libraries"] = status_mb()
    with Sampler() as sampler:
        result = measure_mtmd(bundle, mmproj, seconds, repeats=1, max_tokens=8, threads=threads)
    return {
        "runtime": "llama.cpp mtmd",
        "bundle": str(bundle),
        "mmproj": str(mmproj),
        "seconds": seconds,
        "warm_up": True,
        "session_config": {},
        "load_steps": steps,
        "stage_peaks": {},
        "at_peak": sampler.at_peak(),
        "encoder_compute_buffer_mib": result["encoder_compute_buffer_mib"],
        "peak_rss_mb": status_mb()["VmHWM"],  # the process's high-water mark: measure_mtmd's own and after
        "timings_ms": {stage: values["median"] for stage, values in result["timings_ms"].items()},
    }


def table(results: list[dict]) -> str:
    lines = [
        "| runtime | bundle | encoder session config | step | RSS MB | anonymous MB | file MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        runtime, name = result.get("runtime", "edgelalm"), Path(result["bundle"]).name
        if result.get("mmproj"):
            name += f" + {Path(result['mmproj']).name}"
        config = ",".join(f"{k}={v}" for k, v in result["session_config"].items()) or "-"
        rows = [(f"after {step}", values) for step, values in result["load_steps"].items()]
        prefix = "measured run: " if result.get("warm_up") else ""
        rows += [(f"{prefix}{stage}, its peak", values) for stage, values in result["stage_peaks"].items()]
        rows += [("at the peak", result["at_peak"])] if "at_peak" in result else []
        for step, values in rows:
            lines.append(
                f"| {runtime} | {name} | {config} | {step} | {values['VmRSS']:.0f} | {values['RssAnon']:.0f} | "
                f"{values['RssFile']:.0f} |"
            )
        if result.get("encoder_compute_buffer_mib"):
            buffer = result["encoder_compute_buffer_mib"] * 2**20 / 1e6
            lines.append(
                f"| {runtime} | {name} | {config} | compute buffer reserved for the tower | {buffer:.0f} | | |"
            )
        lines.append(f"| {runtime} | {name} | {config} | **peak (VmHWM)** | **{result['peak_rss_mb']:.0f}** | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--warm-up", action="store_true", help="measure a second run of the clip (bench's steady state)"
    )
    parser.add_argument("--mtmd", type=Path, default=None, help="an mmproj GGUF: measure llama.cpp's mtmd too")
    parser.add_argument("--session-config", action="append", default=[], help="KEY=VALUE for the encoder session")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = dict(entry.split("=", 1) for entry in args.session_config)
    if args.worker:
        if args.mtmd:
            result = mtmd_worker(args.bundles[0], args.mtmd, args.seconds, args.threads)
        else:
            result = worker(args.bundles[0], args.seconds, config, args.threads, args.warm_up)
        print(json.dumps(result))
        return 0
    results = []
    runs = [(bundle, []) for bundle in args.bundles]
    runs += [(args.bundles[0], ["--mtmd", str(args.mtmd)])] if args.mtmd else []
    for bundle, mtmd in runs:
        command = [sys.executable, __file__, str(bundle), "--seconds", str(args.seconds), "--worker", *mtmd]
        command += [f"--session-config={entry}" for entry in args.session_config]
        command += ["--threads", str(args.threads)] if args.threads else []
        command += ["--warm-up"] if args.warm_up else []
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
