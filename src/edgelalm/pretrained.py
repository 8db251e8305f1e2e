"""The default model shipped inside the package, and its LoRA adapters per compressor.

    default_model/edgelalm-default/     Qwen2-Audio checkpoint (safetensors fp16, processor)
    default_model/adapters/<label>/     peft LoRA realigned to compressor <label> (avg2, unseg, ...)

recipes/default_model/ makes all of it (results and WER table in recipes/default_model/results/).
`edgelalm export` uses it when no --model is named.
"""

from __future__ import annotations

from pathlib import Path

from edgelalm.compression import CompressorSpec
from edgelalm.constants import ADAPTER_CONFIG_FILE
from edgelalm.errors import EdgelalmError

DEFAULT_MODEL_ROOT = Path(__file__).parent / "default_model"
DEFAULT_MODEL_NAME = "edgelalm-default"


def default_model_dir() -> Path:
    model_dir = DEFAULT_MODEL_ROOT / DEFAULT_MODEL_NAME
    if not (model_dir / "config.json").is_file():
        raise EdgelalmError(
            f"the default model is missing from this installation ({model_dir}); name a checkpoint with --model"
        )
    return model_dir


def shipped_adapters() -> list[str]:
    """Compressor labels with a shipped adapter, e.g. ['avg2', 'avg3', 'sample3', 'unseg']."""
    root = DEFAULT_MODEL_ROOT / "adapters"
    return sorted(p.name for p in root.iterdir() if (p / ADAPTER_CONFIG_FILE).is_file()) if root.is_dir() else []


def default_adapter_dir(spec: CompressorSpec) -> Path | None:
    """The default model's adapter realigned to `spec`, if one is shipped."""
    folder = DEFAULT_MODEL_ROOT / "adapters" / spec.label
    return folder if (folder / ADAPTER_CONFIG_FILE).is_file() else None
