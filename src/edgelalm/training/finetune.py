"""Realign a Qwen2-Audio checkpoint to a compressor with LoRA: the paper's method.

The compressor sits between the frozen audio tower and the frozen projector, exactly as in the
exported bundle; LoRA (rank 16, alpha 32 by default) on every q_proj and k_proj of the language
model (the paper's choice; `lora_modules` can name other projections of each decoder layer) learns
to read the shorter audio sequence. The result is a standard peft adapter folder
(adapter_config.json + adapter_model.safetensors) that `edgelalm export --adapter` merges.

Asked (`ctc_head`), a checkpoint's CTC head (CTC_HEAD_FILE, for joint decoding) is realigned too,
beside the LoRA: the head trained on uncompressed embeddings reads an average of three frames badly
(its best path on the default model: 87% WER at avg3 against 38% at none), so a copy learns a
residual linear map over the compressed embeddings (CTC loss; nothing else reaches it, as the
projector is frozen) and is saved in the adapter folder, where `export --ctc-reads audio-tokens`
takes it (by default a bundle's head reads the encoder's frames and needs none). `ctc_head_only`
realigns the head alone into an existing adapter folder, its LoRA untouched.

Paired data is a folder written by `edgelalm.training.dataset.build_dataset`, a folder of the frozen
tower's output written by `edgelalm.training.encoded.build_encoded` (checked to come from this
checkpoint's tower; the tower is skipped, so realigning is many times faster), or a TSV file with a
header naming `file` and `transcript` columns (audio paths relative to the TSV).
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelalm.compression import CompressorSpec
from edgelalm.constants import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    CTC_HEAD_FILE,
    ENCODER_FRAMES_PER_SECOND,
    FINETUNE_RECORD_FILE,
    LOSS_PLOT_FILE,
    MAX_LORA_ALPHA,
    TRAIN_LOG_FILE,
    TRAIN_SETTINGS_FILE,
    PromptFormat,
)
from edgelalm.errors import EdgelalmError
from edgelalm.files import read_tsv, write_json
from edgelalm.runtime.audio import audio_seconds, read_audio
from edgelalm.training.texts import normalize_transcript

# The linear projections of a Qwen2 decoder layer, and the paper's choice among them.
DECODER_LAYER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PAPER_LORA_MODULES = ("q_proj", "k_proj")


def lora_target_pattern(modules: tuple[str, ...]) -> str:
    """peft's target_modules regex: those projections of the language model only, never the audio
    tower's (it has q_proj, k_proj, v_proj too)."""
    unknown = sorted(set(modules) - set(DECODER_LAYER_PROJECTIONS))
    if not modules or unknown:
        raise EdgelalmError(
            f"LoRA modules: {', '.join(unknown) or 'none named'}; choose among {', '.join(DECODER_LAYER_PROJECTIONS)}"
        )
    return rf".*language_model.*\.({'|'.join(dict.fromkeys(modules))})"


@dataclass(frozen=True)
class FinetuneOptions:
    model_dir: Path
    data: Path
    out_dir: Path
    compressor: CompressorSpec
    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 1e-3
    rank: int = 16
    alpha: float = 32.0
    lora_modules: tuple[str, ...] = PAPER_LORA_MODULES
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    force: bool = False
    normalize: bool = True  # lowercase and spell numbers, as the default model's transcripts are
    # Realign the checkpoint's CTC head to the compressor too (None: no). A bundle's head reads the
    # encoder's frames by default and needs none; a realigned head serves `export --ctc-reads
    # audio-tokens`. None tells "not asked" from a --no-ctc-head beside ctc_head_only.
    ctc_head: bool | None = None
    # Only that, into the existing adapter folder `out_dir` (its LoRA untouched).
    ctc_head_only: bool = False
    # More folders of the frozen tower's output trained on beside `data` (one too), read as one set.
    more_data: tuple[Path, ...] = ()
    # The prompt around the audio, as export's --prompt-format (None: detected as export does).
    prompt_format: PromptFormat | None = None

    @property
    def data_name(self) -> str:
        """What errors about the training set name: every folder read as one."""
        return " + ".join(str(path) for path in (self.data, *self.more_data))


class PairedAudio:
    """(samples, text) pairs from a TSV manifest: `dataset[i]`, `len`, `seconds`, `sampling_rate`.

    Every file is checked up front from its header (so a bad row fails before training starts);
    samples are read when a batch asks for them, so a large manifest does not fill memory.
    """

    def __init__(self, manifest: Path, sampling_rate: int, normalize: bool) -> None:
        self.sampling_rate = sampling_rate
        try:
            rows = read_tsv(manifest)
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise EdgelalmError(f"cannot read {manifest}: {error}") from None
        if not rows or not {"file", "transcript"} <= set(rows[0]):
            raise EdgelalmError(
                f"{manifest}: expected a TSV with a header naming 'file' and 'transcript' columns and at least one row"
            )
        self.rows = rows  # every column, as the manifest has them
        self.files = [manifest.parent / row["file"] for row in rows]
        self.texts = [normalize_transcript(row["transcript"]) if normalize else row["transcript"] for row in rows]
        self.seconds = np.array([audio_seconds(file) for file in self.files])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        return read_audio(self.files[index], self.sampling_rate), self.texts[index]


def open_paired_data(path: Path, sampling_rate: int, normalize: bool, model_dir: Path, more: tuple[Path, ...] = ()):
    """`path` (a dataset folder, a folder of the frozen tower's output or a TSV) as paired data; `more`:
    further folders of the tower's output, read as one set with `path` (check_paired_data: one too)."""
    from edgelalm.training.dataset import SpeechDataset
    from edgelalm.training.encoded import EncodedDataset, is_encoded_folder

    check_paired_data(path, more)
    if not path.is_dir():
        return PairedAudio(path, sampling_rate, normalize)
    if is_encoded_folder(_dataset_folder(path)):
        # The frozen tower's output, stored: the compressor reads it as it reads the tower's.
        encoded = EncodedDataset(_dataset_folder(path), *map(_dataset_folder, more))
        encoded.check_tower(model_dir)
        return encoded
    dataset = SpeechDataset(_dataset_folder(path))
    if dataset.sampling_rate != sampling_rate:
        raise EdgelalmError(f"{path} is sampled at {dataset.sampling_rate} Hz; the model takes {sampling_rate} Hz")
    return dataset


# The head-only realignment's training log, in the adapter folder.
CTC_HEAD_LOG_FILE = "ctc_head_train_log.jsonl"
# The CTC loss's weight beside the answer loss: nothing trains on both (the head only reads the CTC
# loss, the LoRA only the answer loss), so the weight only scales the logged total.
CTC_REALIGN_WEIGHT = 1.0

# What an adapter folder holds (peft's files, finetune's record, log and plot): --force replaces
# a folder of these and nothing else.
_ADAPTER_FILES = frozenset(
    {
        ADAPTER_CONFIG_FILE,
        ADAPTER_WEIGHTS_FILE,
        "README.md",
        FINETUNE_RECORD_FILE,
        TRAIN_LOG_FILE,
        TRAIN_SETTINGS_FILE,
        LOSS_PLOT_FILE,
        CTC_HEAD_FILE,
        CTC_HEAD_LOG_FILE,
    }
)


def owns_adapter_file(name: str) -> bool:
    return name in _ADAPTER_FILES


# The chat template's text around the audio and the answer: far fewer tokens than this.
PROMPT_TOKENS_ALLOWED = 256


def transcript_lengths(processor: Any, data: Any) -> list[int]:
    """Each transcript's answer tokens, counted without transformers' warning that a sequence is
    longer than the model takes (it is only counted here; a line on stderr beside the one error)."""
    from transformers.utils import logging as transformers_logging

    from edgelalm.training.model import answer_token_ids

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return [len(ids) for ids in answer_token_ids(processor.tokenizer, list(data.texts))]
    finally:
        transformers_logging.set_verbosity(verbosity)


def check_fits_the_decoder(
    options: FinetuneOptions, data: Any, config: Any, lengths: list[int], window_s: float
) -> None:
    """The data's frames are the tower's width, and the longest transcript (`lengths`: each one's
    tokens), a window's audio tokens and the prompt fit the decoder's context: 100000-character
    transcripts trained for ever, longer-than-context ones silently."""
    width, tower_width = getattr(data, "width", None), config.audio_config.d_model
    if width is not None and width != tower_width:
        raise EdgelalmError(
            f"{options.data_name}: frames of width {width}; the model's audio tower gives {tower_width}"
        )
    longest = int(np.argmax(lengths))
    audio_tokens = options.compressor.max_audio_tokens(int(window_s * ENCODER_FRAMES_PER_SECOND))
    context = config.text_config.max_position_embeddings
    if lengths[longest] + audio_tokens + PROMPT_TOKENS_ALLOWED > context:
        raise EdgelalmError(
            f"{options.data_name}: clip {longest + 1}'s transcript is {lengths[longest]} tokens; with up to "
            f"{audio_tokens} audio tokens and the prompt it does not fit the decoder's context of {context}"
        )


def check_ctc_alignable(options: FinetuneOptions, data: Any, lengths: list[int]) -> None:
    """A CTC path needs an audio token for each token of the transcript (`lengths`): with a large
    factor most clips have fewer, CTC's loss is infinite there, and PyTorch's zero_infinity makes
    it 0. With most clips so, the head "realigned" on nothing: loss 0.0 at every step, exit 0, the
    head as it was. Known ahead for fixed-rate compressors (unseg's tokens follow the audio)."""
    spec = options.compressor
    if not spec.audio_tokens_per_second:
        return
    positions = [spec.max_audio_tokens(int(seconds * ENCODER_FRAMES_PER_SECOND)) for seconds in data.seconds]
    short = [index for index, (length, count) in enumerate(zip(lengths, positions, strict=True)) if length > count]
    if 2 * len(short) > len(lengths):
        first = short[0]
        raise EdgelalmError(
            f"{options.data_name}: {len(short)} of {len(lengths)} clips have fewer audio tokens with {spec.label} "
            f"than their transcript has tokens (clip {first + 1}: {positions[first]} against {lengths[first]}), "
            "so the CTC head cannot be realigned on them: a smaller factor, or --no-ctc-head"
        )


def _dataset_folder(path: Path) -> Path:
    """A dataset folder, or its train split where it holds one."""
    return path / "train" if (path / "train" / "dataset.json").is_file() else path


def check_paired_data(data: Path, more: tuple[Path, ...] = ()) -> None:
    """Refuse missing training data, or --more-data beside anything but folders of the frozen
    tower's output that join (check_joinable), in one line (before the model's load, which takes a
    while)."""
    from edgelalm.training.encoded import check_joinable, is_encoded_folder

    for path in (data, *more):
        if not path.is_dir() and not path.is_file():
            what = f"{path} is no file or folder" if path.exists() else f"training data not found: {path}"
            raise EdgelalmError(f"{what} (a dataset folder or a TSV file with file/transcript columns)")
        if more and not (path.is_dir() and is_encoded_folder(_dataset_folder(path))):
            raise EdgelalmError(
                f"--more-data joins folders of the frozen tower's output (make_encoded_data.py): {path} is not one"
            )
    if more:
        check_joinable([_dataset_folder(path) for path in (data, *more)])


def open_for_training(model_dir: Path, device: str, prompt_format: PromptFormat | None = None):
    """The checkpoint's config, processor and prompt pieces, validated, before its weights load
    (minutes for a 7B): the data is checked against them first. The pieces are export's for the
    same checkpoint and `prompt_format` (None: detected as export detects it), so an adapter
    learns the prompt its bundle feeds: a template-less folder named Qwen2-Audio-7B is prompted in
    the base format, which the instruct chat template trained against before."""
    import torch
    from transformers import Qwen2AudioProcessor

    from edgelalm.export.checkpoint import open_checkpoint
    from edgelalm.prompt import checkpoint_template, instruct_template, prompt_pieces

    checkpoint = open_checkpoint(model_dir)  # validates: a Qwen2-Audio checkpoint with safetensors weights
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgelalmError("device cuda: this torch build sees no CUDA GPU")
    processor = Qwen2AudioProcessor.from_pretrained(model_dir)
    pieces = prompt_pieces(processor, model_dir, checkpoint.name, prompt_format)
    # As export does: the checkpoint's own template (transformers' processor does not read the
    # tokenizer's), else Qwen2-Audio-Instruct's as edgelalm ships it, not a fallback that
    # transformers keeps only for now (the published checkpoints carry no template file).
    processor.chat_template = checkpoint_template(model_dir) or instruct_template()
    return checkpoint.config, processor, pieces


def load_weights(model_dir: Path, device: str):
    """The model in float32 through safetensors (`checkpoint.load_model`)."""
    from edgelalm.export.checkpoint import load_model

    return load_model(model_dir, device)


def load_for_training(model_dir: Path, device: str):
    """The checkpoint, validated, and its processor (open_for_training, load_weights)."""
    _, processor, _ = open_for_training(model_dir, device)
    return load_weights(model_dir, device), processor


def check_rank(rank: int, config: Any, target_pattern: str) -> None:
    """A rank past an adapted projection's smaller side adds nothing but memory (10^6 on the
    default model: about 20 GB of factors and optimizer state). The projections' sides come from
    the model built on the meta device (shapes only, no memory), before the weights load."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    with torch.device("meta"):
        modules = Qwen2AudioForConditionalGeneration(config).named_modules()
        smallest = min(
            (min(module.in_features, module.out_features) for name, module in modules
             if re.fullmatch(target_pattern, name) and hasattr(module, "in_features")),
            default=rank,
        )  # fmt: skip
    if rank > smallest:
        raise EdgelalmError(f"--rank {rank} is past the adapted projections' smaller side ({smallest})")


def realigns_ctc_head(options: FinetuneOptions) -> bool:
    """Whether `finetune` realigns the checkpoint's CTC head (refused where asked for and absent)."""
    from edgelalm.export.ctc import has_ctc_head

    present = has_ctc_head(options.model_dir)
    asked = options.ctc_head or options.ctc_head_only
    if asked and not present:
        raise EdgelalmError(f"{options.model_dir} has no CTC head ({CTC_HEAD_FILE}) to realign")
    if options.ctc_head_only and options.ctc_head is False:
        raise EdgelalmError("ctc_head_only realigns the CTC head: it cannot be turned off as well")
    return bool(asked)


def finetune(options: FinetuneOptions, progress: bool = True) -> Path:
    """Train a LoRA adapter with the compressor in place, and (`ctc_head`) realign the checkpoint's
    CTC head to it; returns the adapter folder. `ctc_head_only`: the head alone, into the existing
    adapter folder."""
    import torch
    from peft import LoraConfig, get_peft_model

    from edgelalm.export.compressor import build_compressor
    from edgelalm.files import atomic_folder, check_replaceable, refuse_a_second_writer, write_failed
    from edgelalm.training.model import PromptIds
    from edgelalm.training.train import TrainSettings, plot_losses, train

    if options.steps < 1 or options.batch_size < 1:
        raise EdgelalmError("steps and batch size must be at least 1")
    if options.rank < 1 or not 0 < options.alpha <= MAX_LORA_ALPHA:
        raise EdgelalmError(f"the LoRA rank must be at least 1 and alpha above 0 and at most {MAX_LORA_ALPHA:g}")
    # inf or 1e30 trained every weight to NaN and saved it with exit 0; 0 trains nothing.
    if not 0 < options.learning_rate <= 1:
        raise EdgelalmError(f"the learning rate must be above 0 and at most 1, got {options.learning_rate:g}")
    target_pattern = lora_target_pattern(options.lora_modules)
    realign_head = realigns_ctc_head(options)
    # peft asks transformers a deprecated question; the user can do nothing about it.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if options.ctc_head_only:
        record = check_adapter_to_realign(options)
    else:
        check_replaceable(options.out_dir.absolute(), options.force, ADAPTER_CONFIG_FILE, owns_adapter_file)
    refuse_a_second_writer(options.out_dir)  # before the weights load: minutes at 7B sizes
    check_paired_data(options.data, options.more_data)
    config, processor, prompt_info = open_for_training(options.model_dir, options.device, options.prompt_format)
    prompt = PromptIds.from_pieces(processor.tokenizer, prompt_info)
    sampling_rate = processor.feature_extractor.sampling_rate
    data = open_paired_data(options.data, sampling_rate, options.normalize, options.model_dir, options.more_data)
    # The record names every folder trained on (one path, as before, where there is one).
    data_record = [str(path) for path in (options.data, *options.more_data)] if options.more_data else str(options.data)
    window_s = processor.feature_extractor.n_samples / sampling_rate
    if float(np.max(data.seconds)) > window_s:
        longest = int(np.argmax(data.seconds))
        raise EdgelalmError(
            f"{options.data_name}: clip {longest + 1} is {data.seconds[longest]:.1f} s; the encoder window is "
            f"{window_s:g} s (cut longer clips, or leave them out)"
        )
    if len(data) < options.batch_size:
        raise EdgelalmError(f"{options.data_name}: {len(data)} clips, fewer than one batch of {options.batch_size}")
    lengths = transcript_lengths(processor, data)  # tokenized once, for both checks
    check_fits_the_decoder(options, data, config, lengths, window_s)
    if realign_head:
        check_ctc_alignable(options, data, lengths)
    check_rank(options.rank, config, target_pattern)
    # The data and options hold up: now the weights (they were loaded first, minutes for a 7B,
    # before a header-only TSV, a missing clip or a rank too large was found).
    model = load_weights(options.model_dir, options.device)

    torch.manual_seed(options.seed)
    settings = TrainSettings(
        steps=options.steps,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        warmup_steps=max(1, options.steps // 10),
        eval_every=options.steps + 1,
        seed=options.seed,
        threads=options.threads,
        bucket_batches=max(1, min(TrainSettings.bucket_batches, len(data) // options.batch_size)),
    )
    compressor = build_compressor(options.compressor)
    title = f"LoRA r{options.rank}/a{options.alpha:g} with {options.compressor.label}"

    def realign_ctc_head(staging: Path) -> dict[str, Any]:
        """The checkpoint's head realigned to the compressor (CTC loss only, after the LoRA: the two
        share no parameter, and apart their gradients are not clipped together), into `staging`."""
        from edgelalm.training.train import RUN_CTC_HEAD_FILE

        run = staging / ".ctc-head-run"
        model.requires_grad_(False)  # the head's own tensors train; it reads the frozen projector's output
        head_settings = dataclasses.replace(
            settings,
            ctc_target="tokens",
            ctc_weight=CTC_REALIGN_WEIGHT,
            ctc_realign_to=options.compressor.label,
            answer_loss=False,
        )
        log = train(
            model, processor, data, None, run, head_settings, compressor=compressor, parameters=[],
            progress=progress, ctc_head=options.model_dir / CTC_HEAD_FILE, prompt=prompt,
        )  # fmt: skip
        (run / RUN_CTC_HEAD_FILE).replace(staging / CTC_HEAD_FILE)
        log.path.replace(staging / CTC_HEAD_LOG_FILE)
        shutil.rmtree(run)
        return {
            "compressor": options.compressor.label,
            "steps": options.steps,
            "batch_size": options.batch_size,
            "learning_rate": options.learning_rate,
            "seed": options.seed,
            "data": data_record,
            "clips": len(data),
            "final_ctc_loss": log.records[-1]["ctc_loss"],
        }

    try:
        if options.ctc_head_only:
            with atomic_folder(options.out_dir, True, ADAPTER_CONFIG_FILE, owns_adapter_file) as staging:
                for kept in options.out_dir.iterdir():
                    if kept.name != CTC_HEAD_FILE:
                        shutil.copy2(kept, staging / kept.name)
                record["ctc_head"] = realign_ctc_head(staging)
                write_json(staging / FINETUNE_RECORD_FILE, record, escape_undecodable=True)
            return options.out_dir
        lora = LoraConfig(
            r=options.rank, lora_alpha=options.alpha, lora_dropout=0.0, bias="none", target_modules=target_pattern
        )
        peft_model = get_peft_model(model, lora)
        trained = [p for p in peft_model.parameters() if p.requires_grad]
        with atomic_folder(options.out_dir, options.force, ADAPTER_CONFIG_FILE, owns_adapter_file) as staging:
            log = train(
                peft_model.base_model.model,
                processor,
                data,
                None,
                staging,
                settings,
                compressor=compressor,
                parameters=trained,
                progress=progress,
                prompt=prompt,
            )
            peft_model.save_pretrained(staging, safe_serialization=True)
            meta = {
                "base_model": str(options.model_dir),
                "compressor": options.compressor.label,
                "steps": options.steps,
                "batch_size": options.batch_size,
                "learning_rate": options.learning_rate,
                "seed": options.seed,
                "lora_modules": list(dict.fromkeys(options.lora_modules)),
                "prompt_format": prompt_info.format,
                "data": data_record,
                "clips": len(data),
                "final_loss": log.records[-1]["loss"],
            }
            try:
                plot_losses(log, staging / LOSS_PLOT_FILE, title)
            except ImportError:
                print("matplotlib is not installed: no loss.png (pip install 'edgelalm[bench]')", file=sys.stderr)
            if realign_head:
                meta["ctc_head"] = realign_ctc_head(staging)
            write_json(staging / FINETUNE_RECORD_FILE, meta, escape_undecodable=True)
    except OSError as error:
        # Only what writing can cause: any other OSError (a clip that cannot be read) is not this.
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise write_failed("the adapter", options.out_dir, error) from None
    return options.out_dir


def check_adapter_to_realign(options: FinetuneOptions) -> dict[str, Any]:
    """The adapter folder a head-only realignment writes into: an adapter, and (where its record
    says) realigned to this compressor from this checkpoint. Returns its finetune record ({} if none)."""

    folder = options.out_dir
    if not (folder / ADAPTER_CONFIG_FILE).is_file():
        raise EdgelalmError(f"{folder} is not an adapter folder (no {ADAPTER_CONFIG_FILE}): realign its LoRA first")
    strays = sorted(entry.name for entry in folder.iterdir() if not (owns_adapter_file(entry.name) and entry.is_file()))
    if strays:
        raise EdgelalmError(f"{folder} holds files an adapter folder does not ({', '.join(strays)}); not touched")
    record = read_finetune_record(folder)
    realigned_to = adapter_compressor(folder, record)
    if realigned_to is not None and realigned_to != options.compressor.label:
        raise EdgelalmError(
            f"{folder} is realigned to {realigned_to}; its CTC head must be too (--compressor {realigned_to})"
        )
    return record


def adapter_compressor(folder: Path, record: dict[str, Any] | None = None) -> str | None:
    """The compressor an adapter folder was realigned to: its finetune record's, else its realigned
    CTC head's (the shipped adapters keep no record); None where neither says."""
    said = adapter_realignment(folder, record)
    return said[0] if said else None


def adapter_realignment(folder: Path, record: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """(compressor, the file that says so) for an adapter folder, as `adapter_compressor` reads it."""
    from edgelalm.export.ctc import has_ctc_head, head_realigned_to

    record = read_finetune_record(folder) if record is None else record
    head = record.get("ctc_head") or {}
    named = record.get("compressor") or (head.get("compressor") if isinstance(head, dict) else None)
    if not isinstance(head, dict) or (named and not isinstance(named, str)):  # hand-edited, or another tool's
        raise EdgelalmError(f"{folder / FINETUNE_RECORD_FILE} is not a finetune record (its compressor or ctc_head)")
    if named:
        return named, FINETUNE_RECORD_FILE
    named = head_realigned_to(folder) if has_ctc_head(folder) else None
    return (named, CTC_HEAD_FILE) if named else None


def read_finetune_record(folder: Path) -> dict[str, Any]:
    """An adapter folder's finetune record ({} where it keeps none)."""
    from edgelalm.files import read_json_object

    path = folder / FINETUNE_RECORD_FILE
    return read_json_object(path) if path.is_file() else {}
