"""What the manifest says about a bundle: the model, features, graphs, decoder, prompt, special
tokens and the tools that wrote it (edgelalm.manifest holds the types; this fills them)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgelalm.compression import COMPRESSOR_DESCRIPTIONS, CompressorSpec
from edgelalm.constants import (
    COMPRESSOR_FILE,
    COMPRESSOR_INPUT,
    COMPRESSOR_OUTPUT,
    CTC_FRAMES_INPUT,
    CTC_INPUT,
    CTC_OUTPUT,
    DECODER_FILE,
    ENCODER_FILE,
    ENCODER_FRAMES_PER_SECOND,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    ENCODER_RIGHT_CONTEXT_INPUT,
    ENDOFTEXT,
    GGUF_ARCHITECTURE,
    IM_END,
    IM_START,
    MIN_MEL_FRAMES,
    RIGHT_CONTEXT_FRAMES,
)
from edgelalm.doctor import package_version
from edgelalm.errors import EdgelalmError
from edgelalm.export.adapter import LoraAdapter
from edgelalm.export.checkpoint import Checkpoint
from edgelalm.export.ctc import ctc_input_name
from edgelalm.manifest import (
    AdapterInfo,
    CompressorChoice,
    CompressorInfo,
    CtcInfo,
    DecoderInfo,
    EncoderInfo,
    Manifest,
    ModelInfo,
    ProbeInfo,
    PromptInfo,
    SpecialToken,
    SpecialTokens,
    format_version_for,
)

TOOL_PACKAGES = (
    "edgelalm",
    "torch",
    "transformers",
    "peft",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "gguf",
    "llama_cpp_python",
)

if TYPE_CHECKING:  # bundle.py imports this module
    from edgelalm.export.bundle import ExportOptions
    from edgelalm.export.ctc import CtcHead, FramesCtcHead


@dataclass
class ExportedChoice:
    """A compressor of a bundle, as export makes it: its graph and, in a bundle of several, its
    adapter written as a llama.cpp LoRA GGUF (`gguf_alpha`: the alpha written there)."""

    spec: CompressorSpec
    graph_file: str
    adapter_dir: Path | None = None
    adapter_file: str | None = None
    adapter: LoraAdapter | None = None
    gguf_alpha: float = 0.0


@dataclass(frozen=True)
class ExportedCtcHead:
    """A CTC head as export writes it: the bundle's own (`choice` None) or a choice's."""

    file: str
    choice: str | None  # the compressor label whose own head it is; None: the bundle's
    reader: str | None  # the compressor graph whose embeddings it reads (checked on); None: the encoder's frames
    head: CtcHead | FramesCtcHead
    realigned_to: str | None  # the compressor it was realigned to; None: the checkpoint's head

    @property
    def reads_frames(self) -> bool:
        """What the head reads is its kind's (`ctc_input_name`), the graph the export writes."""
        return ctc_input_name(self.head) == CTC_FRAMES_INPUT


def build_manifest(
    checkpoint: Checkpoint,
    options: ExportOptions,
    prompt: PromptInfo,
    probe: dict[str, Any],
    adapter: LoraAdapter | None,
    choices: list[ExportedChoice],
    ctc_heads: list[ExportedCtcHead],
) -> Manifest:
    """What the bundle holds (the files' checksums are added when it is written). `choices`: a
    bundle of several compressors (format version 2), the first the default; empty for one."""
    config = checkpoint.config
    text_config = config.text_config
    heads = {exported.choice: _ctc_info(exported, text_config.vocab_size) for exported in ctc_heads}
    compressors = {choice.spec.label: _choice(choice, heads.get(choice.spec.label)) for choice in choices}
    return Manifest(
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo(
            name=checkpoint.name,
            # A folder name that is not UTF-8 shown as \\xe8: the manifest holds Unicode text only.
            source=os.fsencode(checkpoint.path.resolve()).decode("utf-8", "backslashreplace"),
            architecture="Qwen2AudioForConditionalGeneration",
            audio_width=config.audio_config.d_model,
            hidden_size=text_config.hidden_size,
            vocab_size=text_config.vocab_size,
        ),
        features=checkpoint.features(),
        encoder=EncoderInfo(
            file=ENCODER_FILE,
            precision=options.encoder_precision,
            inputs={
                ENCODER_INPUT: "[num_mel_bins, T]",
                ENCODER_RIGHT_CONTEXT_INPUT: f"[num_mel_bins, {RIGHT_CONTEXT_FRAMES}]",
            },
            output={ENCODER_OUTPUT: "[floor(((T - 1) // 2 + 1) / 2), audio_width]"},
            right_context_frames=RIGHT_CONTEXT_FRAMES,
            min_mel_frames=MIN_MEL_FRAMES,
            max_mel_frames=2 * config.audio_config.max_source_positions,
            frames_per_second=ENCODER_FRAMES_PER_SECOND,
            probe=ProbeInfo(seconds=probe["seconds"], max_abs_diff_vs_pytorch_fp32=probe["encoder_max_abs_diff"]),
        ),
        compressor=_compressor_info(options.compressor, choices[0].graph_file if choices else COMPRESSOR_FILE),
        decoder=DecoderInfo(
            file=DECODER_FILE,
            format="gguf",
            architecture=GGUF_ARCHITECTURE,
            quant=options.quant,
            layers=text_config.num_hidden_layers,
            hidden_size=text_config.hidden_size,
            attention_heads=text_config.num_attention_heads,
            kv_heads=text_config.num_key_value_heads,
            context_length=text_config.max_position_embeddings,
            vocab_size=text_config.vocab_size,
            tied_embeddings="lm_head.weight" not in checkpoint.decoder_tensor_keys(),
            adapter=adapter.describe() if adapter else None,
        ),
        prompt=prompt,
        special_tokens=special_tokens(checkpoint),
        tools={name: package_version(name) for name in TOOL_PACKAGES},
        compressors=compressors,
        format_version=format_version_for(compressors),
        windows=checkpoint.windows_advice,
        ctc=heads.get(None),
        decoding=checkpoint.decoding_advice,
    )


def _ctc_info(exported: ExportedCtcHead, vocab_size: int) -> CtcInfo:
    return CtcInfo(
        file=exported.file,
        vocab_size=vocab_size,
        inputs={CTC_FRAMES_INPUT: "[L, audio_width]"} if exported.reads_frames else {CTC_INPUT: "[N, hidden_size]"},
        output={CTC_OUTPUT: "[N, 1 + vocab_size]"},
        realigned_to=exported.realigned_to,
    )


def _compressor_info(spec: CompressorSpec, file_name: str) -> CompressorInfo:
    return CompressorInfo(
        file=file_name,
        name=spec.name,
        factor=spec.factor,
        description=COMPRESSOR_DESCRIPTIONS[spec.name],
        audio_tokens_per_second=spec.audio_tokens_per_second,
        includes_projector=True,
        inputs={COMPRESSOR_INPUT: "[L, audio_width]"},
        output={COMPRESSOR_OUTPUT: "[N, hidden_size]"},
    )


def _choice(choice: ExportedChoice, ctc: CtcInfo | None) -> CompressorChoice:
    adapter = None
    if choice.adapter is not None and choice.adapter_file is not None:
        adapter = AdapterInfo(
            file=choice.adapter_file, description=choice.adapter.describe(), gguf_alpha=choice.gguf_alpha
        )
    return CompressorChoice(compressor=_compressor_info(choice.spec, choice.graph_file), adapter=adapter, ctc=ctc)


def special_tokens(checkpoint: Checkpoint) -> SpecialTokens:
    processor = checkpoint.processor
    tokenizer = processor.tokenizer
    named = {
        "audio": processor.audio_token,
        "audio_bos": processor.audio_bos_token,
        "audio_eos": processor.audio_eos_token,
        "im_start": IM_START,
        "im_end": IM_END,
        "endoftext": ENDOFTEXT,
    }
    tokens: dict[str, SpecialToken] = {}
    vocabulary = tokenizer.get_vocab()  # added tokens included
    for role, text in named.items():
        # Membership, not "is not the unknown id": a Qwen2 tokenizer saved from transformers' defaults
        # has <|endoftext|> as its unk_token, and that is still a real token.
        token_id = vocabulary.get(text)
        if token_id is None:
            raise EdgelalmError(f"{checkpoint.path}: the tokenizer has no {text} token")
        tokens[role] = SpecialToken(text=text, id=int(token_id))
    return SpecialTokens(**tokens, end_of_turn_ids=_end_of_turn_ids(checkpoint, tokens))


def _end_of_turn_ids(checkpoint: Checkpoint, tokens: dict[str, SpecialToken]) -> list[int]:
    if checkpoint.generation_eos_ids is not None:
        return checkpoint.generation_eos_ids
    return [tokens["im_end"].id, tokens["endoftext"].id]
