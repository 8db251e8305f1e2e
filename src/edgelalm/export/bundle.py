"""`edgelalm export`: checkpoint folder -> bundle folder, atomically.

Steps: open the checkpoint, load the audio tower and projector, trace the encoder, trace the
compressor + projector (one graph per compressor choice), check the graphs against PyTorch on a
probe clip, write the decoder (with the adapter merged, or, for several compressors, unmerged with
each choice's adapter as a llama.cpp LoRA GGUF), check it in llama.cpp, write the manifest.
Everything is written into a hidden temporary folder beside the target and renamed into place
at the end, so a failed or interrupted export leaves nothing behind.

This module orchestrates; each concern has its own: verify.py (the checks against PyTorch and
llama.cpp), share.py (--share-from), describe.py (the manifest's content), edgelalm.files (the
atomic folder), edgelalm.prompt (the prompt pieces).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from edgelalm.checks import check_choice
from edgelalm.compression import CompressorSpec
from edgelalm.constants import (
    COMPRESSOR_FILE,
    CTC_FILE,
    CTC_HEAD_FILE,
    CTC_READS,
    DECODER_FILE,
    DEFAULT_CTC_READS,
    ENCODER_FILE,
    MANIFEST_FILE,
    MEL_FILTERS_FILE,
    QUANT_TYPES,
    CtcReads,
    PromptFormat,
    QuantType,
    adapter_file,
    compressor_file,
    ctc_file,
)
from edgelalm.errors import EdgelalmError
from edgelalm.export.adapter import LoraAdapter, open_adapter
from edgelalm.export.adapter_gguf import write_adapter_gguf
from edgelalm.export.checkpoint import Checkpoint, open_checkpoint
from edgelalm.export.compressor import CompressorProjector, build_compressor, export_compressor_onnx
from edgelalm.export.ctc import (
    FramesCtcHead,
    ctc_head_folder,
    export_ctc_onnx,
    has_ctc_head,
    head_realigned_to,
    load_ctc_head,
)
from edgelalm.export.decoder import write_decoder
from edgelalm.export.describe import ExportedChoice, ExportedCtcHead, build_manifest
from edgelalm.export.encoder import EncoderPrecision, check_torch_version, export_encoder_onnx
from edgelalm.export.share import check_shared_copies, shareable_files
from edgelalm.export.verify import check_adapters, check_compressor, check_ctc, check_decoder, check_encoder
from edgelalm.files import atomic_folder, link_or_copy, read_json_object, write_failed
from edgelalm.manifest import (
    PromptInfo,
    enclosing_bundle,
    is_encoder_file,
    write_manifest,
)
from edgelalm.progress import Steps
from edgelalm.prompt import TEMPLATE_SOURCE_DESCRIPTIONS, prompt_pieces
from edgelalm.runtime.canary import run_canary
from edgelalm.runtime.llama_backend import ExtraBuffers


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
    # Several compressors in one bundle (issue 19): (compressor, its adapter folder or None) each,
    # the first the default, each adapter written as a llama.cpp LoRA GGUF and applied at run time
    # over one decoder with nothing merged. Empty: the one `compressor`, `adapter_dir` merged.
    choices: tuple[tuple[CompressorSpec, Path | None], ...] = ()
    # What the CTC head (a checkpoint with one) reads: the encoder's frames, one head for every
    # compressor, or each compressor's audio tokens (its adapter's realigned head, if any).
    ctc_reads: CtcReads = DEFAULT_CTC_READS

    def __post_init__(self) -> None:
        if self.choices:
            labels = [spec.label for spec, _ in self.choices]
            if len(set(labels)) != len(labels):
                raise EdgelalmError(f"compressors listed twice: {', '.join(labels)}")
            if self.compressor != self.choices[0][0] or self.adapter_dir is not None:
                raise EdgelalmError("with several compressors, each names its own adapter (choices)")


def _choices(options: ExportOptions) -> list[ExportedChoice]:
    if not options.choices:
        return [ExportedChoice(options.compressor, COMPRESSOR_FILE)]
    return [
        ExportedChoice(spec, compressor_file(spec.label), adapter_dir=folder, adapter_file=adapter_file(spec.label))
        for spec, folder in options.choices
    ]


def export_bundle(options: ExportOptions) -> Path:
    """Write the bundle for `options`; returns its folder."""
    check_choice("quant", options.quant, QUANT_TYPES)  # before the checkpoint loads
    check_choice("ctc_reads", options.ctc_reads, CTC_READS)
    check_torch_version()
    try:
        _write_bundle(options)
    except OSError as error:
        # A full disk, a file system gone read-only, a quota: the staging folder is already removed.
        raise write_failed("the bundle", options.out_dir, error) from None
    return options.out_dir


def _listed_by_manifest(folder: Path) -> Callable[[str], bool]:
    """Whether a name is one the bundle in `folder` lists (or its manifest): --force replaces that
    bundle, never a folder that also holds other files. Read when asked: atomic_folder asks again
    before its swap, when another export may have written the folder meanwhile."""

    def listed(name: str) -> bool:
        names = {MANIFEST_FILE}
        with contextlib.suppress(EdgelalmError, OSError):
            files = read_json_object(folder / MANIFEST_FILE).get("files")
            names |= set(files) if isinstance(files, dict) else set()
        return name in names

    return listed


def _refuse_inside_a_bundle(out_dir: Path) -> None:
    """A bundle written inside another (`run`, `inspect` refused the outer one from then on)."""
    if (folder := enclosing_bundle(out_dir)) is not None:
        raise EdgelalmError(f"{out_dir} is inside the bundle {folder}: name a folder outside it")


def _write_bundle(options: ExportOptions) -> None:
    _refuse_inside_a_bundle(options.out_dir)
    choices = _choices(options)
    several = bool(options.choices)
    steps = Steps(total=9 if several else 8)
    owned = _listed_by_manifest(options.out_dir)
    with atomic_folder(options.out_dir, options.force, MANIFEST_FILE, owned) as staging, quiet_exporter():
        with steps.step(f"Reading checkpoint {options.model_dir}"):
            checkpoint = open_checkpoint(options.model_dir)
            prompt = prompt_pieces(checkpoint.processor, checkpoint.path, checkpoint.name, options.prompt_format)
            steps.note(_prompt_note(prompt, options.prompt_format))
            adapter = open_checkpoint_adapter(checkpoint, options.adapter_dir, prompt.format)
            if adapter:
                steps.note(f"LoRA adapter {options.adapter_dir}: {_adapter_summary(adapter)}")
            for choice in choices:
                choice.adapter = open_checkpoint_adapter(checkpoint, choice.adapter_dir, prompt.format)
                if several:
                    steps.note(
                        f"{choice.spec.label}: "
                        + (
                            f"adapter {choice.adapter_dir}: {_adapter_summary(choice.adapter)}"
                            if choice.adapter
                            else "no adapter"
                        )
                    )
            shared = shareable_files(checkpoint, options, adapter, prompt.chat_template)
        with steps.step("Loading the audio tower and projector"):
            tower = checkpoint.load_audio_tower()
            projector = checkpoint.load_projector()
            compressors = {
                choice.graph_file: CompressorProjector(build_compressor(choice.spec), projector).eval()
                for choice in choices
            }
            ctc_heads = _ctc_heads(checkpoint, options, choices, projector, steps)
        if ENCODER_FILE in shared and options.share_from:
            # Copied, not linked: onnx refuses external weights that have several hard links.
            with steps.step(f"Copying the audio encoder ({options.encoder_precision}) from {options.share_from}"):
                encoder_files = [name for name in shared if is_encoder_file(name)]
                for name in encoder_files:
                    shutil.copy2(options.share_from / name, staging / name)
                check_shared_copies(staging, encoder_files, shared, options.share_from)
        else:
            with steps.step(f"Exporting the audio encoder to ONNX ({options.encoder_precision})"):
                export_encoder_onnx(tower, staging / ENCODER_FILE, options.encoder_precision)
        np.save(staging / MEL_FILTERS_FILE, checkpoint.processor.feature_extractor.mel_filters)
        labels = ", ".join(choice.spec.label for choice in choices)
        with steps.step(f"Exporting compressor {labels} + projector to ONNX"):
            for file_name, compressor in compressors.items():
                export_compressor_onnx(compressor, tower.config.d_model, staging / file_name)
            for exported in ctc_heads:
                reads_frames = exported.reads_frames
                width = tower.config.d_model if reads_frames else checkpoint.config.text_config.hidden_size
                export_ctc_onnx(exported.head, width, staging / exported.file)
                source = (
                    f"an adapter's, realigned to {exported.realigned_to}"
                    if exported.realigned_to
                    else "the checkpoint's"
                )
                reads = "the encoder's frames, through the projector" if reads_frames else "the audio tokens"
                steps.note(f"{exported.file}: {source} CTC head ({CTC_HEAD_FILE}) over {reads}, for joint decoding")
        with steps.step("Checking the graphs against PyTorch on a probe clip"):
            frames, encoder_probe = check_encoder(checkpoint, tower, staging, options.encoder_precision)
            steps.note(
                f"encoder {options.encoder_precision} vs PyTorch fp32: "
                f"max |diff| {encoder_probe['encoder_max_abs_diff']:.2e} "
                f"(largest |value| {encoder_probe['encoder_max_abs_value']:.2f}; "
                f"{encoder_probe['encoder_relative_rms_diff']:.1e} of its RMS) "
                f"on a {encoder_probe['seconds']:.1f} s probe"
            )
            for file_name, compressor in compressors.items():
                probe = {**encoder_probe, **check_compressor(frames, compressor, staging, file_name)}
                if file_name == choices[0].graph_file:
                    first_probe = probe
                steps.note(
                    f"{file_name} vs PyTorch: max |diff| {probe['compressor_max_abs_diff']:.2e}, "
                    f"{probe['audio_tokens']} audio tokens from {probe['encoder_frames']} encoder frames"
                )
            for exported in ctc_heads:
                reader = compressors[exported.reader] if exported.reader is not None else None
                difference = check_ctc(frames, reader, exported.head, staging / exported.file)
                steps.note(f"{exported.file} vs PyTorch: max |diff| {difference:.2e}")
        del tower, projector, compressors  # the heads' descriptions stay for the manifest
        merged = " with the LoRA merged" if adapter else ""
        if DECODER_FILE in shared and options.share_from:
            with steps.step(f"Linking the decoder ({options.quant}){merged} from {options.share_from}"):
                link_or_copy(options.share_from / DECODER_FILE, staging / DECODER_FILE)
                check_shared_copies(staging, [DECODER_FILE], shared, options.share_from)
        else:
            with steps.step(f"Writing the decoder to GGUF ({options.quant}){merged}") as show:
                write_decoder(
                    checkpoint,
                    staging / DECODER_FILE,
                    options.quant,
                    adapter,
                    lambda done, total: show(f"tensor {done}/{total}"),
                    prompt.chat_template,
                )
        if several:
            adapted = [choice for choice in choices if choice.adapter]
            # f32 factors beside an f32 decoder (exact parity); f16 otherwise (half the size).
            float_type = "f32" if options.quant == "f32" else "f16"
            with steps.step(f"Writing {len(adapted)} adapters as llama.cpp LoRA GGUFs ({float_type})"):
                for choice in adapted:
                    assert choice.adapter and choice.adapter_file
                    choice.gguf_alpha = write_adapter_gguf(
                        checkpoint, choice.adapter, staging / choice.adapter_file, float_type
                    )
        with steps.step("Checking the decoder in llama.cpp"):
            decoder_check = check_decoder(checkpoint, staging / DECODER_FILE, prompt)
            steps.note(
                f"llama.cpp loaded it: {decoder_check['n_vocab']} tokens, width {decoder_check['n_embd']}; "
                "prompt token ids equal the checkpoint tokenizer's"
            )
            adapter_files = [choice.adapter_file for choice in choices if choice.adapter_file and choice.adapter]
            if adapter_files:
                check_adapters(staging / DECODER_FILE, [staging / name for name in adapter_files])
                steps.note(f"llama.cpp loaded {', '.join(adapter_files)} onto it")
            canary = run_canary(staging / DECODER_FILE, extra_buffers=options.llama_extra_buffers)
            steps.note(
                f"llama.cpp decoded {canary['prefill_tokens']} tokens in batches and generated "
                f"{canary['generated_tokens']} "
                f"in a child process ({canary['prefill_ms']:.0f} ms + {canary['decode_ms']:.0f} ms; weights in "
                f"{', '.join(canary['weight_buffers'])})"
            )
        with steps.step("Writing the manifest"):
            manifest = write_manifest(
                staging,
                build_manifest(
                    checkpoint, options, prompt, first_probe, adapter, choices if several else [], ctc_heads
                ),
                checked=shared,  # check_shared_copies verified them as they came in
            )
            for name, record in manifest.files.items():
                steps.note(f"{name}: {record.bytes / 1e6:.2f} MB")


def _ctc_heads(
    checkpoint: Checkpoint, options: ExportOptions, choices: list[ExportedChoice], projector: nn.Module, steps: Steps
) -> list[ExportedCtcHead]:
    """The bundle's CTC heads. Reading frames: the checkpoint's, over the projected encoder frames,
    for every compressor. Reading audio tokens: its own (the merged adapter's, realigned to its
    compressor, else the checkpoint's) and, in a bundle of several, each choice's adapter's own."""
    several = bool(options.choices)
    if options.ctc_reads == "frames":
        unused = [choice.adapter_dir for choice in choices if choice.adapter_dir and has_ctc_head(choice.adapter_dir)]
        if options.adapter_dir is not None and has_ctc_head(options.adapter_dir):
            unused.append(options.adapter_dir)
        checkpoint_head = has_ctc_head(checkpoint.path)
        for folder in dict.fromkeys(unused):
            instead = (
                "the bundle's head is the checkpoint's, over the encoder's frames"
                if checkpoint_head
                else "the checkpoint has none to read the encoder's frames, so the bundle has no CTC head"
            )
            steps.note(
                f"{folder}: its realigned CTC head is not used: {instead} (--ctc-reads audio-tokens decodes with it)"
            )
        if not checkpoint_head:
            return []
        embeddings = checkpoint.tensor(checkpoint.decoder_tensor_keys()["model.embed_tokens.weight"])
        frames_head = FramesCtcHead(projector, load_ctc_head(checkpoint.path, embeddings)).eval()
        return [ExportedCtcHead(CTC_FILE, None, None, frames_head, None)]
    own_dir = ctc_head_folder(checkpoint.path, None if several else options.adapter_dir)
    realigned = [c for c in choices if several and c.adapter_dir is not None and has_ctc_head(c.adapter_dir)]
    if own_dir is None and not realigned:
        return []
    embeddings = checkpoint.tensor(checkpoint.decoder_tensor_keys()["model.embed_tokens.weight"])
    heads = []
    if own_dir is not None:
        # Checked on the embeddings of a compressor that decodes with it.
        own_labels = {choice.spec.label for choice in realigned}
        reader = next((choice for choice in choices if choice.spec.label not in own_labels), choices[0])
        realigned_to = None if own_dir == checkpoint.path else head_realigned_to(own_dir) or reader.spec.label
        head = load_ctc_head(own_dir, embeddings)
        heads.append(ExportedCtcHead(CTC_FILE, None, reader.graph_file, head, realigned_to))
    for choice in realigned:
        assert choice.adapter_dir is not None
        realigned_to = head_realigned_to(choice.adapter_dir) or choice.spec.label
        head = load_ctc_head(choice.adapter_dir, embeddings)
        heads.append(
            ExportedCtcHead(ctc_file(choice.spec.label), choice.spec.label, choice.graph_file, head, realigned_to)
        )
    return heads


def _adapter_summary(adapter: LoraAdapter) -> str:
    return f"rank {adapter.rank}, alpha {adapter.alpha:g}, {len(adapter.target_modules)} modules"


def open_checkpoint_adapter(
    checkpoint: Checkpoint, adapter_dir: Path | None, prompt_format: PromptFormat
) -> LoraAdapter | None:
    """The adapter at `adapter_dir` checked against the checkpoint's tensors, and against the
    bundle's prompt format where its finetune record names the one it was trained with."""
    from edgelalm.training.finetune import read_finetune_record

    if adapter_dir is None:
        return None
    trained_with = None
    with contextlib.suppress(EdgelalmError, OSError):  # a record that cannot be read says nothing either way
        trained_with = read_finetune_record(adapter_dir).get("prompt_format") if adapter_dir.is_dir() else None
    if trained_with is not None and trained_with != prompt_format:
        raise EdgelalmError(
            f"{adapter_dir} was trained on the {trained_with} prompt format and this bundle prompts in the "
            f"{prompt_format} one (--prompt-format {trained_with}, or finetune with --prompt-format {prompt_format})"
        )
    stored_keys = checkpoint.decoder_tensor_keys()
    shapes = {name: checkpoint.tensor_shape(key) for name, key in stored_keys.items()}
    return open_adapter(adapter_dir, shapes)


def _prompt_note(prompt: PromptInfo, asked: PromptFormat | None) -> str:
    how = "as asked" if asked else "detected; --prompt-format to choose"
    if prompt.format == "base":
        return f"prompt format base ({how}): the audio, then {prompt.default_prompt!r}; no chat template"
    return f"prompt format instruct ({how}): {TEMPLATE_SOURCE_DESCRIPTIONS[prompt.template_source]}"


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
