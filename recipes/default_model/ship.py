"""Copy the trained default model and its adapters into the package (src/edgelalm/default_model).

    python recipes/default_model/ship.py base build/default-model/base/final
    python recipes/default_model/ship.py adapter build/default-model/adapters/avg2 [avg3 ...]
    python recipes/default_model/ship.py ctc-head recipes/default_model/stages/base14avg/ctc_head.safetensors
    python recipes/default_model/ship.py ctc-head HEAD --into build/exp/candidate   # a candidate, not the package

The base checkpoint is stored in float16 (safetensors) with its processor files; an adapter keeps
only adapter_config.json, adapter_model.safetensors and its realigned CTC head (CTC_HEAD_FILE,
where finetune made one; its layers in float16, as the base head's), under the compressor label it
was trained with (edgelalm_finetune.json).
The CTC head trained beside the base checkpoint goes in beside it (CTC_HEAD_FILE: export writes it
as the bundle's ctc.onnx), with the decoding advice that uses it (DECODING_ADVICE_FILE).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from edgelalm.constants import CTC_HEAD_FILE
from edgelalm.export.ctc import LAYERS_PREFIX
from edgelalm.files import atomic_folder, safetensors_file
from edgelalm.manifest import DecodingInfo, WindowsInfo, write_decoding_advice, write_windows_advice
from edgelalm.pretrained import DEFAULT_MODEL_NAME, DEFAULT_MODEL_ROOT
from edgelalm.scaffold import write_processor
from edgelalm.training.finetune import adapter_compressor

# How `run` cuts long clips for this model unless told (the bundle's advice): measured on the
# held-out 15-66 s sets (recipes/default_model/README.md, "Long clips through the runtime's
# windowing"), 8 s windows cut at a pause score 11-25 points better than full 30 s windows; 4-12 s
# were within 2.5 points.
WINDOWS_ADVICE = WindowsInfo(mode="each", seconds=8.0)
# How `run` decodes for this model unless told: a beam of 4, joint with the CTC head (recipes/default_model/README.md,
# "The models before the shipped one": the none bundle held out, greedy 46.2%, beam 4 alone 42.7%, joint 30-31%). The
# weight was chosen on a development set of fresh clips, not the test sets (ctc_weight_sweep.py,
# results/ctc-weight/dev/): 0.5 best of 0.3 / 0.5 / 0.7 for every compressor, each with its head.
DECODING_ADVICE = DecodingInfo(beam_size=4, ctc_weight=0.5)


def ship_base(checkpoint: Path, target: Path = DEFAULT_MODEL_ROOT / DEFAULT_MODEL_NAME) -> Path:
    """The checkpoint in float16 with its processor files and windows advice, replacing `target`
    whole (the shipped model, or a candidate folder to measure before shipping): its CTC head and
    decoding advice go in after it (`ship_ctc_head`)."""
    model = Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32, use_safetensors=True)
    processor = Qwen2AudioProcessor.from_pretrained(checkpoint)
    with atomic_folder(target, force=True) as staging:
        model.to(torch.float16).save_pretrained(staging, safe_serialization=True)
        write_processor(staging, model.config, processor.tokenizer)
        write_windows_advice(staging, WINDOWS_ADVICE)
    return target


def ship_ctc_head(head: Path, target: Path = DEFAULT_MODEL_ROOT / DEFAULT_MODEL_NAME) -> Path:
    """The head (a training run's head file: blank and log_scale, and its layers' tensors, stored
    in float16 as the model's are) and the decoding advice, into the shipped model (or a copy of
    it: `target`, a candidate to measure before shipping)."""
    write_head(head, target / CTC_HEAD_FILE)
    write_decoding_advice(target, DECODING_ADVICE)
    return target / CTC_HEAD_FILE


def write_head(head: Path, out: Path) -> None:
    """A CTC head file as shipped: its layers' tensors in float16, as the model's are (half the
    size), the rest (blank, log_scale, a realigned head's map) in float32; its metadata kept."""
    with safetensors_file(head) as stored:
        tensors = {
            name: stored.get_tensor(name).to(torch.float16 if name.startswith(LAYERS_PREFIX) else torch.float32)
            for name in stored.keys()
        }
        metadata = stored.metadata()
    save_file(tensors, str(out), metadata=metadata)


def ship_adapter(folder: Path) -> Path:
    """The LoRA and, where finetune realigned one, the CTC head realigned to its compressor."""
    label = adapter_compressor(folder)
    if label is None:
        raise SystemExit(f"{folder}: neither its finetune record nor its CTC head says which compressor it is for")
    target = DEFAULT_MODEL_ROOT / "adapters" / label
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = DEFAULT_MODEL_NAME  # not this machine's path
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy2(folder / "adapter_model.safetensors", target / "adapter_model.safetensors")
    if (folder / CTC_HEAD_FILE).is_file():
        write_head(folder / CTC_HEAD_FILE, target / CTC_HEAD_FILE)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("base", "adapter", "ctc-head"))
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument(
        "--into",
        type=Path,
        default=None,
        help="base, ctc-head: the model folder to write instead of the package's (a candidate to measure "
        "before shipping; wer_table.py --model takes it with the package's adapters)",
    )
    args = parser.parse_args(argv)
    if args.kind == "adapter" and args.into is not None:
        parser.error("--into names a model folder; adapters go into the package's adapters/")
    target = args.into or DEFAULT_MODEL_ROOT / DEFAULT_MODEL_NAME
    for folder in args.folders:
        if args.kind == "adapter":
            shipped = ship_adapter(folder)
        else:
            shipped = {"base": ship_base, "ctc-head": ship_ctc_head}[args.kind](folder, target)
        size = sum(p.stat().st_size for p in [shipped, *shipped.rglob("*")] if p.is_file())
        print(f"{folder} -> {shipped} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
