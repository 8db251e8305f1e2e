"""`edgelalm bench`: latency and memory per compressor and clip length, against PyTorch and
llama.cpp's own audio path.

For one model (a checkpoint folder, or a random-weights preset with realistic shapes), it
exports or reuses a bundle per compressor, then measures each (compressor, clip length) in a
fresh subprocess, so each peak RSS belongs to one configuration: a warm-up run, then repeats,
reported as medians with min and max. The reference runs in the same way, side by side:
transformers' PyTorch model in fp32 with the same compressor in PyTorch between audio tower
and projector, on the same clips. So does llama.cpp's mtmd (edgelalm.bench.mtmd): the bundle's
decoder.gguf with the audio tower converted by llama.cpp's own converter, one row per clip length
(no compressor). Results: results.json, results.csv, summary.md, PNG plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgelalm.bench.llama_cpp_source import check_cache
from edgelalm.bench.measure import (
    STAGES,
    kv_cache_mb,
    measure_edgelalm,
    measure_in_subprocess,
    measure_reference,
    summarize,
    synthetic_clip,
)
from edgelalm.bench.mtmd import MMPROJ_TYPE, MTMD_RUNTIME, ensure_mmproj, explain_failure, mmproj_path
from edgelalm.bench.plan import (
    QUICK,
    BenchPlan,
    check_device,
    check_model,
    ensure_bundle,
    ensure_model,
    ensure_variant_bundles,
    parse_compressor,
    target_settings,
)
from edgelalm.bench.report import check_results_folder, check_rows, machine_description, ratios, write_results
from edgelalm.errors import EdgelalmError

__all__ = [
    "MTMD_RUNTIME",
    "QUICK",
    "STAGES",
    "BenchPlan",
    "check_device",
    "check_results_folder",
    "check_model",
    "check_rows",
    "ensure_bundle",
    "ensure_mmproj",
    "ensure_model",
    "ensure_variant_bundles",
    "explain_failure",
    "kv_cache_mb",
    "machine_description",
    "measure_edgelalm",
    "measure_in_subprocess",
    "measure_reference",
    "parse_compressor",
    "ratios",
    "run_bench",
    "summarize",
    "synthetic_clip",
    "target_settings",
    "write_results",
]


def run_bench(plan: BenchPlan) -> dict[str, Any]:
    from edgelalm.files import folder_lock, make_output_folder

    check_device(plan)
    check_model(plan)
    check_results_folder(plan.out_dir)
    if plan.mtmd and not mmproj_path(plan.out_dir).is_file():
        check_cache()  # the converter comes from it; a converted mmproj is reused without it
    make_output_folder(plan.out_dir.absolute())
    with folder_lock(plan.out_dir, "edgelalm bench"):
        return _run_bench(plan)


def _run_bench(plan: BenchPlan) -> dict[str, Any]:
    from edgelalm.progress import Bar

    model_dir = ensure_model(plan)
    bundles: dict[str, Path] = {}
    for label in plan.compressors:
        bundles[label] = ensure_bundle(model_dir, label, plan, share_from=next(iter(bundles.values()), None))
    points = [("edgelalm", label, seconds) for label in plan.compressors for seconds in plan.seconds]
    if plan.reference:
        points += [
            ("pytorch", label, seconds) for label in plan.compressors[:1] + ("avg3",) for seconds in plan.seconds
        ]
        points = list(dict.fromkeys(points))
    mmproj: Path | None = None
    mmproj_error = ""
    if plan.mtmd:
        # mtmd has no compressor: one row per clip length, on the first bundle's decoder (the
        # same weights in every bundle here: random or merged checkpoints carry no adapter).
        points += [(MTMD_RUNTIME, "none", seconds) for seconds in plan.seconds]
        try:
            mmproj = ensure_mmproj(model_dir, plan.out_dir)
        except EdgelalmError as error:
            mmproj_error = str(error)
    rows = []
    with Bar(len(points), "benchmarking") as bar:
        for runtime, label, seconds in points:
            bar.update(status=f"{runtime} {label} {seconds:g} s")
            result: dict[str, Any]
            if runtime == MTMD_RUNTIME:
                if mmproj is None:
                    result = {"error": mmproj_error}
                else:
                    first = bundles[plan.compressors[0]]
                    result = measure_in_subprocess(runtime, first, label, seconds, plan, mmproj=mmproj)
                if "error" in result:
                    result["error"] = explain_failure(result["error"], model_dir)
            else:
                source = bundles[label] if runtime == "edgelalm" else model_dir
                result = measure_in_subprocess(runtime, source, label, seconds, plan)
            rows.append({"runtime": runtime, "compressor": label, "seconds": seconds, **result})
            bar.update(advance=1)
    check_rows(rows)
    results = {
        "machine": machine_description(plan),
        "model": str(plan.model),
        "quant": plan.quant,
        "encoder_precision": plan.encoder_precision,
        "mmproj_type": MMPROJ_TYPE if plan.mtmd else None,
        "repeats": plan.repeats,
        "max_tokens": plan.max_tokens,
        "rows": rows,
    }
    results["ratios"] = ratios(rows)
    write_results(results, plan.out_dir)
    return results
