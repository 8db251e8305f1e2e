"""What `edgelalm bench` writes: the headline ratios, the machine, results.json, results.csv,
summary.md and bench.png (edgelalm per compressor, llama.cpp mtmd as dashed lines)."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

from edgelalm.bench.measure import STAGES
from edgelalm.bench.mtmd import MTMD_RUNTIME
from edgelalm.bench.plan import BenchPlan
from edgelalm.errors import EdgelalmError
from edgelalm.files import read_json, replaced_file, write_failed, write_json
from edgelalm.runtime.memory import gpu_name

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
SUMMARY_MD = "summary.md"
PLOT_PNG = "bench.png"
RESULT_FILES = (RESULTS_JSON, RESULTS_CSV, SUMMARY_MD, PLOT_PNG)
# An earlier bench's results.json is a few hundred KB; past this it is not one.
_MAX_RESULTS_BYTES = 64 * 2**20


def check_results_folder(out_dir: Path) -> None:
    """Refuse an --out whose result files an earlier bench did not write: a user's own
    summary.md or results.json there was replaced, after the whole run, without a word."""
    present = [name for name in RESULT_FILES if os.path.lexists(out_dir / name)]
    if present and not _is_bench_results(out_dir / RESULTS_JSON):
        raise EdgelalmError(
            f"{out_dir} holds {', '.join(present)} and no results.json of an edgelalm bench: not its "
            f"results, so not replaced (the bench writes {', '.join(RESULT_FILES)} there); choose another --out"
        )


def _is_bench_results(path: Path) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_RESULTS_BYTES:
            return False
        results = read_json(path)
    except (OSError, EdgelalmError):
        return False
    return isinstance(results, dict) and {"machine", "rows", "ratios"} <= results.keys()


def check_rows(rows: list[dict[str, Any]]) -> None:
    """A bench where nothing could be measured is an error, not a report of empty rows; a partial
    one goes on, and says on stderr which points failed."""
    failed = [row for row in rows if "error" in row]
    if failed and len(failed) == len(rows):
        raise EdgelalmError(f"no measurement succeeded; the first: {failed[0]['error']}")
    for row in failed:
        print(
            f"edgelalm: warning: {row['runtime']} {row['compressor']} {row['seconds']:g} s: {row['error']}",
            file=sys.stderr,
        )


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline comparisons, each measured side by side in this run."""

    measured = {(row["runtime"], row["compressor"], row["seconds"]): row for row in rows if "timings_ms" in row}

    def stage(runtime: str, label: str, seconds: float, name: str) -> float | None:
        row = measured.get((runtime, label, seconds))
        return row["timings_ms"][name]["median"] if row else None

    def memory(runtime: str, label: str, seconds: float) -> float | None:
        row = measured.get((runtime, label, seconds))
        return row["peak_rss_mb"] if row else None

    def divide(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    lengths = sorted({row["seconds"] for row in rows})
    out: dict[str, Any] = {"per_length": {}}
    for seconds in lengths:
        out["per_length"][str(seconds)] = {
            "prefill_none_over_avg3": divide(
                stage("edgelalm", "none", seconds, "prefill"), stage("edgelalm", "avg3", seconds, "prefill")
            ),
            "ttft_pytorch_over_edgelalm_none": divide(
                stage("pytorch", "none", seconds, "time_to_first_token"),
                stage("edgelalm", "none", seconds, "time_to_first_token"),
            ),
            "peak_rss_edgelalm_over_pytorch_none": divide(
                memory("edgelalm", "none", seconds), memory("pytorch", "none", seconds)
            ),
        }
        if any(row["runtime"] == MTMD_RUNTIME for row in rows):
            # llama.cpp's own audio path (no compressor) against edgelalm: above 1, edgelalm is faster;
            # the encoder and memory ratios below 1, edgelalm's is shorter or smaller.
            out["per_length"][str(seconds)].update(
                {
                    "ttft_mtmd_over_edgelalm_none": divide(
                        stage(MTMD_RUNTIME, "none", seconds, "time_to_first_token"),
                        stage("edgelalm", "none", seconds, "time_to_first_token"),
                    ),
                    "ttft_mtmd_over_edgelalm_avg3": divide(
                        stage(MTMD_RUNTIME, "none", seconds, "time_to_first_token"),
                        stage("edgelalm", "avg3", seconds, "time_to_first_token"),
                    ),
                    "encoder_edgelalm_none_over_mtmd": divide(
                        stage("edgelalm", "none", seconds, "encoder"), stage(MTMD_RUNTIME, "none", seconds, "encoder")
                    ),
                    "peak_rss_edgelalm_none_over_mtmd": divide(
                        memory("edgelalm", "none", seconds), memory(MTMD_RUNTIME, "none", seconds)
                    ),
                }
            )
    if 5.0 in lengths and 30.0 in lengths:
        out["encoder_5s_over_30s"] = divide(
            stage("edgelalm", "none", 5.0, "encoder"), stage("edgelalm", "none", 30.0, "encoder")
        )
    return out


def machine_description(plan: BenchPlan) -> dict[str, Any]:
    import platform

    import onnxruntime

    from edgelalm.runtime.llama_backend import cpu_name, decide_extra_buffers, import_llama_cpp, llama_system_info

    llama_cpp = import_llama_cpp()

    return {
        "target": plan.target,
        "cpu": cpu_name(),
        "llama_cpp_system_info": llama_system_info(),
        "llama_extra_buffers": decide_extra_buffers(plan.llama_extra_buffers).reason,
        "cores": os.cpu_count(),
        "threads": plan.threads or "default",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "gpu": gpu_name(),
        "llama_cpp_python": llama_cpp.__version__,
    }


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    """RESULT_FILES, each replaced whole (a full disk or an
    interrupt leaves the earlier run's file, not half of this one's): one line if one cannot be."""
    try:
        _write_results(results, out_dir)
    except OSError as error:
        raise write_failed("the results in", out_dir, error) from None


def _write_results(results: dict[str, Any], out_dir: Path) -> None:
    with replaced_file(out_dir / RESULTS_JSON) as scratch:
        write_json(scratch, results)
    with replaced_file(out_dir / RESULTS_CSV) as scratch, scratch.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [
                "runtime",
                "compressor",
                "seconds",
                "audio_tokens",
                *[f"{s}_ms" for s in STAGES],
                "decode_tokens_per_second",
                "kv_cache_mb",
                "peak_rss_mb",
                "peak_gpu_mb",
                "error",
            ]
        )
        for row in results["rows"]:
            timings = row.get("timings_ms", {})
            writer.writerow(
                [
                    row["runtime"],
                    row["compressor"],
                    row["seconds"],
                    row.get("audio_tokens"),
                    *[round(timings[s]["median"], 2) if s in timings else "" for s in STAGES],
                    round(row["decode_tokens_per_second"]["median"], 2) if "decode_tokens_per_second" in row else "",
                    round(row["kv_cache_mb"], 2) if "kv_cache_mb" in row else "",
                    row.get("peak_rss_mb", ""),
                    round(row["peak_gpu_mb"]) if "peak_gpu_mb" in row else "",
                    row.get("error", ""),
                ]
            )
    with replaced_file(out_dir / SUMMARY_MD) as scratch:
        scratch.write_text(summary_markdown(results))
    plot(results, out_dir)


def summary_markdown(results: dict[str, Any]) -> str:
    """One row per measurement; a GPU target's rows add the GPU memory each took."""
    on_gpu = any("peak_gpu_mb" in row for row in results["rows"])
    lines = [
        "| runtime | compressor | clip s | audio tokens | encoder ms | prefill ms | TTFT ms | decode tok/s | KV "
        "MB | peak RSS MB |" + (" peak GPU MB |" if on_gpu else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if on_gpu else ""),
    ]
    for row in results["rows"]:
        gpu = (f" {row['peak_gpu_mb']:.0f} |" if "peak_gpu_mb" in row else " - |") if on_gpu else ""
        if "timings_ms" not in row:
            lines.append(
                f"| {row['runtime']} | {row['compressor']} | {row['seconds']:g} | error: {row.get('error')} | | "
                "| | | | |" + (" |" if on_gpu else "")
            )
            continue
        t = row["timings_ms"]
        spread = f"{t['prefill']['min']:.0f}-{t['prefill']['max']:.0f}"
        kv = f"{row['kv_cache_mb']:.1f}" if "kv_cache_mb" in row else "-"
        lines.append(
            f"| {row['runtime']} | {row['compressor']} | {row['seconds']:g} | {row['audio_tokens']} | "
            f"{t['encoder']['median']:.0f} | {t['prefill']['median']:.0f} ({spread}) | "
            f"{t['time_to_first_token']['median']:.0f} | "
            f"{row['decode_tokens_per_second']['median']:.1f} | {kv} | {row['peak_rss_mb']:.0f} |{gpu}"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["rows"] if row["runtime"] == "edgelalm" and "timings_ms" in row]
    labels = list(dict.fromkeys(row["compressor"] for row in rows))
    lengths = sorted({row["seconds"] for row in rows})
    by_key = {(row["compressor"], row["seconds"]): row for row in rows}
    # llama.cpp mtmd has no compressor: a dashed line per clip length across the compressors.
    mtmd = {row["seconds"]: row for row in results["rows"] if row["runtime"] == MTMD_RUNTIME and "timings_ms" in row}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for seconds in lengths:
        present = [label for label in labels if (label, seconds) in by_key]
        (line,) = axes[0].plot(
            present,
            [by_key[(label, seconds)]["timings_ms"]["prefill"]["median"] for label in present],
            marker="o",
            label=f"{seconds:g} s clip",
        )
        axes[1].plot(
            present,
            [by_key[(label, seconds)]["peak_rss_mb"] for label in present],
            marker="o",
            label=f"{seconds:g} s clip",
            color=line.get_color(),
        )
        if seconds in mtmd:
            style = {"color": line.get_color(), "linestyle": "--", "label": f"llama.cpp mtmd, {seconds:g} s"}
            axes[0].axhline(mtmd[seconds]["timings_ms"]["prefill"]["median"], **style)
            axes[1].axhline(mtmd[seconds]["peak_rss_mb"], **style)
    for label in labels:
        present = [seconds for seconds in lengths if (label, seconds) in by_key]
        axes[2].plot(
            present,
            [by_key[(label, seconds)]["timings_ms"]["time_to_first_token"]["median"] for seconds in present],
            marker="o",
            label=label,
        )
    if mtmd:
        axes[2].plot(
            sorted(mtmd),
            [mtmd[seconds]["timings_ms"]["time_to_first_token"]["median"] for seconds in sorted(mtmd)],
            marker="s",
            linestyle="--",
            color="black",
            label="llama.cpp mtmd",
        )
    axes[0].set(title="decoder prefill vs compressor", ylabel="ms (median)", yscale="log")
    axes[1].set(title="peak RSS vs compressor", ylabel="MB")
    axes[2].set(
        title="time to first token vs audio length",
        xlabel="clip seconds",
        ylabel="ms (median)",
        xscale="log",
        yscale="log",
    )
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"edgelalm bench: {results['model']} ({results['quant']}), {results['machine']['target']}")
    figure.tight_layout()
    with replaced_file(out_dir / PLOT_PNG) as scratch:
        figure.savefig(scratch, dpi=110, format="png")
    plt.close(figure)
