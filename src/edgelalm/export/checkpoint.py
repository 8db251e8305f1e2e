"""Open a Qwen2-Audio checkpoint folder (the layout of Qwen2-Audio-7B-Instruct) safely.

Weights are read through safetensors only, never unpickled, and only the tensors a stage
needs: exporting the audio half of a 7B never loads its 7B decoder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from torch import nn

from edgelalm.errors import EdgelalmError
from edgelalm.manifest import WindowsInfo, read_windows_advice

if TYPE_CHECKING:  # transformers is imported lazily, when a checkpoint is opened
    from transformers import Qwen2AudioConfig, Qwen2AudioProcessor

QWEN2_AUDIO_MODEL_TYPE = "qwen2_audio"
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# save_pretrained writes the release names (audio_tower.*); transformers' in-memory names
# carry a `model.` prefix. Accept both.
AUDIO_TOWER_PREFIXES = ("audio_tower.", "model.audio_tower.")
PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")
# Stored decoder names -> canonical Qwen2ForCausalLM names (model.layers.N..., lm_head.weight),
# for the release layout and for transformers 5's in-memory layout.
DECODER_RENAMES = (
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
)


@dataclass
class Checkpoint:
    """A validated checkpoint folder: its config, processor, and where each tensor lives."""

    path: Path
    config: Qwen2AudioConfig
    processor: Qwen2AudioProcessor
    tensor_files: dict[str, Path]
    windows_advice: WindowsInfo | None = None  # its WINDOWS_ADVICE_FILE, for the manifest

    @property
    def name(self) -> str:
        return model_name(self.path)

    def tensors(self, prefixes: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name without prefix, tensor) for every tensor under the first prefix present."""
        prefix = next((p for p in prefixes if any(k.startswith(p) for k in self.tensor_files)), None)
        if prefix is None:
            raise EdgelalmError(f"{self.path}: no tensors named {' or '.join(p + '*' for p in prefixes)}")
        by_file: dict[Path, list[str]] = {}
        for key, file in self.tensor_files.items():
            if key.startswith(prefix):
                by_file.setdefault(file, []).append(key)
        for file, keys in by_file.items():
            with safe_open(str(file), framework="pt") as weights:
                for key in keys:
                    yield key[len(prefix) :], weights.get_tensor(key)

    def decoder_tensor_keys(self) -> dict[str, str]:
        """Canonical decoder tensor name (model.layers.0.self_attn.q_proj.weight, lm_head.weight,
        ...) -> the name stored in the checkpoint."""
        keys = {}
        for stored in self.tensor_files:
            for prefix, canonical_prefix in DECODER_RENAMES:
                if stored.startswith(prefix):
                    keys[canonical_prefix + stored[len(prefix) :]] = stored
                    break
        if not keys:
            raise EdgelalmError(f"{self.path}: no language-model tensors (language_model.*) in its weights")
        return keys

    def tensor_shape(self, stored_key: str) -> tuple[int, ...]:
        """Shape from the safetensors header, without reading the tensor."""
        with safe_open(str(self.tensor_files[stored_key]), framework="pt") as weights:
            return tuple(weights.get_slice(stored_key).get_shape())

    def tensor(self, stored_key: str) -> torch.Tensor:
        with safe_open(str(self.tensor_files[stored_key]), framework="pt") as weights:
            return weights.get_tensor(stored_key)

    def load_audio_tower(self) -> nn.Module:
        """The audio tower in float32, with its weights and nothing else loaded."""
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

        tower = Qwen2AudioEncoder(self.config.audio_config)
        _load_exactly(tower, dict(self.tensors(AUDIO_TOWER_PREFIXES)), self.path, "audio tower")
        return tower.float().eval()

    def load_projector(self) -> nn.Linear:
        audio_width = self.config.audio_config.d_model
        hidden = self.config.text_config.hidden_size
        projector = nn.Linear(audio_width, hidden)
        state = {k.removeprefix("linear."): v for k, v in self.tensors(PROJECTOR_PREFIXES)}
        _load_exactly(projector, state, self.path, "projector")
        return projector.float().eval()


def _load_exactly(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise EdgelalmError(
            f"{path}: the {what} weights do not fit the config "
            f"(missing: {', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise EdgelalmError(
                f"{path}: {what} tensor {key} has shape {tuple(tensor.shape)}, "
                f"the config says {tuple(expected[key].shape)}"
            )
    module.load_state_dict({k: v.float() for k, v in state.items()})


def model_name(path: Path) -> str:
    """The model's name for a checkpoint folder: the folder's own name, or for a Hugging Face cache
    snapshot (.../models--Qwen--Qwen2-Audio-7B-Instruct/snapshots/<commit>) the repository's name,
    not the commit hash."""
    path = Path(path).absolute()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


def open_checkpoint(path: Path) -> Checkpoint:
    """Validate `path` as a Qwen2-Audio checkpoint; every refusal names its cause."""
    if not path.exists():
        raise EdgelalmError(f"model folder not found: {path}")
    if not path.is_dir():
        raise EdgelalmError(f"{path} is a file; a checkpoint is a folder (config.json, *.safetensors, ...)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise EdgelalmError(f"{path} is not a Hugging Face checkpoint: it has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise EdgelalmError(f"{config_file} is not valid JSON: {error}") from None
    if model_type != QWEN2_AUDIO_MODEL_TYPE:
        raise EdgelalmError(
            f"{path} holds a {model_type or 'unknown'!r} model, not Qwen2-Audio (model_type 'qwen2_audio')"
        )
    tensor_files = _index_safetensors(path)

    from transformers import Qwen2AudioConfig, Qwen2AudioProcessor

    config = Qwen2AudioConfig.from_pretrained(path)
    try:
        processor = Qwen2AudioProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        raise EdgelalmError(f"{path}: cannot load its processor (tokenizer + feature extractor): {error}") from None
    advice = read_windows_advice(path, float(processor.feature_extractor.chunk_length))
    return Checkpoint(path=path, config=config, processor=processor, tensor_files=tensor_files, windows_advice=advice)


def _index_safetensors(path: Path) -> dict[str, Path]:
    """tensor name -> the .safetensors file holding it (single file or sharded index)."""
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES)
        if pickles:
            raise EdgelalmError(
                f"{path} holds only pickle weights ({', '.join(pickles[:3])}); edgelalm reads "
                "safetensors only, since unpickling can run arbitrary code. Convert them with "
                "transformers (save_pretrained(..., safe_serialization=True)) from a source you trust"
            )
        raise EdgelalmError(f"{path} has no *.safetensors weight files")
    tensor_files: dict[str, Path] = {}
    for file in weight_files:
        try:
            with safe_open(str(file), framework="pt") as weights:
                for key in weights.keys():
                    tensor_files[key] = file
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise EdgelalmError(f"{file} is not a readable safetensors file: {error}") from None
    return tensor_files
