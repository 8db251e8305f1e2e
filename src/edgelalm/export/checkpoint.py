"""Open a Qwen2-Audio checkpoint folder (the layout of Qwen2-Audio-7B-Instruct) safely.

Weights are read through safetensors only, never unpickled, and only the tensors a stage
needs: exporting the audio half of a 7B never loads its 7B decoder.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgelalm.checks import is_real_number, is_whole_number, short_repr
from edgelalm.constants import FEATURES_KIND, LLAMA_MAX_LAYERS, MEL_FILTERS_FILE, EncoderPrecision
from edgelalm.errors import EdgelalmError, error_gist
from edgelalm.export.ctc import has_ctc_head
from edgelalm.files import read_json_object, safetensors_file
from edgelalm.manifest import (
    MAX_N_FFT,
    SAMPLING_RATES,
    DecodingInfo,
    FeaturesInfo,
    WindowsInfo,
    check_features,
    read_decoding_advice,
    read_windows_advice,
)

if TYPE_CHECKING:  # transformers is imported lazily, when a checkpoint is opened
    from transformers import Qwen2AudioConfig, Qwen2AudioProcessor

QWEN2_AUDIO_MODEL_TYPE = "qwen2_audio"
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# save_pretrained writes the release names (audio_tower.*); transformers' in-memory names
# carry a `model.` prefix. Accept both.
AUDIO_TOWER_PREFIXES = ("audio_tower.", "model.audio_tower.")
PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")
# safetensors dtypes of a tower whose MatMul weights fp16w stores as they are: float16 exactly, and
# bfloat16 too but for magnitudes below float16's normal range (6.1e-5), rounded by at most 3e-8.
SIXTEEN_BIT_DTYPES = {"F16", "BF16"}
FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}
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
    decoding_advice: DecodingInfo | None = None  # its DECODING_ADVICE_FILE, for the manifest
    generation_eos_ids: list[int] | None = None  # generation_config.json's eos_token_id, checked

    @property
    def name(self) -> str:
        return model_name(self.path)

    def features(self) -> FeaturesInfo:
        """The manifest's feature settings: the feature extractor's, and the tower's window."""
        extractor = self.processor.feature_extractor
        return FeaturesInfo(
            kind=FEATURES_KIND,
            sampling_rate=extractor.sampling_rate,
            num_mel_bins=extractor.feature_size,
            n_fft=extractor.n_fft,
            hop_length=extractor.hop_length,
            window_seconds=float(extractor.chunk_length),
            window_mel_frames=2 * self.config.audio_config.max_source_positions,
            mel_filters_file=MEL_FILTERS_FILE,
        )

    def _first_prefix(self, prefixes: tuple[str, ...]) -> str:
        """The one of `prefixes` the stored names use; both (two copies of a part, say a save of
        each layout in one folder) refused: which copy is the model is not for export to guess."""
        present = [p for p in prefixes if any(k.startswith(p) for k in self.tensor_files)]
        if not present:
            raise EdgelalmError(f"{self.path}: no tensors named {' or '.join(p + '*' for p in prefixes)}")
        if len(present) > 1:
            raise EdgelalmError(
                f"{self.path}: its weights hold tensors named both {' and '.join(p + '*' for p in present)}: two "
                "copies of one part (keep one layout)"
            )
        return present[0]

    def tensors(self, prefixes: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name without prefix, tensor) for every tensor under the first prefix present."""
        prefix = self._first_prefix(prefixes)
        by_file: dict[Path, list[str]] = {}
        for key, file in self.tensor_files.items():
            if key.startswith(prefix):
                by_file.setdefault(file, []).append(key)
        for file, keys in by_file.items():
            with safetensors_file(file) as weights:
                for key in keys:
                    yield key[len(prefix) :], weights.get_tensor(key)

    def decoder_tensor_keys(self) -> dict[str, str]:
        """Canonical decoder tensor name (model.layers.0.self_attn.q_proj.weight, lm_head.weight,
        ...) -> the name stored in the checkpoint."""
        keys: dict[str, str] = {}
        for stored in self.tensor_files:
            for prefix, canonical_prefix in DECODER_RENAMES:
                if stored.startswith(prefix):
                    canonical = canonical_prefix + stored[len(prefix) :]
                    if canonical in keys:  # the last one read had won, silently
                        raise EdgelalmError(
                            f"{self.path}: the decoder tensor {canonical} is stored twice, as {keys[canonical]} and "
                            f"{stored}: two copies of the decoder (keep one layout)"
                        )
                    keys[canonical] = stored
                    break
        if not keys:
            raise EdgelalmError(f"{self.path}: no language-model tensors (language_model.*) in its weights")
        return keys

    def check_shapes(self) -> None:
        """The tower's, projector's and decoder's stored tensors are those the config describes,
        shape for shape: the headers against models built on the meta device, so a config that
        disagrees with its weights (say a max_source_positions of 10^9) is refused before anything
        is allocated or written."""
        from transformers import Qwen2ForCausalLM
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

        self.check_vocab_sizes()  # first: a tokenizer past the embeddings says more than a shape
        # Before building: a config of 10^9 layers would take hours and gigabytes on the meta device.
        stored_layers = {
            "audio_config.encoder_layers": (
                self.config.audio_config.encoder_layers,
                list(self._stored_shapes(AUDIO_TOWER_PREFIXES)),
            ),
            "text_config.num_hidden_layers": (
                self.config.text_config.num_hidden_layers,
                list(self.decoder_tensor_keys()),
            ),
        }
        for field_name, (layers, names) in stored_layers.items():
            held = len({match[1] for name in names if (match := _LAYER_NAME.match(name))})
            if layers != held:
                raise EdgelalmError(
                    f"{self.path}: config.json's {field_name} is {layers}; its weights hold {held} layers"
                )
        try:
            with torch.device("meta"):
                tower = Qwen2AudioEncoder(self.config.audio_config)
                projector = self._new_projector()
                decoder = Qwen2ForCausalLM(self.config.text_config)
        except Exception as error:  # a pad token past the vocabulary, an unknown activation (KeyError), ...
            raise EdgelalmError(
                f"{self.path}: its config.json does not describe a buildable model: {error_gist(error)}"
            ) from None
        _check_shapes(tower, self._stored_shapes(AUDIO_TOWER_PREFIXES), self.path, "audio tower")
        projector_shapes = {k.removeprefix("linear."): v for k, v in self._stored_shapes(PROJECTOR_PREFIXES).items()}
        _check_shapes(projector, projector_shapes, self.path, "projector")
        decoder_shapes = {canonical: self.tensor_shape(key) for canonical, key in self.decoder_tensor_keys().items()}
        # Without its own lm_head llama.cpp reads the embeddings as the output layer (tied): what the
        # config must say, else transformers' model has an output layer of its own that is missing.
        if "lm_head.weight" not in decoder_shapes and not self.config.text_config.tie_word_embeddings:
            raise EdgelalmError(
                f"{self.path}: its weights hold no lm_head.weight and text_config.tie_word_embeddings is false: the "
                "decoder's output layer is missing"
            )
        decoder_shapes.setdefault("lm_head.weight", decoder_shapes.get("model.embed_tokens.weight", ()))
        _check_shapes(decoder, decoder_shapes, self.path, "decoder")

    def check_vocab_sizes(self) -> None:
        """The tokenizer must fit in the embedding rows, and the config must agree with them."""
        embeddings = self.decoder_tensor_keys().get("model.embed_tokens.weight")
        if embeddings is None:
            return  # check_shapes names it as missing
        embedding_rows = self.tensor_shape(embeddings)[0]
        config_vocab = self.config.text_config.vocab_size
        tokenizer_size = max(self.processor.tokenizer.get_vocab().values()) + 1
        if embedding_rows != config_vocab:
            raise EdgelalmError(
                f"{self.path}: vocab size mismatch: config.json says {config_vocab}, "
                f"the embeddings have {embedding_rows} rows"
            )
        if tokenizer_size > embedding_rows:
            raise EdgelalmError(
                f"{self.path}: vocab size mismatch: the tokenizer has {tokenizer_size} tokens, "
                f"the embeddings have {embedding_rows} rows"
            )

    def _stored_shapes(self, prefixes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        """(name without prefix -> shape) under the first prefix present, from the headers."""
        prefix = self._first_prefix(prefixes)
        return {key[len(prefix) :]: self.tensor_shape(key) for key in self.tensor_files if key.startswith(prefix)}

    def tensor_shape(self, stored_key: str) -> tuple[int, ...]:
        """Shape from the safetensors header, without reading the tensor."""
        with safetensors_file(self.tensor_files[stored_key]) as weights:
            return tuple(weights.get_slice(stored_key).get_shape())

    def tensor(self, stored_key: str) -> torch.Tensor:
        with safetensors_file(self.tensor_files[stored_key]) as weights:
            return weights.get_tensor(stored_key)

    def finite_float_tensors(self, prefixes: tuple[str, ...], what: str) -> dict[str, torch.Tensor]:
        """`tensors(prefixes)` in float32, refusing NaN or infinite values by name: they would
        otherwise surface later as an export that disagrees with itself."""
        state = {}
        for name, tensor in self.tensors(prefixes):
            state[name] = tensor.float()
            if not torch.isfinite(state[name]).all():
                raise EdgelalmError(f"{self.path}: {what} tensor {name} holds NaN or infinite values")
        return state

    def load_audio_tower(self) -> nn.Module:
        """The audio tower in float32, with its weights and nothing else loaded."""
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

        tower = Qwen2AudioEncoder(self.config.audio_config)
        # open_checkpoint has checked every stored shape against the config (check_shapes).
        tower.load_state_dict(self.finite_float_tensors(AUDIO_TOWER_PREFIXES, "audio tower"))
        return tower.float().eval()

    def _new_projector(self) -> nn.Linear:
        return nn.Linear(self.config.audio_config.d_model, self.config.text_config.hidden_size)

    def load_projector(self) -> nn.Linear:
        projector = self._new_projector()
        state = self.finite_float_tensors(PROJECTOR_PREFIXES, "projector")
        projector.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        return projector.float().eval()


# A layer's tensors: layers.N.* in the tower, model.layers.N.* in the decoder.
_LAYER_NAME = re.compile(r"(?:model\.)?layers\.(\d+)\.")


def _check_shapes(module: nn.Module, stored_shapes: dict[str, tuple[int, ...]], path: Path, what: str) -> None:
    """The stored tensors are exactly the module's, shape for shape; else one line naming the first."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(stored_shapes))
    unexpected = sorted(set(stored_shapes) - set(expected))
    if missing or unexpected:
        raise EdgelalmError(
            f"{path}: the {what} weights do not fit the config "
            f"(missing: {', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'})"
        )
    for key, shape in stored_shapes.items():
        if tuple(shape) != tuple(expected[key].shape):
            raise EdgelalmError(
                f"{path}: {what} tensor {key} has shape {tuple(shape)}, the config says {tuple(expected[key].shape)}"
            )


# Sizes a config must give as positive integers: transformers checks their types, not their values.
POSITIVE_AUDIO_FIELDS = (
    "num_mel_bins",
    "d_model",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_ffn_dim",
    "max_source_positions",
)
POSITIVE_TEXT_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)
# The manifest's decoder.context_length (the GGUF's, an int32 in llama.cpp) holds at most this.
MAX_CONTEXT_LENGTH = 2**31 - 1


def _check_config(config_file: Path, config: Qwen2AudioConfig) -> None:
    """Sizes that cannot build a model are refused here, in one line, not by torch or llama.cpp."""
    sections = (
        ("audio_config", config.audio_config, POSITIVE_AUDIO_FIELDS),
        ("text_config", config.text_config, POSITIVE_TEXT_FIELDS),
    )
    for section_name, section, fields in sections:
        for field_name in fields:
            value = getattr(section, field_name, None)
            if not is_whole_number(value) or value < 1:
                raise EdgelalmError(
                    f"{config_file}: {section_name}.{field_name} must be a positive integer, not {value!r}"
                )
    audio, text = config.audio_config, config.text_config
    divisions = (
        ("audio_config.d_model", audio.d_model, "audio_config.encoder_attention_heads", audio.encoder_attention_heads),
        ("text_config.hidden_size", text.hidden_size, "text_config.num_attention_heads", text.num_attention_heads),
        (
            "text_config.num_attention_heads",
            text.num_attention_heads,
            "text_config.num_key_value_heads",
            text.num_key_value_heads,
        ),
    )
    for whole_name, whole, part_name, part in divisions:
        if whole % part:
            raise EdgelalmError(f"{config_file}: {whole_name} ({whole}) is not a multiple of {part_name} ({part})")
    if text.max_position_embeddings > MAX_CONTEXT_LENGTH:
        raise EdgelalmError(
            f"{config_file}: text_config.max_position_embeddings must be at most {MAX_CONTEXT_LENGTH}, "
            f"not {text.max_position_embeddings}"
        )
    # The GGUF stores these as float32: 1e-50 became 0, 1e300 did not fit (a traceback at step 6).
    if not (is_real_number(text.rms_norm_eps) and np.float32(text.rms_norm_eps) > 0):
        raise EdgelalmError(
            f"{config_file}: text_config.rms_norm_eps must be a positive float32, not {text.rms_norm_eps!r}"
        )
    if getattr(text, "model_type", "qwen2") != "qwen2":  # transformers would build that model instead
        raise EdgelalmError(
            f"{config_file}: text_config.model_type is {short_repr(text.model_type, 60)}; "
            "Qwen2-Audio's decoder is qwen2"
        )
    # llama.cpp's qwen2 graph computes SiLU (SwiGLU) and a head size of hidden_size / heads: another
    # activation exported with exit 0 and answered from other logits.
    if getattr(text, "hidden_act", "silu") not in ("silu", "swish"):  # transformers computes both as SiLU
        raise EdgelalmError(
            f"{config_file}: text_config.hidden_act is {text.hidden_act!r}; the GGUF's qwen2 decoder computes silu"
        )
    head_dim = getattr(text, "head_dim", None)
    if head_dim is not None and head_dim != text.hidden_size // text.num_attention_heads:
        raise EdgelalmError(
            f"{config_file}: text_config.head_dim is {head_dim!r}, not hidden_size / num_attention_heads "
            f"({text.hidden_size // text.num_attention_heads}); edgelalm's GGUF writes that head size only"
        )
    # The GGUF carries plain RoPE and full attention (edgelalm.export.decoder): a decoder trained
    # with scaled RoPE or sliding windows would export with exit 0 and answer wrongly in llama.cpp.
    rope = getattr(text, "rope_parameters", None) or {}
    rope_type, rope_theta = rope.get("rope_type", "default"), rope.get("rope_theta", getattr(text, "rope_theta", 1.0))
    if rope_type != "default":
        raise EdgelalmError(f"{config_file}: text_config's rope_type {rope_type!r}: edgelalm exports plain RoPE only")
    if not is_real_number(rope_theta) or not 0 < rope_theta <= np.finfo(np.float32).max:
        raise EdgelalmError(f"{config_file}: text_config's rope_theta must be a positive number, not {rope_theta!r}")
    # transformers' own reading: layer_types decides (use_sliding_window with max_window_layers past
    # the last layer, or every layer "full_attention", is full attention, refused before).
    layer_types = getattr(text, "layer_types", None)
    if "sliding_attention" in layer_types if layer_types is not None else getattr(text, "use_sliding_window", False):
        raise EdgelalmError(
            f"{config_file}: text_config uses sliding-window attention; edgelalm exports full attention only"
        )


def model_name(path: Path) -> str:
    """The model's name for a checkpoint folder: the folder's own name, or for a Hugging Face cache
    snapshot (.../models--Qwen--Qwen2-Audio-7B-Instruct/snapshots/<commit>) the repository's name,
    not the commit hash."""
    # Resolved: a link to a folder is named as the folder is, by the prompt format's detection and
    # by the bundle's default name alike (they differed: `mybase` -> Qwen2-Audio-7B was detected as
    # an Instruct model under one name and exported under the other).
    path = Path(path).resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


# A byte-level BPE tokenizer's own files, where a checkpoint has no tokenizer.json.
BPE_FILES = ("vocab.json", "merges.txt")


def open_checkpoint(path: Path) -> Checkpoint:
    """Validate `path` as a Qwen2-Audio checkpoint; every refusal names its cause."""
    if not path.exists():
        raise EdgelalmError(f"model folder not found: {path}")
    if not path.is_dir():
        raise EdgelalmError(f"{path} is a file; a checkpoint is a folder (config.json, *.safetensors, ...)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise EdgelalmError(f"{path} is not a Hugging Face checkpoint: it has no config.json")
    config_data = read_json_object(config_file)
    model_type = config_data.get("model_type")
    if model_type != QWEN2_AUDIO_MODEL_TYPE:
        raise EdgelalmError(
            f"{path} holds a {short_repr(model_type, 60) if model_type else 'unknown'} model, not Qwen2-Audio "
            "(model_type 'qwen2_audio')"
        )
    # Before transformers reads them: its config makes a list entry per layer (10^9 layers hung).
    for section_name, field_name in (("audio_config", "encoder_layers"), ("text_config", "num_hidden_layers")):
        section = config_data.get(section_name)
        value = section.get(field_name) if isinstance(section, dict) else None
        if isinstance(value, int) and value > LLAMA_MAX_LAYERS:
            raise EdgelalmError(
                f"{config_file}: {section_name}.{field_name} is {value}; llama.cpp loads up to {LLAMA_MAX_LAYERS}"
            )
    _refuse_dangling_links(path)
    tensor_files = _index_safetensors(path)

    from transformers import Qwen2AudioConfig, Qwen2AudioProcessor

    try:
        config = Qwen2AudioConfig.from_pretrained(path)
    except Exception as error:  # transformers checks each field's type (StrictDataclassError, ...)
        raise EdgelalmError(f"{config_file}: {error_gist(error)}") from None
    _check_config(config_file, config)
    # The feature extractor computes its filterbank as it loads: an n_fft of 10^7 took gigabytes.
    for file_name in ("preprocessor_config.json", "processor_config.json"):
        if (path / file_name).is_file():
            _check_extractor_file(path / file_name)
    # Without its files transformers builds a tokenizer of the added tokens alone, and the GGUF
    # step (6 of 8) found no merges after minutes of encoder export.
    if not (path / "tokenizer.json").is_file() and not all((path / name).is_file() for name in BPE_FILES):
        raise EdgelalmError(f"{path}: no tokenizer: a checkpoint holds tokenizer.json (or {' and '.join(BPE_FILES)})")
    _refuse_unnumbered_special_tokens(path)
    try:
        processor = Qwen2AudioProcessor.from_pretrained(path)
    except Exception as error:  # a tokenizer file of the wrong shape, a garbled BPE, ...
        raise EdgelalmError(
            f"{path}: cannot load its processor (tokenizer + feature extractor): {error_gist(error)}"
        ) from None
    checkpoint = Checkpoint(path=path, config=config, processor=processor, tensor_files=tensor_files)
    extractor = processor.feature_extractor
    _check_extractor_sizes(
        {field_name: getattr(extractor, field_name, None) for field_name in _EXTRACTOR_SIZES},
        f"{path}: its feature extractor's",
        required=True,
    )
    if extractor.feature_size != config.audio_config.num_mel_bins:
        raise EdgelalmError(
            f"{path}: its feature extractor makes {extractor.feature_size} mel bins; "
            f"the audio tower reads {config.audio_config.num_mel_bins}"
        )
    checkpoint.check_shapes()
    check_features(checkpoint.features(), path)  # the extractor's window is the tower's
    checkpoint.generation_eos_ids = read_generation_eos_ids(path, config.text_config.vocab_size)
    checkpoint.windows_advice = read_windows_advice(path, float(extractor.chunk_length))
    checkpoint.decoding_advice = read_decoding_advice(path, has_ctc_head(path))
    return checkpoint


def _refuse_dangling_links(path: Path) -> None:
    """A file of the folder that is a link to nothing (a Hugging Face cache snapshot whose download
    was interrupted: its files link to blobs) was read as absent: a missing tokenizer.json
    renumbered the special tokens, a missing chat template changed the prompt, silently."""
    dangling = sorted(entry.name for entry in path.iterdir() if entry.is_symlink() and not entry.exists())
    if dangling:
        raise EdgelalmError(
            f"{path}: {', '.join(dangling)} {'is a link' if len(dangling) == 1 else 'are links'} to nothing "
            "(an interrupted download?); download the checkpoint again"
        )


def _refuse_unnumbered_special_tokens(path: Path) -> None:
    """Without tokenizer.json, the special tokens' ids come from added_tokens.json or the
    tokenizer config's added_tokens_decoder; with neither, transformers numbers them in the order
    it adds them, which need not be the model's (<|im_start|> became <|im_end|>'s id: the answers
    changed, the export succeeded)."""
    if (path / "tokenizer.json").is_file() or (path / "added_tokens.json").is_file():
        return
    tokenizer_file = path / "tokenizer_config.json"
    tokenizer_config = read_json_object(tokenizer_file) if tokenizer_file.is_file() else {}
    if tokenizer_config.get("added_tokens_decoder"):
        return
    vocabulary = read_json_object(path / "vocab.json")
    special = {token for token in _special_token_texts(tokenizer_config) if token not in vocabulary}
    if special:
        raise EdgelalmError(
            f"{path}: its special tokens ({', '.join(sorted(special))}) have no ids recorded: no tokenizer.json, "
            "added_tokens.json or added_tokens_decoder in tokenizer_config.json (files missing from the download?)"
        )


def _special_token_texts(tokenizer_config: dict) -> list[str]:
    """The special tokens a tokenizer config names: its eos/bos/pad/unk tokens and the additional ones."""
    named = [tokenizer_config.get(field) for field in ("eos_token", "bos_token", "pad_token", "unk_token")]
    for field in ("additional_special_tokens", "extra_special_tokens"):  # transformers 4's name, 5's
        extra = tokenizer_config.get(field) or []
        named += list(extra.values() if isinstance(extra, dict) else extra if isinstance(extra, list) else [])
    texts = [token.get("content") if isinstance(token, dict) else token for token in named]
    return [text for text in texts if isinstance(text, str)]


def read_generation_eos_ids(path: Path, vocab_size: int) -> list[int] | None:
    """generation_config.json's eos_token_id (one id or a list): the tokens that end an answer,
    checked here, before any export step (bad JSON, a list of names or an id of -5 failed at the
    manifest, after the graphs, or exported a bundle its reader refused). None: the file or the
    field is absent."""
    file = path / "generation_config.json"
    if not file.is_file():
        return None
    eos = read_json_object(file).get("eos_token_id")
    if eos is None:
        return None
    ids = eos if isinstance(eos, list) else [eos]
    if not ids or not all(is_whole_number(token) and 0 <= token < vocab_size for token in ids):
        raise EdgelalmError(
            f"{file}: eos_token_id must be a token id or a list of them, each from 0 to {vocab_size - 1} "
            f"(text_config.vocab_size), not {short_repr(eos, 60)}"
        )
    return list(ids)


# The feature extractor's sizes, checked in its files before it loads and after.
_EXTRACTOR_SIZES = {
    "sampling_rate": SAMPLING_RATES[1],
    "feature_size": 1024,
    "n_fft": MAX_N_FFT,
    "hop_length": MAX_N_FFT,
    "chunk_length": 3600,
}


def _check_extractor_file(file: Path) -> None:
    """A processor file's feature-extractor sizes (at its top level or under feature_extractor)."""
    data = read_json_object(file)
    nested = data.get("feature_extractor")
    for section in [data, nested] if isinstance(nested, dict) else [data]:
        _check_extractor_sizes(section, f"{file}:", required=False)


def _check_extractor_sizes(values: dict, where: str, required: bool) -> None:
    """Each of _EXTRACTOR_SIZES in `values` an integer within its bound (absent allowed unless `required`)."""
    for field_name, limit in _EXTRACTOR_SIZES.items():
        value = values.get(field_name)
        if (value is not None or required) and (not is_whole_number(value) or not 1 <= value <= limit):
            raise EdgelalmError(f"{where} {field_name} must be an integer from 1 to {limit}, not {value!r}")


def auto_encoder_precision(path: Path) -> EncoderPrecision:
    """`export --encoder-precision auto`: fp16w where the checkpoint stores its audio tower in 16 bits
    (the weights it holds, half fp32's memory, float32 arithmetic), fp32 otherwise. Reads the
    safetensors headers only; a folder that is no checkpoint gets fp32, and export names its fault."""
    if not path.is_dir():
        return "fp32"
    try:
        tensor_files = _index_safetensors(path)
    except EdgelalmError:
        return "fp32"
    dtypes = set()
    for file in set(tensor_files.values()):
        with safetensors_file(file) as weights:
            dtypes |= {
                weights.get_slice(key).get_dtype() for key in weights.keys() if key.startswith(AUDIO_TOWER_PREFIXES)
            }
    return "fp16w" if dtypes and dtypes <= SIXTEEN_BIT_DTYPES else "fp32"


SINGLE_WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


def _weight_files(path: Path) -> list[Path]:
    """The files transformers' from_pretrained reads (finetune loads through it): model.safetensors,
    else the shards model.safetensors.index.json names, else (a folder that is neither) every
    *.safetensors. The index's names are held to plain .safetensors files in the folder: its
    loader would unpickle any other file, or read one outside."""
    if (path / SINGLE_WEIGHTS_FILE).is_file():
        return [path / SINGLE_WEIGHTS_FILE]
    index_file = path / WEIGHTS_INDEX_FILE
    if not index_file.is_file():
        return sorted(path.glob("*.safetensors"))
    weight_map = read_json_object(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise EdgelalmError(f"{index_file}: weight_map must map tensor names to shard file names")
    if not weight_map:  # else: "no *.safetensors weight files", beside the shards it leaves out
        raise EdgelalmError(f"{index_file}: weight_map is empty; it must name the shard of each tensor")
    shard_names = sorted(set(weight_map.values()))
    for name in shard_names:
        if Path(name).name != name or not name.endswith(".safetensors") or name.startswith("."):
            raise EdgelalmError(f"{index_file}: {name!r} is not a .safetensors file in the folder")
        if not (path / name).is_file():
            raise EdgelalmError(f"{index_file}: names {name}, which the folder does not hold")
    return [path / name for name in shard_names]


def _index_safetensors(path: Path) -> dict[str, Path]:
    """tensor name -> the .safetensors file holding it (single file or sharded index)."""
    weight_files = _weight_files(path)
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
        with safetensors_file(file) as weights:
            dtypes = {key: weights.get_slice(key).get_dtype() for key in weights.keys()}
        for key, dtype in dtypes.items():
            if dtype not in FLOAT_DTYPES:  # an int, bool, fp8 or complex tensor would be cast silently
                raise EdgelalmError(f"{file}: tensor {key} is {dtype}; weights are F32, F16, BF16 or F64")
        for key in dtypes:
            if key in tensor_files:
                raise EdgelalmError(f"{path}: tensor {key} is in both {tensor_files[key].name} and {file.name}")
            tensor_files[key] = file
    return tensor_files


def load_model(model_dir: Path, device: str = "cpu") -> Any:
    """The whole model in transformers, float32, through safetensors (never pickles, never remote
    code), in eval mode: what finetune trains and bench's PyTorch reference runs. A decoder
    whose weights hold no lm_head (text_config.tie_word_embeddings, as Qwen2-0.5B's) reads its
    embeddings as the output layer, as export and llama.cpp do: transformers 5 ties only where
    the top-level config says so, and otherwise gave it a random lm_head to train the LoRA against."""
    from transformers import Qwen2AudioForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    if not sys.stderr.isatty():  # transformers' loading bar would fill a log with carriage returns
        transformers_logging.disable_progress_bar()
    tied = "lm_head.weight" not in open_checkpoint(model_dir).decoder_tensor_keys()
    verbosity = transformers_logging.get_verbosity()
    if tied:  # its report of lm_head as MISSING, newly initialized, is not so
        transformers_logging.set_verbosity_error()
    try:
        model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model.to(device).eval()
