"""`edgelalm doctor`: what this machine is and whether edgelalm will run on it; what a user
pastes into a bug report. Torch-free (it says whether the export extra is installed, without
importing it).
"""

from __future__ import annotations

import importlib.util
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from edgelalm.constants import EXPORT_PACKAGES
from edgelalm.errors import EdgelalmError, printable
from edgelalm.runtime.llama_backend import (
    ExtraBuffers,
    check_threads,
    cpu_flags,
    cpu_name,
    decide_extra_buffers,
    import_llama_cpp,
    llama_system_info,
    usable_cores,
)
from edgelalm.runtime.onnx_backend import import_onnxruntime

# CPU flags (as /proc/cpuinfo spells them) that decide which kernels llama.cpp and onnxruntime run.
NOTABLE_CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


def package_version(package: str) -> str | None:
    """The installed distribution's version; None where it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_report(threads: int | None, extra_buffers: ExtraBuffers) -> dict[str, Any]:
    """The machine's report. A part that cannot be found (a library that does not load, more
    threads than the machine has) holds {"error": line} and its line is listed in "errors": a
    machine where llama.cpp does not load is the one whose report a bug needs most."""
    errors: list[str] = []

    def part(read: Callable[[], Any]) -> Any:
        try:
            return read()
        except EdgelalmError as error:
            errors.append(str(error))
            return {"error": str(error)}

    def onnxruntime_part() -> dict[str, Any]:
        # numpy first: onnxruntime's native initialisation imports it, and a Ctrl-C there printed
        # a traceback of its own before edgelalm's line.
        import numpy  # noqa: F401

        onnxruntime = import_onnxruntime()
        return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}

    def llama_part() -> dict[str, Any]:
        llama_cpp = import_llama_cpp()
        decision = decide_extra_buffers(extra_buffers)
        return {
            "system_info": llama_system_info(),
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "extra_buffers": {"enabled": decision.enabled, "reason": decision.reason},
        }

    flags = cpu_flags()
    report = {
        "edgelalm": package_version("edgelalm"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {
            "name": cpu_name(),
            "usable_cores": usable_cores(),
            "features": [flag for flag in NOTABLE_CPU_FLAGS if flags and flag in flags] if flags is not None else None,
        },
        "threads": part(lambda: check_threads(threads)),
        "onnxruntime": part(onnxruntime_part),
        "llama_cpp_python": package_version("llama_cpp_python"),
        "llama_cpp": part(llama_part),
        # find_spec, not import: importing torch costs seconds and memory.
        "export_extra": {
            name: package_version(name) if importlib.util.find_spec(name) else None for name in EXPORT_PACKAGES
        },
    }
    report["errors"] = list(dict.fromkeys(errors))
    return report


def bundle_report(bundle: Path, threads: int | None, extra_buffers: ExtraBuffers, device: str) -> dict[str, Any]:
    """Verify every file of `bundle` against its manifest, then run it once in a child process."""
    from edgelalm.manifest import read_manifest
    from edgelalm.runtime.canary import run_bundle_canary

    started = time.perf_counter()
    manifest = read_manifest(bundle)
    verified_ms = (time.perf_counter() - started) * 1000
    report: dict[str, Any] = {
        "path": str(bundle),
        "model": manifest.model.name,
        # Labels as `run --compressor` takes them (avg3, not avg), every one of a bundle of several.
        "compressor": "+".join(manifest.compressors) or manifest.compressor.spec.label,
        "quant": manifest.decoder.quant if manifest.decoder else None,
        "files_verified": len(manifest.files),
        "verify_ms": round(verified_ms, 1),
    }
    report["canary"] = run_bundle_canary(bundle, threads=threads, extra_buffers=extra_buffers, device=device)
    return report


def format_machine(machine: dict[str, Any]) -> str:
    cpu, threads, onnxruntime, llama = (machine[key] for key in ("cpu", "threads", "onnxruntime", "llama_cpp"))
    features = " ".join(cpu["features"]) if cpu["features"] is not None else "unknown (no /proc/cpuinfo)"
    export = machine["export_extra"]
    missing = [name for name, version in export.items() if version is None]

    def failed(part: Any) -> str | None:
        return f"error: {part['error']}" if isinstance(part, dict) and "error" in part else None

    lines = [
        f"edgelalm          {machine['edgelalm']}",
        f"python            {machine['python']} on {machine['platform']}",
        f"cpu               {cpu['name']}, {cpu['usable_cores']} usable cores",
        f"cpu features      {features}",
        "threads           " + (failed(threads) or f"{threads} (onnxruntime and llama.cpp)"),
        "onnxruntime       "
        + (failed(onnxruntime) or f"{onnxruntime['version']}; providers: {', '.join(onnxruntime['providers'])}"),
    ]
    if failed(llama):
        lines.append(f"llama-cpp-python  {machine['llama_cpp_python']}; {failed(llama)}")
    else:
        lines += [
            f"llama-cpp-python  {machine['llama_cpp_python']}; GPU offload: {'yes' if llama['gpu_offload'] else 'no'}",
            f"llama.cpp         {llama['system_info']}",
            f"extra buffers     {llama['extra_buffers']['reason']}",
        ]
    lines.append(
        "export extra      "
        + (
            ", ".join(f"{name} {version}" for name, version in export.items())
            if not missing
            else f"missing {', '.join(missing)} (pip install 'edgelalm[export]' to export bundles)"
        )
    )
    return "\n".join(lines)


def format_bundle(bundle: dict[str, Any]) -> str:
    canary = bundle["canary"]
    timings = canary["timings_ms"]
    # The manifest's strings and the path as text, not as terminal codes (`inspect` escapes them too).
    path, model, compressor, quant = (printable(str(bundle[key])) for key in ("path", "model", "compressor", "quant"))
    lines = [
        f"bundle            {path}: {model}, {compressor}, {quant}; "
        f"{bundle['files_verified']} files match the manifest ({bundle['verify_ms']:.0f} ms)",
        f"canary run        ok in a child process: {canary['audio_seconds']:g} s synthetic clip -> "
        f"{canary['audio_tokens']} audio tokens, {canary['generated_tokens']} tokens generated; weights in "
        f"{printable(', '.join(canary['weight_buffers']))}",
        f"canary timings    load {canary['load_ms']:.0f} ms, encoder {timings['encoder']:.0f} ms, prefill "
        f"{timings['prefill']:.0f} ms, first token {timings['time_to_first_token']:.0f} ms, decode "
        f"{canary['decode_tokens_per_second']:.1f} tokens/s, peak RSS {canary['peak_rss_mb']:.0f} MB",
        "canary answers    ok as `run` decodes: "
        + "; ".join(f"{printable(label)} ({how})" for label, how in canary["compressors_run"].items()),
    ]
    return "\n".join(lines)
