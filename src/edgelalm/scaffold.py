"""Build a fresh Qwen2-Audio checkpoint folder (random weights) laid out like Qwen2-Audio-7B-Instruct.

The folder holds model.safetensors (hub key names: audio_tower., multi_modal_projector.,
language_model.model., language_model.lm_head.), config.json, generation_config.json,
preprocessor_config.json, tokenizer.json, tokenizer_config.json, vocab.json, merges.txt,
chat_template.jinja and processor_config.json, and loads with
plain `Qwen2AudioForConditionalGeneration.from_pretrained` / `AutoProcessor.from_pretrained`
(no remote code).

`write_dummy_checkpoint(..., layout="published")` writes the layout of the published
Qwen/Qwen2-Audio-7B-Instruct main branch instead: bf16 shards with an index, a minimal
config.json (`published_config`), no chat template and no processor_config.json.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2AudioConfig,
    Qwen2AudioEncoderConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    Qwen2Tokenizer,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT_REGEX

from edgelalm.constants import (
    AUDIO_TOKEN,
    ENDOFTEXT,
    IM_END,
    SAMPLING_RATE,
    SPECIAL_TOKENS,
)
from edgelalm.errors import EdgelalmError
from edgelalm.files import write_json
from edgelalm.progress import Bar

# Text the scaffold ships as data: the chat template and the tokenizer's training sentences.
DATA = Path(__file__).parent / "data"


MEL_BINS = 128
HOP_LENGTH = 160
N_FFT = 400
# 100 mel frames per second, halved by the encoder's stride-2 conv -> 50 encoder positions per second.
ENCODER_POSITIONS_PER_SECOND = 50

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML as rendered by Qwen2-Audio-Instruct: an implicit default system turn (DEFAULT_SYSTEM_PROMPT),
# audio items become "Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\n", text items are emitted verbatim.
CHAT_TEMPLATE: str = (DATA / "chatml_qwen2_audio.jinja").read_text(encoding="utf-8")
# What the scaffold tokenizers are trained on: assistant requests, numbers, unicode, whitespace runs.
SAMPLE_TEXTS: list[str] = json.loads((DATA / "scaffold_texts.json").read_text(encoding="utf-8"))


def _trained_bpe(texts: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train byte-level BPE with Qwen2's normalizer and pre-tokenizer; return (vocab, merges)."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    model_state = json.loads(bpe.to_str())["model"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in model_state["merges"]]
    merges = [(str(first), str(second)) for first, second in pairs]
    return dict(model_state["vocab"]), merges


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Qwen2Tokenizer:
    """Byte-level BPE on `texts` with Qwen2's pre-tokenization; Qwen2-Audio's special tokens follow.

    `vocab_size` is the learned vocabulary (256 byte symbols included); see `qwen2_audio_tokenizer`.
    """
    vocab, merges = _trained_bpe(texts, vocab_size)
    return qwen2_audio_tokenizer(vocab, merges)


def qwen2_audio_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Qwen2Tokenizer:
    """Qwen2-Audio's tokenizer around a byte-level BPE `vocab` and its `merges` (a trained one, or
    Qwen2's real 151,643-token vocabulary): the six SPECIAL_TOKENS get ids len(vocab) .. len(vocab) + 5
    as in Qwen2-Audio (151643 .. 151648 with the real vocabulary). eos is <|im_end|>, pad is
    <|endoftext|> (Qwen2 chat tokenizers); no bos / unk. CHAT_TEMPLATE is attached."""
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=ENDOFTEXT,  # registers <|endoftext|> first; swapped for <|im_end|> below
        pad_token=ENDOFTEXT,
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        errors="replace",
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.eos_token = IM_END
    tokenizer.chat_template = CHAT_TEMPLATE
    expected = {token: len(vocab) + i for i, token in enumerate(SPECIAL_TOKENS)}
    actual = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    if actual != expected:
        raise RuntimeError(f"special token ids {actual} != {expected}")
    return tokenizer


def feature_extractor(window_seconds: int, mel_bins: int = MEL_BINS) -> WhisperFeatureExtractor:
    """Qwen2-Audio's Whisper log-mel front end (128 bins, 16 kHz, 10 ms hop) padded to `window_seconds`;
    Whisper's own models before large-v3 take 80 bins."""
    return WhisperFeatureExtractor(
        feature_size=mel_bins,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=window_seconds,
        n_fft=N_FFT,
        padding_value=0.0,
        return_attention_mask=True,
    )


def model_config(
    tokenizer: Qwen2Tokenizer,
    *,
    window_seconds: int = 30,
    encoder_layers: int,
    encoder_d_model: int,
    encoder_heads: int,
    encoder_ffn_dim: int,
    decoder_layers: int,
    decoder_hidden: int,
    decoder_heads: int,
    decoder_kv_heads: int,
    decoder_ffn_dim: int,
    vocab_size: int | None = None,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 8192,
    mel_bins: int = MEL_BINS,
) -> Qwen2AudioConfig:
    """Qwen2AudioConfig with Qwen2-Audio-7B's fixed choices and the given sizes; token ids from `tokenizer`."""
    if tie_word_embeddings:
        # Qwen2AudioForConditionalGeneration declares no tied weights: lm_head would silently stay separate.
        raise NotImplementedError("Qwen2AudioForConditionalGeneration does not tie lm_head to the embeddings")
    text_vocab = len(tokenizer) if vocab_size is None else vocab_size
    if text_vocab < len(tokenizer):
        raise ValueError(f"vocab_size {text_vocab} < tokenizer size {len(tokenizer)}")
    endoftext_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    audio_config = Qwen2AudioEncoderConfig(
        num_mel_bins=mel_bins,
        encoder_layers=encoder_layers,
        encoder_attention_heads=encoder_heads,
        encoder_ffn_dim=encoder_ffn_dim,
        d_model=encoder_d_model,
        max_source_positions=window_seconds * ENCODER_POSITIONS_PER_SECOND,
        activation_function="gelu",
        scale_embedding=False,
    )
    text_config = Qwen2Config(
        vocab_size=text_vocab,
        hidden_size=decoder_hidden,
        intermediate_size=decoder_ffn_dim,
        num_hidden_layers=decoder_layers,
        num_attention_heads=decoder_heads,
        num_key_value_heads=decoder_kv_heads,
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=endoftext_id,  # Qwen's configs use <|endoftext|> as bos
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2AudioConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
    )


def window_seconds_of(config: Qwen2AudioConfig) -> int:
    """Audio window (seconds) that the encoder's position table covers."""
    return config.audio_config.max_source_positions // ENCODER_POSITIONS_PER_SECOND


def generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Stops on <|im_end|> or <|endoftext|>, pads with <|endoftext|> (as Qwen2-Audio-Instruct)."""
    endoftext_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return GenerationConfig(
        bos_token_id=endoftext_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), endoftext_id],
        pad_token_id=endoftext_id,
    )


def write_checkpoint(out_dir: Path, config: Qwen2AudioConfig, tokenizer: Qwen2Tokenizer, *, seed: int = 0) -> Path:
    """Random-init a float32 model from `config` (seeded) and save model, processor and generation config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_processor(out_dir, config, tokenizer)
    return out_dir


def write_processor(out_dir: Path, config: Qwen2AudioConfig, tokenizer: Qwen2Tokenizer) -> None:
    """Processor files (feature extractor, tokenizer, chat template) as Qwen2-Audio ships them."""
    processor = Qwen2AudioProcessor(
        feature_extractor=feature_extractor(window_seconds_of(config), config.audio_config.num_mel_bins),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    # transformers 5 folds the feature extractor into processor_config.json; Qwen's repos (and converters
    # reading them) also expect the standalone files below.
    processor.feature_extractor.save_pretrained(out_dir)
    _write_vocab_and_merges(out_dir, tokenizer)


# transformers 5's in-memory names -> the release names save_pretrained writes.
_RELEASE_NAMES = (
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)

# How `write_dummy_checkpoint` lays a checkpoint out: the scaffold's own "per-layer" layout, or
# "published", as Qwen/Qwen2-Audio-7B-Instruct (and Qwen2-Audio-7B) are published on the hub.
CheckpointLayout = Literal["per-layer", "published"]
# The published main branch: model-0000N-of-00005.safetensors + model.safetensors.index.json, bf16,
# and a config.json written by transformers 4.38.1.
PUBLISHED_SHARDS = 5
PUBLISHED_TRANSFORMERS_VERSION = "4.38.1"
# The published config.json leaves these to transformers' Qwen2Config defaults (4096, 32, 32, 32:
# Qwen2-7B's). `published_config` writes one only where a config differs from the default, as a
# tiny test model must; num_key_value_heads among them, since transformers 5 defaults it to 32
# whatever num_attention_heads says.
_QWEN2_DEFAULTED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def write_dummy_checkpoint(
    out_dir: Path,
    config: Qwen2AudioConfig,
    tokenizer: Qwen2Tokenizer,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    layout: CheckpointLayout = "per-layer",
    shards: int = PUBLISHED_SHARDS,
) -> Path:
    """Random weights at any size, written tensor by tensor: the model is built on the meta device
    for its tensor names and shapes only, each shard's safetensors header is written first and its
    tensors are made and written one at a time, so memory holds one tensor, never the model (like
    vLLM's dummy load format, but on disk). Release tensor names (audio_tower.*, language_model.*).

    `layout` "per-layer": one decoder layer per shard, float16 unless `dtype` says otherwise,
    config.json as transformers writes it, processor files with the chat template (`write_processor`).
    "published": as Qwen/Qwen2-Audio-7B-Instruct's main branch is published: `shards` shards of
    about equal size, bfloat16 unless `dtype` says otherwise, the minimal config.json of
    `published_config`, tokenizer and feature extractor files with no chat template and no
    processor_config.json (`write_published_processor`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = dtype or (torch.bfloat16 if layout == "published" else torch.float16)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in Qwen2AudioForConditionalGeneration(config).state_dict().items()}
    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = {name: _numel(shape) * itemsize for name, shape in shapes.items()}
    groups = _per_layer_shards(list(shapes)) if layout == "per-layer" else _sized_shards(sizes, shards)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total_bytes = {}, 0
    with Bar(sum(sizes.values()) / 2**20, "random weights, MiB") as bar:

        def make(name: str) -> torch.Tensor:
            bar.update(advance=sizes[name] / 2**20)
            return _dummy_tensor(name, shapes[name], generator, dtype)

        for index, names in enumerate(groups, start=1):
            file_name = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
            entries = [(_release_name(name), shapes[name], partial(make, name)) for name in names]
            total_bytes += _save_streamed(out_dir / file_name, entries, dtype)
            weight_map.update({_release_name(name): file_name for name in names})
    index_file = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    write_json(out_dir / "model.safetensors.index.json", index_file)
    generation_config(tokenizer).save_pretrained(out_dir)
    if layout == "published":
        write_json(out_dir / "config.json", published_config(config))
        write_published_processor(out_dir, config, tokenizer)
    else:
        # As a model's save_pretrained writes it: converters (llama.cpp's) pick their code by it.
        config.architectures = [Qwen2AudioForConditionalGeneration.__name__]
        config.save_pretrained(out_dir)
        write_processor(out_dir, config, tokenizer)
    return out_dir


def published_config(config: Qwen2AudioConfig) -> dict[str, Any]:
    """config.json as Qwen2-Audio-7B(-Instruct) publishes it: the audio encoder in full, a minimal
    `text_config` that relies on transformers' Qwen2 defaults for the decoder's width, depth and
    heads (written only where `config` differs from them), bf16, transformers 4.38.1."""
    audio, text = config.audio_config, config.text_config
    rope = getattr(text, "rope_parameters", None) or {}
    text_config: dict[str, Any] = {
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "intermediate_size": text.intermediate_size,
        "max_position_embeddings": text.max_position_embeddings,
        "model_type": "qwen2",
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "sliding_window": 32768,
        "torch_dtype": "bfloat16",
        "use_mrope": False,
        "vocab_size": text.vocab_size,
    }
    defaults = Qwen2Config()
    for key in _QWEN2_DEFAULTED_KEYS:
        if getattr(text, key) != getattr(defaults, key):
            text_config[key] = getattr(text, key)
    audio_config = {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": audio.num_mel_bins,
        "encoder_layers": audio.encoder_layers,
        "encoder_attention_heads": audio.encoder_attention_heads,
        "encoder_ffn_dim": audio.encoder_ffn_dim,
        "d_model": audio.d_model,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_function": audio.activation_function,
        "activation_dropout": 0.0,
        "scale_embedding": audio.scale_embedding,
        "init_std": 0.02,
        "max_source_positions": audio.max_source_positions,
    }
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "audio_config": audio_config,
        "audio_token_index": config.audio_token_index,
        "ignore_index": -100,
        "model_type": "qwen2_audio",
        "text_config": dict(sorted(text_config.items())),
        "torch_dtype": "bfloat16",
        "transformers_version": PUBLISHED_TRANSFORMERS_VERSION,
        "vocab_size": text.vocab_size,
    }


def write_published_processor(out_dir: Path, config: Qwen2AudioConfig, tokenizer: Qwen2Tokenizer) -> None:
    """Processor files as the published Qwen2-Audio-7B(-Instruct) main branch holds them: tokenizer.json,
    tokenizer_config.json (transformers 4's keys: added_tokens_decoder, additional_special_tokens),
    vocab.json, merges.txt, preprocessor_config.json; no chat template anywhere, no processor_config.json."""
    template = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        tokenizer.save_pretrained(out_dir)
    finally:
        tokenizer.chat_template = template
    config_file = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8"))
    tokenizer_config.pop("backend", None)
    tokenizer_config.pop("chat_template", None)
    tokenizer_config["additional_special_tokens"] = tokenizer_config.pop("extra_special_tokens", [])
    tokenizer_config["added_tokens_decoder"] = {
        str(token_id): {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
    }
    write_json(config_file, dict(sorted(tokenizer_config.items())))
    extractor = feature_extractor(window_seconds_of(config), config.audio_config.num_mel_bins)
    extractor.save_pretrained(out_dir)
    preprocessor_file = out_dir / "preprocessor_config.json"
    preprocessor = json.loads(preprocessor_file.read_text(encoding="utf-8"))
    preprocessor["processor_class"] = "Qwen2AudioProcessor"  # how AutoProcessor finds the processor
    write_json(preprocessor_file, dict(sorted(preprocessor.items())))
    _write_vocab_and_merges(out_dir, tokenizer)


def _release_name(name: str) -> str:
    return next((new + name[len(old) :] for old, new in _RELEASE_NAMES if name.startswith(old)), name)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _per_layer_shards(names: list[str]) -> list[list[str]]:
    """One shard per decoder layer; the audio tower, the projector, the embeddings (+ final norm)
    and lm_head one each."""
    shards: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        key = (
            f"layer-{int(parts[3]):03d}"
            if name.startswith("model.language_model.layers.")
            else parts[1]
            if name.startswith("model.")
            else parts[0]
        )
        shards.setdefault(key, []).append(name)
    return list(shards.values())


def _sized_shards(sizes: dict[str, int], count: int) -> list[list[str]]:
    """The tensors in order, cut into `count` non-empty shards of about equal size (as
    save_pretrained's max_shard_size cuts a 7B into five): a tensor opens the next shard when its
    middle lies past the current shard's share, or when only as many tensors as shards are left."""
    names = list(sizes)
    count = max(1, min(count, len(names)))
    total = sum(sizes.values())
    shards: list[list[str]] = [[]]
    offset = 0
    for position, name in enumerate(names):
        remaining_shards = count - len(shards)
        past_share = (offset + sizes[name] / 2) * count > total * len(shards)
        if shards[-1] and remaining_shards and (past_share or len(names) - position == remaining_shards):
            shards.append([])
        shards[-1].append(name)
        offset += sizes[name]
    return shards


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _save_streamed(
    path: Path, entries: Sequence[tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]], dtype: torch.dtype
) -> int:
    """A safetensors file whose header is written first and whose tensors (name, shape, make) are
    made and written one at a time; returns the bytes of tensor data."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in entries:
        end = offset + _numel(shape) * itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as file:
        file.write(len(encoded).to_bytes(8, "little"))
        file.write(encoded)
        for name, shape, make in entries:
            tensor = make().contiguous()
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise RuntimeError(f"{name}: made {tuple(tensor.shape)} {tensor.dtype}, expected {shape} {dtype}")
            file.write(tensor.view(torch.uint8).numpy().data)
            del tensor
    return offset


def _dummy_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Norm scales 1, biases 0, everything else N(0, 0.02): activations stay in range."""
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=generator, dtype=torch.float32) * 0.02).to(dtype)


# Realistic shapes for benchmarks (random weights): decoder widths, layer counts, vocabulary and
# context as the named models; the tokenizer is the small scaffold one, its embeddings padded.
# qwen2-audio-7b is also written in the published layout (PRESET_LAYOUTS).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        window_seconds=10,
        encoder_layers=2,
        encoder_d_model=64,
        encoder_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=2,
        decoder_hidden=64,
        decoder_heads=4,
        decoder_kv_heads=2,
        decoder_ffn_dim=128,
    ),
    # Whisper-small-shaped encoder + Qwen2-0.5B-shaped decoder.
    "small": dict(
        window_seconds=30,
        encoder_layers=12,
        encoder_d_model=768,
        encoder_heads=12,
        encoder_ffn_dim=3072,
        decoder_layers=24,
        decoder_hidden=896,
        decoder_heads=14,
        decoder_kv_heads=2,
        decoder_ffn_dim=4864,
        vocab_size=151936,
        max_position_embeddings=32768,
    ),
    # Qwen2-Audio-7B: Whisper-large-v3 encoder + Qwen2-7B-shaped decoder.
    "qwen2-audio-7b": dict(
        window_seconds=30,
        encoder_layers=32,
        encoder_d_model=1280,
        encoder_heads=20,
        encoder_ffn_dim=5120,
        decoder_layers=32,
        decoder_hidden=4096,
        decoder_heads=32,
        decoder_kv_heads=32,
        decoder_ffn_dim=11008,
        vocab_size=156032,
        max_position_embeddings=8192,
    ),
}


# How each preset written by write_dummy_checkpoint is laid out: Qwen2-Audio-7B's as its folder is
# published (5 bf16 shards, minimal config.json, no chat template), so benchmarks export what a
# user downloads; small in the scaffold's own per-layer float16 layout.
PRESET_LAYOUTS: dict[str, CheckpointLayout] = {"small": "per-layer", "qwen2-audio-7b": "published"}


def write_preset_checkpoint(out_dir: Path, preset: str, *, seed: int = 0) -> None:
    """`preset_checkpoint` written beside `out_dir` and renamed into place: an interrupted or
    failed write leaves nothing (a half-written folder would be taken for a checkpoint later). A
    full disk or a name the file system refuses is one line, whether Python or safetensors' Rust
    writer met it."""
    from safetensors import SafetensorError
    from transformers.utils import logging as transformers_logging

    from edgelalm.files import atomic_folder, has_utf8_name, not_utf8_reason, write_failed

    if not sys.stderr.isatty():  # transformers' shard bar would fill a log with carriage returns
        transformers_logging.disable_progress_bar()
    if not has_utf8_name(out_dir):
        raise EdgelalmError(f"the tokenizer cannot save under {not_utf8_reason(out_dir)}")
    try:
        with atomic_folder(out_dir, force=False) as staging:
            preset_checkpoint(staging, preset, seed=seed)
    except OSError as error:
        raise write_failed("the checkpoint", out_dir, error) from None
    except SafetensorError as error:
        raise EdgelalmError(f"writing the checkpoint {out_dir} failed: {error}") from None


def preset_checkpoint(out_dir: Path, preset: str, *, seed: int = 0) -> Path:
    """A random-weights checkpoint with `preset`'s shapes (see PRESETS) and layout (PRESET_LAYOUTS)."""
    if preset == "tiny":
        return tiny_checkpoint(out_dir, seed=seed)
    tokenizer = train_tokenizer(SAMPLE_TEXTS, vocab_size=600)
    config = model_config(tokenizer, **PRESETS[preset])
    return write_dummy_checkpoint(out_dir, config, tokenizer, seed=seed, layout=PRESET_LAYOUTS[preset])


def _write_vocab_and_merges(out_dir: Path, tokenizer: Qwen2Tokenizer) -> None:
    """vocab.json (learned vocab, no added tokens) and merges.txt, as in Qwen's tokenizer folders."""
    bpe_state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = dict(sorted(bpe_state["vocab"].items(), key=lambda item: item[1]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe_state["merges"]]
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")


def tiny_checkpoint(out_dir: Path, *, window_seconds: int = 10, seed: int = 0) -> Path:
    """A seconds-to-build checkpoint for tests: ~600-token vocab, 2+2 layers of width 64."""
    tokenizer = train_tokenizer(SAMPLE_TEXTS, vocab_size=600)
    config = model_config(tokenizer, **{**PRESETS["tiny"], "window_seconds": window_seconds})
    return write_checkpoint(out_dir, config, tokenizer, seed=seed)
