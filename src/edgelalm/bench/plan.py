"""What `edgelalm bench` measures: the plan, the target's settings, and the model and bundles it
needs (exported or reused)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelalm.checks import is_whole_number
from edgelalm.compression import CompressorSpec
from edgelalm.constants import (
    BENCH_COMPRESSORS,
    BENCH_SECONDS,
    MANIFEST_FILE,
    SCAFFOLD_PRESETS,
    EncoderPrecision,
    ExtraBuffers,
    QuantType,
)
from edgelalm.errors import EdgelalmError
from edgelalm.files import files_newer_than, read_json_object
from edgelalm.manifest import bundle_name, read_manifest

# `bench --quick`: what it changes in the plan. No llama.cpp mtmd column: mtmd cannot run the tiny
# preset (llama.cpp's converter needs 3 or more tower layers, mtmd a 30 s window).
QUICK: dict[str, Any] = {
    "model": "tiny",
    "compressors": ("none", "avg3"),
    "seconds": (3.0, 12.0),
    "repeats": 1,
    "max_tokens": 8,
    "mtmd": False,
}


@dataclass
class BenchPlan:
    model: str  # a checkpoint folder or a preset name
    out_dir: Path
    compressors: tuple[str, ...] = BENCH_COMPRESSORS
    seconds: tuple[float, ...] = BENCH_SECONDS
    repeats: int = 3
    max_tokens: int = 32
    quant: QuantType = "q8_0"
    encoder_precision: EncoderPrecision = "fp32"
    threads: int | None = None
    reference: bool = True
    # llama.cpp's own audio path (edgelalm.bench.mtmd) on the same decoder, one row per clip length.
    mtmd: bool = True
    target: str = "cpu-x86_64"
    settings: dict[str, Any] = field(default_factory=dict)
    llama_extra_buffers: ExtraBuffers = "auto"  # see edgelalm.runtime.llama_backend


def target_settings(target: str) -> dict[str, Any]:
    """runtimes/<target>/settings.json: the threads and device a target's benchmark uses
    ({"device": "cpu" or "cuda", "threads": a count or null for the usable cores})."""
    runtimes = Path("runtimes")
    known = sorted(p.parent.name for p in runtimes.glob("*/settings.json") if p.is_file())
    path = runtimes / target / "settings.json"
    if Path(target).name != target or target in ("", ".", "..") or not path.is_file():
        raise EdgelalmError(
            f"target {target!r}: not one of {runtimes.absolute()}'s targets ({', '.join(known) or 'none found here'})"
        )
    settings = read_json_object(path)
    device, threads = settings.get("device", "cpu"), settings.get("threads")
    if device not in ("cpu", "cuda"):
        raise EdgelalmError(f"{path}: device must be cpu or cuda, got {device!r}")
    if threads is not None and (not is_whole_number(threads) or threads < 1):
        raise EdgelalmError(f"{path}: threads must be a count of at least 1 or null, got {threads!r}")
    return settings


def parse_compressor(label: str) -> CompressorSpec:
    """'avg3' -> CompressorSpec('avg', 3); 'unseg' -> CompressorSpec('unseg')."""
    return CompressorSpec.from_label(label)


def check_device(plan: BenchPlan) -> None:
    """Refuse a GPU target on a machine without CUDA before any export: edgelalm's runtime
    and, with the reference on, torch must both reach the GPU."""
    from edgelalm.runtime.pipeline import device_settings

    device = plan.settings.get("device", "cpu")
    device_settings(device)
    if device == "cuda" and plan.reference:
        import torch

        if not torch.cuda.is_available():
            raise EdgelalmError(
                "--target cuda: this torch cannot reach a CUDA GPU, so the reference would run on the CPU; "
                "install a CUDA build of torch or pass --no-reference"
            )


def check_model(plan: BenchPlan) -> None:
    """Refuse a --model that is neither a preset nor a folder, before --out is made for it."""
    from edgelalm import scaffold

    if plan.model not in scaffold.PRESETS and not (Path(plan.model) / "config.json").is_file():
        what = (
            "a folder without config.json: no checkpoint, and no preset"
            if Path(plan.model).is_dir()
            else "neither a checkpoint folder nor a preset"
        )
        raise EdgelalmError(f"--model {plan.model} is {what} ({', '.join(scaffold.PRESETS)})")


def ensure_model(plan: BenchPlan) -> Path:
    from edgelalm import scaffold

    check_model(plan)
    if plan.model not in scaffold.PRESETS:
        return Path(plan.model)
    folder = plan.out_dir / "models" / plan.model
    if not folder.exists():  # written whole or not at all: a folder here is a whole checkpoint
        scaffold.write_preset_checkpoint(folder, plan.model)
    return folder


def changed_since(model_dir: Path, written: Path, out_dir: Path | None = None) -> bool:
    """Whether any file of the checkpoint is newer than `written`: a checkpoint replaced under the
    same path was measured through its predecessor's bundle. Not the files of `out_dir` where it
    lies inside the checkpoint: its own bundles made every run export again (a preset's
    checkpoint, inside `out_dir`, is the checkpoint: all of its files count)."""
    return bool(files_newer_than(model_dir, written.stat().st_mtime, skipped=out_dir))


def ensure_bundle(model_dir: Path, label: str, plan: BenchPlan, share_from: Path | None = None) -> Path:
    """Reuse a bundle of this model, compressor, quant and encoder precision if one was exported
    before; a new one reuses the encoder (a copy) and decoder (a hard link) of `share_from` (the
    same for every compressor: random weights carry no adapter), which saves most of a large
    model's export."""
    from edgelalm.export.bundle import ExportOptions, export_bundle

    folder = plan.out_dir / "bundles" / bundle_name(label, plan.quant, plan.encoder_precision)
    if (folder / MANIFEST_FILE).exists():
        try:
            manifest = read_manifest(folder, verify_files=False)
        except EdgelalmError:
            manifest = None  # unreadable: export it again
        if (
            manifest
            and manifest.decoder
            and manifest.model.source == str(model_dir.resolve())
            and manifest.decoder.quant == plan.quant
            and manifest.encoder.precision == plan.encoder_precision
            and not changed_since(model_dir, folder / MANIFEST_FILE, plan.out_dir)
        ):
            return folder
    export_bundle(
        ExportOptions(
            model_dir,
            folder,
            parse_compressor(label),
            plan.encoder_precision,
            plan.quant,
            None,
            force=True,
            share_from=share_from,
            # The presets' tables were measured with Qwen2-Audio-Instruct's prompt; the 7B preset's
            # folder (the published layout, named like the base model) would be detected as base.
            prompt_format="instruct" if plan.model in SCAFFOLD_PRESETS else None,
        )
    )
    return folder


def ensure_variant_bundles(plan: BenchPlan, variants: dict[str, BenchPlan], label: str = "none") -> dict[str, Path]:
    """One `label` bundle per variant of `plan` (another quant, encoder precision...), each new one
    sharing what it can with the first: for the benchmarks that compare one setting."""
    model_dir = ensure_model(plan)
    bundles: dict[str, Path] = {}
    for name, variant in variants.items():
        bundles[name] = ensure_bundle(model_dir, label, variant, share_from=next(iter(bundles.values()), None))
    return bundles
