"""`edgelalm export`: checkpoint folder -> bundle folder, atomically.

Steps: open the checkpoint, load the audio tower and projector, trace the encoder, trace the
compressor + projector, check both graphs against PyTorch on a probe clip, write the manifest.
Everything is written into a hidden temporary folder beside the target and renamed into place
at the end, so a failed or interrupted export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgelalm.compression import COMPRESSOR_DESCRIPTIONS, CompressorSpec
from edgelalm.constants import (
    COMPRESSOR_FILE,
    COMPRESSOR_INPUT,
    COMPRESSOR_OUTPUT,
    DECODER_FILE,
    ENCODER_FILE,
    ENCODER_FRAMES_PER_SECOND,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    ENCODER_RIGHT_CONTEXT_INPUT,
    GGUF_ARCHITECTURE,
    MEL_FILTERS_FILE,
    MIN_MEL_FRAMES,
    QUANT_TYPES,
    RIGHT_CONTEXT_FRAMES,
    PromptFormat,
    QuantType,
)
from edgelalm.errors import EdgelalmError
from edgelalm.export.adapter import LoraAdapter, open_adapter
from edgelalm.export.checkpoint import Checkpoint, open_checkpoint
from edgelalm.export.compressor import CompressorProjector, build_compressor, export_compressor_onnx
from edgelalm.export.decoder import write_decoder
from edgelalm.export.encoder import ClipLengthAudioEncoder, EncoderPrecision, export_encoder_onnx
from edgelalm.files import atomic_folder, link_or_copy
from edgelalm.manifest import (
    CompressorInfo,
    DecoderInfo,
    EncoderInfo,
    FeaturesInfo,
    FileRecord,
    Manifest,
    ModelInfo,
    ProbeInfo,
    PromptInfo,
    SpecialToken,
    SpecialTokens,
    is_encoder_file,
    read_manifest,
    write_manifest,
)
from edgelalm.progress import Steps
from edgelalm.prompt import TEMPLATE_SOURCE_DESCRIPTIONS, prompt_pieces
from edgelalm.runtime.canary import run_canary
from edgelalm.runtime.llama_backend import ExtraBuffers

PROBE_SECONDS = 5.0
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


@dataclass(frozen=True)
class ExportOptions:
    model_dir: Path
    out_dir: Path
    compressor: CompressorSpec
    encoder_precision: EncoderPrecision = "fp32"
    quant: QuantType = "q8_0"
    adapter_dir: Path | None = None
    force: bool = False
    # An earlier bundle of the same checkpoint: files this export would write the same are reused.
    share_from: Path | None = None
    # The decode check runs with the runtime's setting (see edgelalm.runtime.llama_backend).
    llama_extra_buffers: ExtraBuffers = "auto"
    # instruct or base (edgelalm.prompt); None: detected from the checkpoint.
    prompt_format: PromptFormat | None = None


def export_bundle(options: ExportOptions) -> Path:
    """Write the bundle for `options`; returns its folder."""
    if options.quant not in QUANT_TYPES:
        raise EdgelalmError(f"unknown quant type {options.quant!r}; choose one of {', '.join(QUANT_TYPES)}")
    try:
        _write_bundle(options)
    except OSError as error:
        # A full disk, a file system gone read-only, a quota: the staging folder is already removed.
        raise EdgelalmError(
            f"writing the bundle {options.out_dir} failed: {_os_error_reason(error, options.out_dir)}"
        ) from None
    return options.out_dir


def _write_bundle(options: ExportOptions) -> None:
    steps = Steps(total=8)
    with atomic_folder(options.out_dir, options.force) as staging, quiet_exporter():
        with steps.step(f"Reading checkpoint {options.model_dir}"):
            checkpoint = open_checkpoint(options.model_dir)
            prompt = prompt_pieces(checkpoint.processor, checkpoint.path, checkpoint.name, options.prompt_format)
            steps.note(_prompt_note(prompt, options.prompt_format))
            adapter = open_checkpoint_adapter(checkpoint, options.adapter_dir)
            if adapter:
                steps.note(
                    f"LoRA adapter {options.adapter_dir}: rank {adapter.rank}, alpha {adapter.alpha:g}, "
                    f"{len(adapter.target_modules)} modules"
                )
            shared = shareable_files(checkpoint, options, adapter)
        with steps.step("Loading the audio tower and projector"):
            tower = checkpoint.load_audio_tower()
            projector = checkpoint.load_projector()
            compressor = CompressorProjector(build_compressor(options.compressor), projector).eval()
        if ENCODER_FILE in shared and options.share_from:
            # Copied, not linked: onnx refuses external weights that have several hard links.
            with steps.step(f"Copying the audio encoder ({options.encoder_precision}) from {options.share_from}"):
                for name in filter(is_encoder_file, shared):
                    shutil.copy2(options.share_from / name, staging / name)
        else:
            with steps.step(f"Exporting the audio encoder to ONNX ({options.encoder_precision})"):
                export_encoder_onnx(tower, staging / ENCODER_FILE, options.encoder_precision)
        np.save(staging / MEL_FILTERS_FILE, checkpoint.processor.feature_extractor.mel_filters)
        with steps.step(f"Exporting compressor {options.compressor.label} + projector to ONNX"):
            export_compressor_onnx(compressor, tower.config.d_model, staging / COMPRESSOR_FILE)
        with steps.step("Checking the graphs against PyTorch on a probe clip"):
            probe = check_against_pytorch(checkpoint, tower, compressor, staging, options.encoder_precision)
            steps.note(
                f"encoder {options.encoder_precision} vs PyTorch fp32: max |diff| {probe['encoder_max_abs_diff']:.2e} "
                f"(largest |value| {probe['encoder_max_abs_value']:.2f}; "
                f"{probe['encoder_relative_rms_diff']:.1e} of its RMS) "
                f"on a {probe['seconds']:.1f} s probe"
            )
            steps.note(
                f"compressor + projector vs PyTorch: max |diff| {probe['compressor_max_abs_diff']:.2e}, "
                f"{probe['audio_tokens']} audio tokens from {probe['encoder_frames']} encoder frames"
            )
        del tower, projector, compressor
        merged = " with the LoRA merged" if adapter else ""
        if DECODER_FILE in shared and options.share_from:
            with steps.step(f"Linking the decoder ({options.quant}){merged} from {options.share_from}"):
                link_or_copy(options.share_from / DECODER_FILE, staging / DECODER_FILE)
        else:
            with steps.step(f"Writing the decoder to GGUF ({options.quant}){merged}") as show:
                write_decoder(
                    checkpoint,
                    staging / DECODER_FILE,
                    options.quant,
                    adapter,
                    lambda done, total: show(f"tensor {done}/{total}"),
                )
        with steps.step("Checking the decoder in llama.cpp"):
            decoder_check = check_decoder(checkpoint, staging / DECODER_FILE, prompt)
            steps.note(
                f"llama.cpp loaded it: {decoder_check['n_vocab']} tokens, width {decoder_check['n_embd']}; "
                "prompt token ids equal the checkpoint tokenizer's"
            )
            canary = run_canary(staging / DECODER_FILE, extra_buffers=options.llama_extra_buffers)
            steps.note(
                f"llama.cpp decoded {canary['prefill_tokens']} tokens in batches and generated "
                f"{canary['generated_tokens']} "
                f"in a child process ({canary['prefill_ms']:.0f} ms + {canary['decode_ms']:.0f} ms; weights in "
                f"{', '.join(canary['weight_buffers'])})"
            )
        with steps.step("Writing the manifest"):
            manifest = write_manifest(staging, build_manifest(checkpoint, options, prompt, probe, adapter))
            check_shared_checksums(manifest, shared, options.share_from)
            for name, record in manifest.files.items():
                steps.note(f"{name}: {record.bytes / 1e6:.2f} MB")


def _os_error_reason(error: OSError, out_dir: Path) -> str:
    reason = error.strerror or str(error)
    try:
        free = shutil.disk_usage(out_dir.absolute().parent).free
    except OSError:
        return reason
    return f"{reason} ({free / 1e6:.1f} MB free there)"


def open_checkpoint_adapter(checkpoint: Checkpoint, adapter_dir: Path | None) -> LoraAdapter | None:
    if adapter_dir is None:
        return None
    stored_keys = checkpoint.decoder_tensor_keys()
    shapes = {name: checkpoint.tensor_shape(key) for name, key in stored_keys.items()}
    return open_adapter(adapter_dir, shapes)


def shareable_files(
    checkpoint: Checkpoint, options: ExportOptions, adapter: LoraAdapter | None
) -> dict[str, FileRecord]:
    """The files of `options.share_from` that this export would otherwise write again, with their
    records in that bundle's manifest: the encoder (graph and external weights) when the encoder
    precision matches, the decoder when the quant and the merged adapter match.
    Both bundles must come from this checkpoint, unchanged since the earlier export."""
    if options.share_from is None:
        return {}
    where = f"--share-from {options.share_from}"
    try:
        earlier = read_manifest(options.share_from, verify_files=False)
    except EdgelalmError as error:
        raise EdgelalmError(f"{where}: {error}") from None
    source = str(checkpoint.path.resolve())
    if earlier.model.source != source:
        raise EdgelalmError(f"{where}: that bundle was exported from {earlier.model.source}, not {source}")
    try:  # created_utc is rounded down to the second.
        created = datetime.datetime.fromisoformat(earlier.created_utc).timestamp() + 1
    except ValueError:
        raise EdgelalmError(f"{where}: its manifest's created_utc is not a time: {earlier.created_utc!r}") from None
    changed = [file.name for file in set(checkpoint.tensor_files.values()) if file.stat().st_mtime > created]
    if changed:
        raise EdgelalmError(
            f"{where}: the checkpoint changed since that bundle was exported ({', '.join(sorted(changed))})"
        )
    names = []
    if earlier.encoder.precision == options.encoder_precision:
        names += [name for name in earlier.files if is_encoder_file(name)]
    decoder = earlier.decoder
    if decoder and decoder.quant == options.quant and decoder.adapter == (adapter.describe() if adapter else None):
        names.append(DECODER_FILE)
    if not names:
        raise EdgelalmError(
            f"{where}: nothing to share (encoder {earlier.encoder.precision} vs {options.encoder_precision}; "
            f"decoder {decoder.quant if decoder else 'none'} vs {options.quant}, or another adapter)"
        )
    for name in names:
        path = options.share_from / name
        record = earlier.files.get(name)
        if record is None or path.is_symlink() or not path.is_file() or record.bytes != path.stat().st_size:
            raise EdgelalmError(f"{where}: {name} is missing or does not match that bundle's manifest")
    return {name: earlier.files[name] for name in names}


def check_shared_checksums(manifest: Manifest, shared: dict[str, FileRecord], share_from: Path | None) -> None:
    """A shared file must still be the one its own bundle's manifest describes."""
    for name, earlier in shared.items():
        if manifest.files[name].sha256 != earlier.sha256:
            raise EdgelalmError(
                f"--share-from {share_from}: {name} does not match the checksum in that bundle's manifest"
            )


def check_decoder(checkpoint: Checkpoint, gguf_path: Path, prompt: PromptInfo) -> dict[str, int]:
    """llama.cpp loads the GGUF and tokenizes the prompt template as the checkpoint does (in this
    process: loading and tokenizing run no matrix kernels; the decode canary runs those in a child)."""
    from edgelalm.runtime.decoder import LlamaDecoder

    tokenizer = checkpoint.processor.tokenizer
    with LlamaDecoder(gguf_path, n_ctx=64) as decoder:
        for text in (prompt.before_audio, prompt.after_audio + prompt.default_prompt + prompt.after_prompt):
            expected = tokenizer(text, add_special_tokens=False).input_ids
            if decoder.tokenize(text) != expected:
                raise EdgelalmError(f"llama.cpp tokenizes {text!r} differently from the checkpoint's tokenizer")
        return {"n_vocab": decoder.n_vocab, "n_embd": decoder.n_embd}


def build_manifest(
    checkpoint: Checkpoint,
    options: ExportOptions,
    prompt: PromptInfo,
    probe: dict[str, Any],
    adapter: LoraAdapter | None,
) -> Manifest:
    """What the bundle holds (the files' checksums are added when it is written)."""
    config = checkpoint.config
    text_config = config.text_config
    extractor = checkpoint.processor.feature_extractor
    spec = options.compressor
    return Manifest(
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo(
            name=checkpoint.name,
            source=str(checkpoint.path.resolve()),
            architecture="Qwen2AudioForConditionalGeneration",
            audio_width=config.audio_config.d_model,
            hidden_size=text_config.hidden_size,
            vocab_size=text_config.vocab_size,
        ),
        features=FeaturesInfo(
            kind="whisper_log_mel",
            sampling_rate=extractor.sampling_rate,
            num_mel_bins=extractor.feature_size,
            n_fft=extractor.n_fft,
            hop_length=extractor.hop_length,
            window_seconds=float(extractor.chunk_length),
            window_mel_frames=2 * config.audio_config.max_source_positions,
            mel_filters_file=MEL_FILTERS_FILE,
        ),
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
        compressor=CompressorInfo(
            file=COMPRESSOR_FILE,
            name=spec.name,
            factor=spec.factor,
            description=COMPRESSOR_DESCRIPTIONS[spec.name],
            audio_tokens_per_second=spec.audio_tokens_per_second,
            includes_projector=True,
            inputs={COMPRESSOR_INPUT: "[L, audio_width]"},
            output={COMPRESSOR_OUTPUT: "[N, hidden_size]"},
        ),
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
        tools={name: _version(name) for name in TOOL_PACKAGES},
    )


def _prompt_note(prompt: PromptInfo, asked: PromptFormat | None) -> str:
    how = "as asked" if asked else "detected; --prompt-format to choose"
    if prompt.format == "base":
        return f"prompt format base ({how}): the audio, then {prompt.default_prompt!r}; no chat template"
    return f"prompt format instruct ({how}): {TEMPLATE_SOURCE_DESCRIPTIONS[prompt.template_source]}"


def special_tokens(checkpoint: Checkpoint) -> SpecialTokens:
    processor = checkpoint.processor
    tokenizer = processor.tokenizer
    named = {
        "audio": processor.audio_token,
        "audio_bos": processor.audio_bos_token,
        "audio_eos": processor.audio_eos_token,
        "im_start": "<|im_start|>",
        "im_end": "<|im_end|>",
        "endoftext": "<|endoftext|>",
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
    generation_file = checkpoint.path / "generation_config.json"
    if generation_file.is_file():
        eos = json.loads(generation_file.read_text()).get("eos_token_id")
        if isinstance(eos, int):
            return [eos]
        if isinstance(eos, list) and eos:
            return [int(i) for i in eos]
    return [tokens["im_end"].id, tokens["endoftext"].id]


def probe_features(checkpoint: Checkpoint, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic chirp-plus-noise clip as transformers' feature extractor sees it:
    the clip's mel frames and the two frames that follow it in the padded window."""
    extractor = checkpoint.processor.feature_extractor
    seconds = min(seconds, float(extractor.chunk_length))
    rate = extractor.sampling_rate
    times = np.arange(int(seconds * rate)) / rate
    chirp = 0.3 * np.sin(2 * np.pi * (150 + 400 * times) * times)
    noise = 0.02 * np.random.default_rng(0).standard_normal(times.shape)
    features = extractor(
        (chirp + noise).astype(np.float32),
        sampling_rate=rate,
        return_attention_mask=True,
        padding="max_length",
        return_tensors="np",
    )
    window = features["input_features"][0]
    valid = int(features["attention_mask"][0].sum())
    padded = np.pad(window, ((0, 0), (0, RIGHT_CONTEXT_FRAMES)))
    return window[:, :valid], padded[:, valid : valid + RIGHT_CONTEXT_FRAMES]


# The encoder graph's largest tolerated difference from the fp32 PyTorch tower, as a share of the
# reference's own root-mean-square size. Measured: fp32 about 1e-6, fp16 about 1e-3; int8's dynamic
# quantization about 2-4% on the tiny and default models. A graph that computes something else
# is off by about 1 (or 1.4 for unrelated values of the same size).
ENCODER_RELATIVE_RMS_BOUNDS = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.25}


def check_against_pytorch(
    checkpoint: Checkpoint,
    tower: torch.nn.Module,
    compressor: CompressorProjector,
    bundle_dir: Path,
    precision: EncoderPrecision = "fp32",
) -> dict[str, Any]:
    """Run both graphs in onnxruntime and in PyTorch (fp32) on a probe; refuse on mismatch."""
    import onnx
    import onnxruntime

    for name in (ENCODER_FILE, COMPRESSOR_FILE):
        onnx.checker.check_model(str(bundle_dir / name))
    mel, right_context = probe_features(checkpoint, PROBE_SECONDS)
    with torch.no_grad():
        frames_ref = ClipLengthAudioEncoder(tower)(torch.from_numpy(mel), torch.from_numpy(right_context)).numpy()
    encoder = onnxruntime.InferenceSession(str(bundle_dir / ENCODER_FILE), providers=["CPUExecutionProvider"])
    frames = encoder.run(None, {ENCODER_INPUT: mel, ENCODER_RIGHT_CONTEXT_INPUT: right_context})[0]
    compressor_session = onnxruntime.InferenceSession(
        str(bundle_dir / COMPRESSOR_FILE), providers=["CPUExecutionProvider"]
    )
    embeddings = compressor_session.run(None, {COMPRESSOR_INPUT: frames_ref})[0]
    with torch.no_grad():
        embeddings_ref = compressor(torch.from_numpy(frames_ref)).numpy()
    if frames.shape != frames_ref.shape or embeddings.shape != embeddings_ref.shape:
        raise EdgelalmError(
            f"exported graphs disagree with PyTorch on shapes: encoder {frames.shape} vs {frames_ref.shape}, "
            f"compressor {embeddings.shape} vs {embeddings_ref.shape}"
        )
    encoder_relative_rms = float(np.sqrt(np.mean((frames - frames_ref) ** 2) / max(np.mean(frames_ref**2), 1e-30)))
    if not encoder_relative_rms <= ENCODER_RELATIVE_RMS_BOUNDS[precision]:
        raise EdgelalmError(
            f"encoder ONNX ({precision}) differs from PyTorch fp32 by {encoder_relative_rms:.1e} of the output's size "
            f"(at most {ENCODER_RELATIVE_RMS_BOUNDS[precision]:g} expected): export is broken"
        )
    compressor_diff = float(np.abs(embeddings - embeddings_ref).max())
    scale = max(1.0, float(np.abs(embeddings_ref).max()))
    if compressor_diff > 1e-4 * scale:
        raise EdgelalmError(f"compressor ONNX differs from PyTorch by {compressor_diff:.2e}: export is broken")
    return {
        "seconds": mel.shape[1] / 100.0,
        "encoder_frames": int(frames.shape[0]),
        "audio_tokens": int(embeddings.shape[0]),
        "encoder_max_abs_diff": float(np.abs(frames - frames_ref).max()),
        "encoder_max_abs_value": float(np.abs(frames_ref).max()),
        "encoder_relative_rms_diff": encoder_relative_rms,
        "compressor_max_abs_diff": compressor_diff,
    }


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter (torch.onnx, onnxscript, the quantizer) so the user sees our steps only."""
    # The root logger too: onnxruntime's quantizer logs its advice there.
    names = ("", "torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
