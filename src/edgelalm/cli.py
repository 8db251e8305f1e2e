"""The `edgelalm` command line. A thin layer: each command parses options and calls one function.

Errors the user can fix arrive as EdgelalmError and leave as one line on stderr with a
non-zero exit code; usage errors too. torch is imported only by the commands that export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from typer.exceptions import TyperException

from edgelalm import interrupts
from edgelalm.checks import is_finite_number, short_repr
from edgelalm.compression import COMPRESSOR_DESCRIPTIONS, FACTOR_COMPRESSORS, MAX_FACTOR, CompressorSpec
from edgelalm.constants import (
    BENCH_COMPRESSORS,
    BENCH_SECONDS,
    DEFAULT_CTC_READS,
    EXPORT_PACKAGES,
    MANIFEST_FILE,
    CtcReads,
    Device,
    EncoderPrecision,
    EncoderPrecisionChoice,
    ExtraBuffers,
    PromptFormat,
    QuantType,
    ScaffoldPreset,
    SubtitleFormat,
    WindowMode,
)
from edgelalm.errors import EdgelalmError, error_gist, printable
from edgelalm.manifest import MAX_BEAM_SIZE, bundle_name

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from edgelalm.manifest import CtcInfo, DecoderInfo, Manifest
    from edgelalm.runtime.pipeline import RunResult

DEFAULT_EXPORT_ROOT = Path("export")
MAX_BENCH_SECONDS = 3600  # an hour of synthetic audio: far past any context, 230 MB of samples
MIN_BENCH_SECONDS = 0.05  # the encoder needs 30 ms: shorter clips failed after every export
# Decode speed needs a few dozen tokens; the PyTorch reference generates however many it is asked
# for (10^9 ran for days).
MAX_BENCH_TOKENS = 1024

app = typer.Typer(
    name="edgelalm",
    help="Compressed audio language models (Qwen2-Audio and kin) on edge devices.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click help: it wraps at any width without cutting defaults, and shows flags as flags.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _share_option(name: str, value: float | None) -> float | None:
    """A share from 0 to 1 (typer's own range check said NaN was "more than 1")."""
    if value is not None and not 0 <= value <= 1:
        raise typer.BadParameter(f"must be a number from 0 to 1, got {value:g}", param_hint=f"'{name}'")
    return value


def _print_version(asked: bool) -> None:
    if asked:
        from edgelalm import __version__

        _say(f"edgelalm {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    # Options before the command (--version); the app's help is Typer's `help=` above.
    return None


_EXTRA_BUFFERS_HELP = (
    "llama.cpp's extra weight buffers (CPU repack, AMX). auto: on, except where llama.cpp was built with AMX and "
    "the CPU has it or its flags cannot be read (its AMX path crashes decoding batches of more than one token, "
    "llama.cpp issue 20824); "
    "on: llama.cpp's stock setting; off: plain CPU buffers."
)
_THREADS_HELP = (
    "CPU threads for onnxruntime and llama.cpp, up to the machine's logical CPUs. "
    "Default: the cores this process may use."
)
_FORCE_HELP = "Replace --out if it is an earlier output or empty (never other files)."
_COMPRESSOR_HELP = "Compressor between the audio encoder and the projector: " + "; ".join(
    f"{name} = {text}" for name, text in COMPRESSOR_DESCRIPTIONS.items()
)
_PromptFormatOption = Annotated[
    PromptFormat | None,
    typer.Option(
        help="How the model is prompted: instruct (a chat template around the audio and the prompt; a checkpoint "
        "without one gets Qwen2-Audio-Instruct's) or base (Qwen2-Audio-7B: the audio, then a task text). Default: "
        "detected (base for a template-less folder named Qwen2-Audio-7B). finetune and export of one model must "
        "agree."
    ),
]
_FactorOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=MAX_FACTOR,
        help=f"Compression factor K for {' and '.join(FACTOR_COMPRESSORS)} (1 to {MAX_FACTOR}; default 2).",
    ),
]


@app.command()
def export(
    model: Annotated[
        Path | None,
        typer.Option(help="Qwen2-Audio checkpoint folder (config.json, *.safetensors, tokenizer, processor)."),
    ] = None,
    compressor: Annotated[
        str,
        typer.Option(
            help=_COMPRESSOR_HELP + ". A factor may be written in the name (avg3, sample2). A comma-separated list "
            "(none,avg2,avg3,unseg) writes one bundle offering each, the first the default: one decoder, each "
            "compressor's LoRA as a llama.cpp adapter applied at run time (edgelalm run --compressor)."
        ),
    ] = "avg",
    factor: _FactorOption = None,
    encoder_precision: Annotated[
        EncoderPrecisionChoice,
        typer.Option(
            help="Encoder weights: auto (default: fp16w when the checkpoint stores its audio tower in float16 "
            "or bfloat16, as the default model and Qwen2-Audio-7B do, fp32 otherwise); fp32; fp16w (MatMul "
            "weights stored in float16, float32 arithmetic, as llama.cpp's f16 mmproj: half the size, about "
            "150 MB less memory on a Whisper-small-sized encoder); fp16 (half-precision arithmetic too, "
            "GPU-friendly); int8 (dynamic quantization of MatMuls). The measured difference against fp32 is "
            "printed. A precision other than the checkpoint's own goes into the default bundle folder's name "
            "(-encoder-int8)."
        ),
    ] = "auto",
    quant: Annotated[
        QuantType,
        typer.Option(
            help="Decoder GGUF type: f32, f16, or llama.cpp's quantizations q8_0 (8-bit), q4_k_m (4-bit K-quant, "
            "mixed), q4_0 (4-bit). Norms and biases stay f32."
        ),
    ] = "q8_0",
    adapter: Annotated[
        str | None,
        typer.Option(
            help="peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors) on the language model, "
            "merged into the decoder before export (W' = W + alpha/r * B @ A; with --no-merge-adapter or several "
            "compressors, written as a llama.cpp adapter applied at run time). With several compressors: LABEL=DIR "
            "pairs, comma-separated (avg3=adapters/avg3,unseg=adapters/unseg). With the default model, the adapter "
            "realigned to each compressor is used unless --no-adapter."
        ),
    ] = None,
    merge_adapter: Annotated[
        bool | None,
        typer.Option(
            "--merge-adapter/--no-merge-adapter",
            help="Merge the adapter into the decoder (the default for one compressor), or write it as a llama.cpp "
            "LoRA adapter applied at run time (the only way for several compressors).",
        ),
    ] = None,
    no_adapter: Annotated[
        bool, typer.Option("--no-adapter", help="Export the decoder as it is, without any LoRA (to compare).")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Bundle folder to write. Default: export/<model>-<label>-<quant> (label: avg2, unseg), with "
            "-encoder-<precision> when the encoder is not the checkpoint's own width (auto)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
    share_from: Annotated[
        Path | None,
        typer.Option(
            help="An earlier bundle of the same checkpoint: its encoder (same --encoder-precision) and decoder (same "
            "--quant and adapter) are reused (encoder copied, decoder hard-linked) rather than exported again, as when "
            "exporting several compressors."
        ),
    ] = None,
    llama_extra_buffers: Annotated[
        ExtraBuffers, typer.Option(help="For the decode check after writing the decoder. " + _EXTRA_BUFFERS_HELP)
    ] = "auto",
    prompt_format: _PromptFormatOption = None,
    ctc_reads: Annotated[
        CtcReads,
        typer.Option(
            help="What the CTC head reads, for a checkpoint with one (joint decoding): frames, the encoder's frames at "
            "their full rate through the projector, one head for every compressor (the decoder still reads the "
            "compressed audio tokens); audio-tokens, the compressor's tokens, with the head its adapter realigned to "
            "it where it has one (less CTC work; more errors on the default model, see README: Run)."
        ),
    ] = DEFAULT_CTC_READS,
) -> None:
    """Export a Qwen2-Audio checkpoint (default: the small model shipped with edgelalm) as one bundle
    folder: the audio encoder and the compressor + projector as ONNX (onnxruntime), the decoder as GGUF
    (llama.cpp) with any LoRA merged into it or beside it as a llama.cpp adapter, and a manifest with
    every file's checksum."""
    _require_export_extra("export")
    from edgelalm.pretrained import default_model_dir

    specs = [CompressorSpec.from_label(label, factor) for label in compressor.split(",")]
    several = len(specs) > 1 or merge_adapter is False
    if merge_adapter and len(specs) > 1:
        raise EdgelalmError("--merge-adapter needs one compressor: one decoder cannot hold several merged adapters")
    if adapter is not None and no_adapter:
        raise EdgelalmError("--adapter and --no-adapter exclude each other")
    default_model = model is None
    model = model or default_model_dir()
    adapters = _adapter_folders(adapter, specs, several, default_model and not no_adapter)
    for spec, folder in zip(specs, adapters, strict=True):
        _warn_if_realigned_to_another(spec, folder)
    from edgelalm.export.bundle import ExportOptions, export_bundle
    from edgelalm.export.checkpoint import auto_encoder_precision, model_name

    label = "+".join(spec.label for spec in specs) + ("-runtime-lora" if several and len(specs) == 1 else "")
    own_precision = auto_encoder_precision(model)
    precision = own_precision if encoder_precision == "auto" else encoder_precision
    if out is None:
        out = DEFAULT_EXPORT_ROOT / f"{model_name(model)}-{bundle_name(label, quant, precision, own_precision)}"
    options = ExportOptions(
        model,
        out,
        specs[0],
        precision,
        quant,
        None if several else adapters[0],
        force,
        share_from,
        llama_extra_buffers,
        prompt_format,
        choices=tuple(zip(specs, adapters, strict=True)) if several else (),
        ctc_reads=ctc_reads,
    )
    written = export_bundle(options)
    _say(_shown_path(written))


def _adapter_folders(
    adapter: str | None, specs: list[CompressorSpec], several: bool, default_model: bool
) -> list[Path | None]:
    """Each compressor's adapter folder: --adapter (one DIR, or LABEL=DIR pairs), else the default
    model's adapter realigned to it (warning where none ships), else none."""
    from edgelalm.pretrained import default_adapter_dir, shipped_adapters

    labels = [spec.label for spec in specs]
    if adapter is not None:
        # A folder whose name holds "=" is a folder, not a LABEL=DIR pair.
        if "=" not in adapter or Path(adapter).is_dir():
            if several:
                raise EdgelalmError("with several compressors, --adapter takes LABEL=DIR pairs (avg3=DIR,unseg=DIR)")
            return [Path(adapter)]
        pairs: dict[str, str] = {}
        for item in filter(None, adapter.split(",")):
            label, equals, named = item.partition("=")
            if not equals:
                raise EdgelalmError(f"--adapter {item!r} is not a LABEL=DIR pair (avg3=DIR,unseg=DIR)")
            if label in pairs:  # the last would win, the first dropped without a word
                raise EdgelalmError(f"--adapter names {label} twice: give one folder each")
            pairs[label] = named
        unknown = sorted(set(pairs) - set(labels))
        if unknown:
            raise EdgelalmError(f"--adapter names {', '.join(unknown)}, not among the compressors {', '.join(labels)}")
        return [Path(pairs[label]) if label in pairs else None for label in labels]
    if not default_model:
        return [None] * len(specs)
    folders = []
    for spec in specs:
        folder = default_adapter_dir(spec) if spec.name != "none" else None
        if folder is None and spec.name != "none":
            _warn(
                f"the default model has no adapter realigned to {spec.label} (shipped: "
                f"{', '.join(shipped_adapters()) or 'none'}); "
                "exporting without one, so expect more errors (edgelalm finetune makes one)"
            )
        folders.append(folder)
    return folders


def _warn_if_realigned_to_another(spec: CompressorSpec, folder: Path | None) -> None:
    """An adapter `edgelalm finetune` realigned to another compressor than the one it is exported
    with (swapped LABEL=DIR pairs): it merges, and answers worse."""
    from edgelalm.training.finetune import adapter_realignment

    if folder is None:
        return
    with contextlib.suppress(EdgelalmError, OSError):  # a record or head that cannot be read says nothing either way
        said = adapter_realignment(folder)
        if said is not None and said[0] != spec.label:
            trained, source = said
            _warn(f"{folder} was realigned to {trained} ({source}); exporting it with {spec.label}")


class _PlainUsageCommand(typer.core.TyperCommand):
    """Usage lines name required arguments the POSIX way (`AUDIO`), not typer's `{AUDIO}`."""

    def collect_usage_pieces(self, ctx):
        return [re.sub(r"^\{(\w+)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


@app.command(cls=_PlainUsageCommand)
def run(
    audio: Annotated[
        list[str],
        typer.Argument(
            metavar="AUDIO",
            help="Audio files: wav, flac, ogg, mp3 (what libsndfile reads; any sample rate and channel count); - "
            "reads one from standard input. Several are answered one after another with the bundle loaded once, "
            "each answer on a line of its own after the file's name.",
        ),
    ],
    bundle: Annotated[
        Path | None,
        typer.Option(help="Bundle folder. Default: the most recently written bundle under ./export/."),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option(help="What to ask about the audio. Default: the bundle's transcription prompt.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (default); above 0 samples with llama.cpp.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold when --temperature > 0.")] = 1.0,
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            max=2**32 - 2,
            help="Sampling seed (with --temperature above 0; 4294967295 is llama.cpp's 'random', so not a seed).",
        ),
    ] = 0,
    threads: Annotated[int | None, typer.Option(min=1, help=_THREADS_HELP)] = None,
    device: Annotated[
        Device, typer.Option(help="cpu, or cuda (onnxruntime's CUDA provider and llama.cpp GPU offload).")
    ] = "cpu",
    llama_extra_buffers: Annotated[ExtraBuffers, typer.Option(help=_EXTRA_BUFFERS_HELP)] = "auto",
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON line per clip instead of the streamed answer (JSON Lines, nothing else on stdout): "
            "file, text, each window's answer with its times, token counts, timings, memory; a clip that failed, "
            "its error.",
        ),
    ] = False,
    subtitles: Annotated[
        SubtitleFormat | None,
        typer.Option(
            help="Print the transcript as subtitles (srt: SubRip, vtt: WebVTT) instead of the streamed text: one cue "
            "per window, timed from the clip's start and written once its window is answered; windows that heard "
            "nothing have none. Implies --windows each unless --windows is given (joined: one cue for the whole "
            "clip). One clip at a time on standard output; several with --out-dir.",
        ),
    ] = None,
    out_dir_given: Annotated[
        str | None,  # as typed: an empty one (an unset shell variable) is not the working folder
        typer.Option(
            "--out-dir",
            help="With --subtitles: write each clip's subtitles to a file of its own in this folder, named after "
            "the clip (talk.wav: talk.srt; -: standard-input.srt), and print its path; a file already there is "
            "not replaced. Each file appears whole once its clip is answered.",
        ),
    ] = None,
    prompt_special_tokens: Annotated[
        bool,
        typer.Option(
            "--prompt-special-tokens",
            help="Read <|im_end|> and the like in --prompt as control tokens. Default: as plain text, so a prompt "
            "cannot end the user's turn and write the assistant's.",
        ),
    ] = False,
    compressor: Annotated[
        str | None,
        typer.Option(
            help="Which of the bundle's compressors to use (a bundle exported with several: `edgelalm inspect` lists "
            "them), with its adapter; auto: the least compression whose audio tokens fit the context and "
            "--max-audio-tokens. Default: the bundle's first."
        ),
    ] = None,
    max_audio_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="A budget of audio tokens (fewer: a faster answer); with auto, it steers the choice."),
    ] = None,
    windows: Annotated[
        WindowMode | None,
        typer.Option(
            help="A clip longer than the encoder's window (30 s for Qwen2-Audio; `edgelalm inspect` shows it): "
            "joined = all its audio tokens in one prompt (a question about the whole recording; the context must "
            "hold them); each = cut at pauses into windows, "
            "each answered on its own and the answers joined (transcripts of any length; --max-tokens and "
            "--max-audio-tokens then count per window). Default: what the bundle advises (`edgelalm inspect`: "
            "the default model answers 8 s windows best), else joined."
        ),
    ] = None,
    window_seconds: Annotated[
        float | None,
        typer.Option(
            help="With --windows each: shorter windows than the encoder's (each cut at a pause in its second "
            "half), for a model that answers short clips better than full windows (the default model: "
            "recipes/default_model/README.md, long clips). Default: the bundle's advice with each, else the "
            "encoder's window."
        ),
    ] = None,
    beam_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_BEAM_SIZE,
            help="Keep this many hypotheses in a beam search (1 = greedy). The answer then comes whole when the "
            "search ends, not token by token. Default: the bundle's advice (`edgelalm inspect`), else 1.",
        ),
    ] = None,
    ctc_weight: Annotated[
        float | None,
        typer.Option(
            callback=lambda value: _share_option("--ctc-weight", value),
            help="Joint CTC/attention decoding: the share of the bundle's CTC head in each hypothesis's score, "
            "from 0 to 1, so that answers must account for all of the audio (0 = the decoder alone). Only for a "
            "bundle with a CTC head (the default model has one). Default: the bundle's advice, else 0.",
        ),
    ] = None,
) -> None:
    """Answer a prompt about an audio clip (default: transcribe it) with a bundle, streaming the answer."""
    from edgelalm.runtime.pipeline import Runtime, check_run_options, latest_bundle

    _warn_if_extra_buffers_crash(llama_extra_buffers)
    if prompt is not None and not prompt.strip():  # an unset shell variable, likely
        raise EdgelalmError("--prompt is empty; leave it out for the bundle's transcription prompt")
    # The decoders' own stderr lines (libmpg123's notes on a damaged MP3) beside edgelalm's one-line warnings.
    from edgelalm.runtime.audio import mute_decoder_messages

    mute_decoder_messages()
    # `-` is standard input as typed (a file named - is ./-): checked now, read once the bundle loads.
    standard_input = _StandardInput(audio)
    for index, clip in enumerate(map(Path, audio)):
        if not standard_input.reads(index) and _holds_manifest(clip):
            raise EdgelalmError(f"{clip} is a bundle folder, not audio: pass it as --bundle")
    if sys.stdout is None:  # started with it closed (`>&-`): refused before any clip is answered
        raise EdgelalmError("standard output is closed: there is nowhere to write the result")
    output = _RunOutput.chosen(audio, json_output, subtitles, out_dir_given)
    if subtitles is not None:
        windows = windows or "each"  # a cue per window: one for a whole long recording says little
    check_run_options(prompt, max_tokens, temperature, top_p, seed)  # once, not per file
    if bundle is None:
        bundle = latest_bundle(DEFAULT_EXPORT_ROOT)
        _note(f"bundle {bundle} (the newest under {DEFAULT_EXPORT_ROOT}/; --bundle picks another)")
    with (
        Runtime(bundle, threads=threads, device=device, llama_extra_buffers=llama_extra_buffers) as runtime,
        standard_input.saved(),
        contextlib.ExitStack() as outputs,
    ):
        if output.out_dir is not None:
            from edgelalm.files import output_folder

            outputs.enter_context(output_folder(output.out_dir))
        # Worded for the command line: the mode given, else the bundle's advice.
        if window_seconds is not None and runtime.windows_for(windows, None)[0] == "joined":
            raise EdgelalmError("--window-seconds applies to --windows each (windows answered each on its own)")
        # Refused once, not per file.
        runtime.decoding_for(temperature, top_p, seed, beam_size, ctc_weight, compressor)
        runtime.prompt_fitting(prompt, max_tokens, prompt_special_tokens)
        answer = functools.partial(
            runtime.run,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            prompt_special_tokens=prompt_special_tokens,
            compressor=compressor,
            max_audio_tokens=max_audio_tokens,
            windows=windows,
            window_seconds=window_seconds,
            beam_size=beam_size,
            ctc_weight=ctc_weight,
        )
        failed = sum(not _answer_clip(answer, audio, index, standard_input, output) for index in range(len(audio)))
    if failed:
        raise typer.Exit(1)


@dataclasses.dataclass(frozen=True)
class _RunOutput:
    """Where run's answers go: streamed text, JSON lines, or subtitles (on standard output, or a
    file per clip in `out_dir`)."""

    json_lines: bool
    subtitles: SubtitleFormat | None
    out_dir: Path | None
    subtitle_files: list[Path] | None  # with out_dir: each clip's, checked before the bundle loads

    @classmethod
    def chosen(
        cls, audio: list[str], json_lines: bool, subtitles: SubtitleFormat | None, out_dir_given: str | None
    ) -> _RunOutput:
        """The choice of run's options, refused in one line where they contradict each other."""
        if out_dir_given is not None and not out_dir_given.strip():  # an unset shell variable, likely
            raise EdgelalmError("--out-dir is empty; give the folder for the subtitle files")
        out_dir = Path(out_dir_given) if out_dir_given is not None else None
        subtitle_files = _subtitle_files(audio, subtitles, out_dir) if out_dir is not None else None
        if subtitles is not None:
            if len(audio) > 1 and subtitle_files is None:
                raise EdgelalmError(
                    f"--subtitles writes one clip's subtitles to standard output; got {len(audio)} files: give one, "
                    "or --out-dir for a file each"
                )
            if json_lines:
                raise EdgelalmError(
                    "--subtitles and --json: choose one (--json's timed_text holds the same times and answers)"
                )
        return cls(json_lines, subtitles, out_dir, subtitle_files)


def _answer_clip(
    answer: Callable[..., RunResult], audio: list[str], index: int, standard_input: _StandardInput, output: _RunOutput
) -> bool:
    """Clip `index` of run's `audio` answered into `output`; False where it failed among several
    (its line said, the others still answered). Fails the command where it is the only clip, or
    where its subtitle file cannot be written (every later clip would meet the same folder)."""
    from edgelalm.runtime.subtitles import SubtitleWriter

    clip, shown = Path(audio[index]), _shown_path(audio[index])  # shown as typed: ./- is not standard input
    several = len(audio) > 1
    name = _NameBeforeAnswer(f"{shown}: " if several else None)
    files = output.subtitle_files
    # Cue by cue as each window is answered: a long recording's subtitles grow as it is read.
    cues_out = contextlib.nullcontext(None) if files is None else _written_whole(files[index])
    try:
        with cues_out as write_to_file:
            write = functools.partial(_say, end="") if write_to_file is None else write_to_file
            subtitle_writer = SubtitleWriter(output.subtitles, write) if output.subtitles else None
            result = answer(
                standard_input.source(index, clip),
                # --json's stdout is its lines alone (JSON Lines): the answer is in them
                on_text=None if subtitle_writer or output.json_lines else name.before_piece,
                on_timed_text=subtitle_writer.add if subtitle_writer else None,
            )
            if subtitle_writer:
                subtitle_writer.finish()
    except EdgelalmError as error:
        message = standard_input.worded(str(error))
        if not several or isinstance(error, _SubtitleFileFailed):
            if output.json_lines:
                _say(_json_line({"file": audio[index], "error": message}))
            if message != str(error):  # about the saved copy of standard input
                raise EdgelalmError(message) from None
            raise
        if name.said:  # it failed after part of its answer was printed
            _say()
        # Named once: standard input as such, a file as the runtime's messages name it, else as typed.
        reads_standard_input = standard_input.reads(index)
        if (standard_input.NAME if reads_standard_input else str(clip)) not in message:
            message = f"{standard_input.NAME if reads_standard_input else shown}: {message}"
        _error_line(message)
        if output.json_lines:
            _say(_json_line({"file": audio[index], "error": message}))
        return False
    if files is not None:
        _say(_shown_path(files[index]))
    elif not subtitle_writer and not output.json_lines:
        name.say()
        _say()
    if result.compressor_choice:
        _note(result.compressor_choice)
    warnings = [standard_input.worded(warning) for warning in result.warnings]
    for warning in warnings:
        _warn(warning)
    if output.json_lines:
        _say(_json_line({"file": audio[index], **result.to_json(), "warnings": warnings}))
    return True


class _StandardInput:
    """`-` among run's clips: standard input, saved whole to a private temporary file once the
    bundle has loaded (libsndfile reads a header, then seeks, which a pipe cannot), and named
    "standard input" in what is said about it. What can be refused without reading it is refused
    at once, before the bundle loads."""

    DASH = "-"
    NAME = "standard input"

    def __init__(self, arguments: list[str]) -> None:
        self.positions = [index for index, argument in enumerate(arguments) if argument == self.DASH]
        self.copy: Path | None = None
        if len(self.positions) > 1:
            raise EdgelalmError(f"- ({self.NAME}) is named more than once; it can be read once")
        if self.positions and sys.stdin is None:
            raise EdgelalmError(f"- reads audio from {self.NAME}, which is closed")
        if self.positions and sys.stdin.isatty():
            raise EdgelalmError(
                f"- reads audio from {self.NAME}, which is a terminal: pipe audio in "
                "(sox clip.mp3 -t wav - | edgelalm run -)"
            )

    def reads(self, index: int) -> bool:
        return index in self.positions

    @contextlib.contextmanager
    def saved(self) -> Iterator[None]:
        """Standard input in a temporary folder (TMPDIR's) while the block runs, if `-` was named."""
        if not self.positions:
            yield
            return

        from edgelalm.files import free_space_note, private_scratch_folder
        from edgelalm.runtime import audio

        with private_scratch_folder("stdin") as folder:
            copy = folder / "audio"
            try:
                with copy.open("wb") as file:
                    first_bytes, size, judged = b"", 0, False
                    while block := _read_standard_input():
                        file.write(block)
                        first_bytes, size = (first_bytes + block)[:10], size + len(block)
                        # Before it fills $TMPDIR: a WAV past what its header can count, and bytes
                        # of no format libsndfile reads (`run - < /dev/zero`).
                        audio.check_wav_stream_size(first_bytes, size, self.NAME)
                        if not judged and size >= audio.recognition_point(first_bytes):
                            file.flush()
                            audio.refuse_unrecognised(copy, self.NAME)
                            judged = True
            except OSError as error:  # the write's (a full disk); the read's are worded apart
                raise EdgelalmError(
                    f"cannot save {self.NAME} in {Path(folder).parent}: {error.strerror or error}"
                    f"{free_space_note(Path(folder))}"
                ) from None
            audio.finish_streamed_wav_header(copy, self.NAME)
            self.copy = copy
            try:
                yield
            finally:
                self.copy = None

    def source(self, index: int, clip: Path) -> Path:
        """Where a clip is read from."""
        return self.copy if self.copy is not None and self.reads(index) else clip

    def worded(self, message: str) -> str:
        """A message about the saved copy, about standard input instead."""
        return message if self.copy is None else message.replace(str(self.copy), self.NAME)


def _subtitle_files(audio: list[str], subtitles: SubtitleFormat | None, out_dir: Path) -> list[Path]:
    """Where `--out-dir` writes each clip's subtitles, checked before the bundle loads: named after
    the clip, none already there (a user's edited file is not replaced), no two clips to one name
    (compared as a case-insensitive file system would), a folder that can be made."""
    import unicodedata

    from edgelalm.files import existing_on_the_way
    from edgelalm.manifest import enclosing_bundle

    if subtitles is None:
        raise EdgelalmError("--out-dir writes subtitle files: give --subtitles srt or vtt")
    if (bundle := enclosing_bundle(out_dir, itself=True)) is not None:
        raise EdgelalmError(
            f"--out-dir {_shown_path(out_dir)} is in the bundle {_shown_path(bundle)}, which files it does not "
            "list would break: name a folder outside it"
        )
    on_the_way = existing_on_the_way(out_dir) if not out_dir.is_symlink() else out_dir
    if not on_the_way.is_dir():
        what = "a link to nothing" if not on_the_way.exists() else "a file, not a folder"
        raise EdgelalmError(f"--out-dir {out_dir}: {on_the_way} is {what}")
    name_max = os.pathconf(on_the_way, "PC_NAME_MAX")
    files: list[Path] = []
    first_by_name: dict[str, int] = {}
    for index, argument in enumerate(audio):
        stem = "standard-input" if argument == _StandardInput.DASH else Path(argument).stem
        name = Path(argument).name
        if not stem.strip(".").strip() or (name.startswith(".") and "." not in name[1:]):  # `.wav`: an extension
            raise EdgelalmError(f"{_shown_path(argument)} has no name to call its subtitle file by")
        if stem.startswith("."):  # its subtitle file would be hidden, and take a scratch file's form
            raise EdgelalmError(f"{_shown_path(argument)}: its subtitle file would be a hidden file; rename the clip")
        file = out_dir / f"{stem}.{subtitles}"
        key = unicodedata.normalize("NFC", os.fsdecode(file.name)).casefold()
        if key in first_by_name:
            raise EdgelalmError(
                f"{_shown_path(audio[first_by_name[key]])} and {_shown_path(argument)} would both be written to "
                f"{_shown_path(file)}: give them apart"
            )
        first_by_name[key] = index
        if len(os.fsencode(file.name)) > name_max:  # its hidden scratch name is shorter (files.new_file)
            raise EdgelalmError(f"{_shown_path(argument)}: its subtitle file's name is too long for {out_dir}")
        if file.exists() or file.is_symlink():
            raise EdgelalmError(f"{_shown_path(file)} exists already; remove it, or give another --out-dir")
        files.append(file)
    return files


class _SubtitleFileFailed(EdgelalmError):
    """A subtitle file that could not be written: the folder's problem, so every later clip would
    meet it too; the run stops."""


@contextlib.contextmanager
def _written_whole(path: Path) -> Iterator[Callable[[str], object]]:
    """Yield a writer into a hidden file beside `path`, which becomes `path` when the block ends
    (never replacing a file that appeared meanwhile); removed if the clip fails part-way."""
    from edgelalm.files import new_file, write_failed

    def failed(error: OSError) -> EdgelalmError:
        if isinstance(error, FileExistsError):  # this clip's alone
            return EdgelalmError(f"{_shown_path(path)} appeared while its clip was answered; it is left as it is")
        return _SubtitleFileFailed(str(write_failed("subtitles", path, error)))

    with contextlib.ExitStack() as stack:
        try:
            scratch = stack.enter_context(new_file(path))
            file = stack.enter_context(scratch.open("w", encoding="utf-8"))
        except OSError as error:
            raise failed(error) from None

        def write(text: str) -> None:
            try:
                file.write(text)
            except OSError as error:
                raise failed(error) from None

        yield write
        try:
            stack.close()  # closes the file, then publishes it
        except OSError as error:
            raise failed(error) from None


def _read_standard_input() -> bytes:
    try:
        return sys.stdin.buffer.read(1 << 20)
    except OSError as error:  # a descriptor opened for writing only, an I/O error
        raise EdgelalmError(f"cannot read {_StandardInput.NAME}: {error.strerror or error}") from None


class _NameBeforeAnswer:
    """A file's name among several, printed before its answer's first piece (or its empty answer):
    a file that fails before answering leaves no "name: " on stdout, which reads as silence."""

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix
        self.said = False

    def say(self) -> None:
        if self.prefix is not None and not self.said:
            _say(self.prefix, end="")
            self.said = True

    def before_piece(self, piece: str) -> None:
        self.say()
        _say(piece, end="")


@app.command(cls=_PlainUsageCommand)
def inspect(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle folder written by edgelalm export.")],
) -> None:
    """Print a bundle's manifest readably and verify every file's checksum."""
    from edgelalm.manifest import read_manifest
    from edgelalm.prompt import TEMPLATE_SOURCE_DESCRIPTIONS

    manifest = read_manifest(bundle)
    model, features, encoder, compressor = manifest.model, manifest.features, manifest.encoder, manifest.compressor
    spec = compressor.spec
    rate = compressor.audio_tokens_per_second
    lines = [
        f"bundle        {bundle}  (format {manifest.format_version}, written {manifest.created_utc})",
        f"model         {model.name}  audio width {model.audio_width}, LLM hidden {model.hidden_size}, vocab "
        f"{model.vocab_size}",
        f"features      {features.num_mel_bins} mel bins at {features.sampling_rate} Hz, window "
        f"{features.window_seconds:g} s",
        f"encoder       {encoder.file}  {encoder.precision}, probe max |diff| vs fp32 "
        f"{encoder.probe.max_abs_diff_vs_pytorch_fp32:.2e}",
        f"compressor    {compressor.file}  {spec.label}: "
        + (f"{rate:.2f} audio tokens/s" if rate else "rate depends on the audio"),
        *_describe_choices(manifest),
        f"decoder       {describe_decoder(manifest.decoder)}",
        f"prompt        {manifest.prompt.format} ({TEMPLATE_SOURCE_DESCRIPTIONS[manifest.prompt.template_source]}), "
        f"default {manifest.prompt.default_prompt!r}",
        f"windows       {describe_windows(manifest)}",
        f"decoding      {describe_decoding(manifest)}",
        "files (checksums verified):",
        *(f"  {name:28s} {record.bytes / 1e6:10.2f} MB" for name, record in manifest.files.items()),
    ]
    # A manifest's strings are the bundle author's: escape control characters (a terminal title, a
    # cleared screen, a forged line).
    _say("\n".join(printable(line) for line in lines))


@app.command()
def bench(
    context: typer.Context,
    model: Annotated[
        str,
        typer.Option(
            help="Checkpoint folder, or a random-weights preset with realistic shapes: tiny, small, qwen2-audio-7b."
        ),
    ] = "small",
    compressors: Annotated[
        str, typer.Option(help="Comma-separated compressors: none, avgK, sampleK, unseg, mean, max.")
    ] = ",".join(BENCH_COMPRESSORS),
    seconds: Annotated[str, typer.Option(help="Comma-separated clip lengths in seconds.")] = ",".join(
        f"{seconds:g}" for seconds in BENCH_SECONDS
    ),
    repeats: Annotated[int, typer.Option(min=1, help="Measured runs per point, after one warm-up run.")] = 3,
    max_tokens: Annotated[
        int,
        typer.Option(
            min=2,
            max=MAX_BENCH_TOKENS,
            help="Tokens generated per run (decode speed: the tokens after the first, so at least 2).",
        ),
    ] = 32,
    quant: Annotated[QuantType, typer.Option(help="Decoder GGUF type.")] = "q8_0",
    encoder_precision: Annotated[
        EncoderPrecision,
        typer.Option(
            help="Encoder weights in edgelalm's bundles: fp32, fp16w, fp16, int8 (as export's --encoder-precision)."
        ),
    ] = "fp32",
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="CPU threads for both edgelalm and PyTorch. Default: the cores this process may use."),
    ] = None,
    llama_extra_buffers: Annotated[ExtraBuffers, typer.Option(help=_EXTRA_BUFFERS_HELP)] = "auto",
    reference: Annotated[bool, typer.Option(help="Also measure transformers' PyTorch fp32 model side by side.")] = True,
    mtmd: Annotated[
        bool,
        typer.Option(
            help="Also measure llama.cpp's own audio path (mtmd, with its converter's mmproj) on the same decoder."
        ),
    ] = True,
    target: Annotated[
        str,
        typer.Option(
            help="A folder under ./runtimes/ (the repository's, from its root) whose settings.json applies "
            "(threads, device; with cuda the "
            "reference runs on the GPU too)."
        ),
    ] = "",
    out: Annotated[Path, typer.Option(help="Folder for models, bundles and results.")] = Path(
        "benchmarks/results/latest"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="A minute-long smoke run: tiny preset, none and avg3, 3 s and 12 s.")
    ] = False,
) -> None:
    """Measure latency and memory per compressor and clip length, with PyTorch and llama.cpp's mtmd beside it."""
    _require_export_extra("bench")
    _warn_if_extra_buffers_crash(llama_extra_buffers)
    from edgelalm.bench import QUICK, BenchPlan, parse_compressor, run_bench, target_settings
    from edgelalm.bench.report import summary_markdown

    # Refuse unknown names before any work; each compressor and length once, in its own spelling
    # (avg03 is avg3: measured twice, the ratios read the last).
    labels = tuple(
        dict.fromkeys(parse_compressor(label.strip()).label for label in compressors.split(",") if label.strip())
    )
    if not labels:
        raise EdgelalmError(f"--compressors names no compressor, got {compressors!r}")
    try:
        lengths = tuple(dict.fromkeys(float(value) for value in seconds.split(",")))
    except ValueError:
        raise EdgelalmError(f"--seconds takes comma-separated numbers, got {seconds!r}") from None
    # Checked before the exports: NaN or 10^9 s failed only after them, in numpy's words.
    if not all(MIN_BENCH_SECONDS <= length <= MAX_BENCH_SECONDS for length in lengths):
        raise EdgelalmError(
            f"--seconds takes clip lengths from {MIN_BENCH_SECONDS} s (the encoder needs 30 ms) up to "
            f"{MAX_BENCH_SECONDS} s, got {seconds!r}"
        )
    settings = target_settings(target) if target else {}
    if threads is not None:
        threads = _checked_threads(threads)
    elif settings.get("threads") is not None:
        try:
            threads = _checked_threads(settings["threads"])
        except EdgelalmError as error:  # the target's file asked for it, not the command line
            raise EdgelalmError(f"runtimes/{target}/settings.json: {error} (--threads overrides it)") from None
    plan = BenchPlan(
        model=model,
        out_dir=out,
        compressors=labels,
        seconds=lengths,
        repeats=repeats,
        max_tokens=max_tokens,
        quant=quant,
        encoder_precision=encoder_precision,
        threads=threads,
        reference=reference,
        mtmd=mtmd,
        target=target or "cpu (default settings)",
        settings=settings,
        llama_extra_buffers=llama_extra_buffers,
    )
    if quick:
        # --quick sets these; one also given on the command line, as something else, was dropped
        # without a word.
        given = [
            name
            for name in QUICK
            if getattr(context.get_parameter_source(name), "name", None) == "COMMANDLINE"
            and getattr(plan, name) != QUICK[name]
        ]
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            pronoun = "it" if len(given) == 1 else "them"
            raise EdgelalmError(f"--quick chooses {options} itself: drop {pronoun}, or drop --quick")
        plan = dataclasses.replace(plan, **QUICK)
    results = run_bench(plan)
    _say(summary_markdown(results))
    _say(json.dumps(results["ratios"], indent=2))


@app.command()
def finetune(
    data: Annotated[
        Path,
        typer.Option(
            help="Paired audio and text: a dataset folder (recipes/default_model/make_data.py), a folder of "
            "the frozen audio tower's output (make_encoded_data.py; the same tower as the model's) or a TSV "
            "file with 'file' and 'transcript' columns (audio paths relative to it)."
        ),
    ],
    more_data: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="<path>",
            help="Another folder of the frozen audio tower's output to train on beside --data, as one set (e.g. "
            "recorded voices beside synthetic clips); --data must then be such a folder too. Repeatable.",
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Qwen2-Audio checkpoint folder. Default: the model shipped with edgelalm.")
    ] = None,
    compressor: Annotated[
        str,
        typer.Option(help=_COMPRESSOR_HELP + ". A factor may be written in the name (avg3, sample2); one compressor."),
    ] = "avg",
    factor: _FactorOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Adapter folder to write. Default: adapters/<model>-<label> (avg2, unseg).")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 600,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per step.")] = 16,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay).")] = 1e-3,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank (the paper: 16).")] = 16,
    alpha: Annotated[float, typer.Option(min=0.001, help="LoRA alpha (the paper: 32).")] = 32.0,
    lora_modules: Annotated[
        str,
        typer.Option(
            help="Comma-separated projections of each decoder layer to adapt: q_proj, k_proj, v_proj, o_proj, "
            "gate_proj, up_proj, down_proj (the paper: q_proj,k_proj). The audio tower and projector are never "
            "adapted."
        ),
    ] = "q_proj,k_proj",
    device: Annotated[Device, typer.Option(help="cpu or cuda (PyTorch).")] = "cpu",
    seed: Annotated[
        int, typer.Option(min=0, max=2**32 - 1, help="Seed for the LoRA init, batches and augmentation.")
    ] = 0,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="PyTorch CPU threads, at most this machine's CPUs. Default: PyTorch's own."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
    ctc_head: Annotated[
        bool | None,
        typer.Option(
            "--ctc-head/--no-ctc-head",
            help="Realign the checkpoint's CTC head (joint decoding; the default model has one) to the "
            "compressor too, after the LoRA, on the same data and steps: saved in the adapter folder, where "
            "export --ctc-reads audio-tokens takes it. Default: no (a bundle's head reads the encoder's frames "
            "by default, and needs none).",
            show_default=False,
        ),
    ] = None,
    ctc_head_only: Annotated[
        bool,
        typer.Option(
            "--ctc-head-only",
            help="Realign only the CTC head, into the existing adapter folder --out (made by finetune for "
            "this compressor); its LoRA is untouched.",
        ),
    ] = False,
    prompt_format: _PromptFormatOption = None,
) -> None:
    """Realign a checkpoint to a compressor (the paper's method): LoRA on the language model's q_proj and
    k_proj (or the projections --lora-modules names), trained on paired audio/text with the compressor
    between the frozen encoder and projector (and, with --ctc-head, the checkpoint's CTC head). Writes a
    peft adapter folder that `edgelalm export --adapter` merges (or applies at run time)."""
    _require_export_extra("finetune")
    from edgelalm.pretrained import default_model_dir
    from edgelalm.training.finetune import FinetuneOptions
    from edgelalm.training.finetune import finetune as run_finetune

    if "," in compressor:
        raise EdgelalmError("finetune realigns to one compressor at a time; export takes a list")
    spec = CompressorSpec.from_label(compressor, factor)
    model = model or default_model_dir()
    out = out or Path("adapters") / f"{model.resolve().name}-{spec.label}"
    options = FinetuneOptions(
        model,
        data,
        out,
        spec,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        rank=rank,
        alpha=alpha,
        lora_modules=tuple(name.strip() for name in lora_modules.split(",") if name.strip()),
        device=device,
        seed=seed,
        threads=_checked_threads(threads),
        force=force,
        ctc_head=ctc_head,
        ctc_head_only=ctc_head_only,
        more_data=tuple(more_data or ()),
        prompt_format=prompt_format,
    )
    _say(_shown_path(run_finetune(options)))


def _describe_choices(manifest: Manifest) -> list[str]:
    """A bundle of several compressors: one line each (run --compressor LABEL picks one)."""
    lines = []
    for label, choice in manifest.compressors.items():
        rate = choice.compressor.audio_tokens_per_second
        adapter = choice.adapter
        lines.append(
            f"  {label:10s} {choice.compressor.file}  "
            + (f"{rate:.2f} tokens/s" if rate else "variable rate")
            + (
                f", adapter {adapter.file} (rank {adapter.description.get('rank')}, applied at run time)"
                if adapter
                else ", no adapter"
            )
            + ("  (default)" if label == next(iter(manifest.compressors)) else "")
        )
    return lines


def describe_decoder(decoder: DecoderInfo | None) -> str:
    if decoder is None:
        return "none"
    adapter = decoder.adapter
    alpha = adapter.get("alpha") if adapter else None
    alpha_text = f"{alpha:g}" if is_finite_number(alpha) else short_repr(alpha)  # read unchecked: any JSON
    merged = f", LoRA merged (rank {adapter.get('rank')}, alpha {alpha_text})" if adapter else ", no LoRA"
    return (
        f"{decoder.file}  {decoder.architecture} {decoder.quant}, {decoder.layers} layers, "
        f"hidden {decoder.hidden_size}, context {decoder.context_length}{merged}"
    )


def describe_decoding(manifest: Manifest) -> str:
    """How `run` decodes when not told (`Runtime.decoding_for`), and the CTC head if there is one."""
    advice = manifest.decoding
    heads = [info for _, info in manifest.ctc_heads()]

    def reading(info: CtcInfo) -> str:
        if info.reads_frames:
            return " (over the encoder's frames, for every compressor)"
        return f" (realigned to {info.realigned_to})" if info.realigned_to else ""

    head = "".join(f"; CTC head {info.file}{reading(info)}" for info in heads)
    if advice is None or (advice.beam_size == 1 and advice.ctc_weight == 0):
        return f"greedy (the default; run --beam-size, --ctc-weight override){head}"
    joint = f", CTC weight {advice.ctc_weight:g}" if advice.ctc_weight > 0 else ""
    overrides = "run --beam-size, --ctc-weight override"
    return f"beam search of {advice.beam_size}{joint} (the checkpoint's advice; {overrides}){head}"


def describe_windows(manifest: Manifest) -> str:
    """How `run` cuts long clips when not told (`Runtime.windows_for`)."""
    advice = manifest.windows
    if advice is None:
        return "joined (the default; run --windows overrides)"
    length = f", {advice.seconds:g} s windows" if advice.seconds is not None else ""
    return f"{advice.mode}{length} (the checkpoint's advice; run --windows overrides)"


@app.command()
def scaffold(
    out: Annotated[Path, typer.Option(help="Checkpoint folder to create.")],
    preset: Annotated[
        ScaffoldPreset,
        typer.Option(
            help="Shapes: tiny = 2+2 layers of width 64, 10 s window (float32); small = Whisper-small-shaped "
            "encoder + Qwen2-0.5B-shaped decoder; qwen2-audio-7b = Qwen2-Audio-7B's shapes (about 17 GB). "
            "small is written layer by layer in float16; qwen2-audio-7b as the hub publishes it (bf16, 5 shards, "
            "no template)."
        ),
    ] = "tiny",
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed for the random weights.")] = 0,
) -> None:
    """Write a Qwen2-Audio checkpoint with random weights (for trying the pipeline, tests, benchmarks)."""
    _require_export_extra("scaffold")
    if out.exists():
        raise EdgelalmError(f"{out} already exists")
    from edgelalm.scaffold import write_preset_checkpoint

    write_preset_checkpoint(out, preset, seed=seed)
    _say(_shown_path(out))


@app.command()
def doctor(
    bundle: Annotated[
        Path | None,
        typer.Option(
            help="Also verify this bundle's files and run it once, in a child process, on a 3 s synthetic clip."
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help=_THREADS_HELP)] = None,
    device: Annotated[Device, typer.Option(help="cpu or cuda, for the bundle's run.")] = "cpu",
    llama_extra_buffers: Annotated[ExtraBuffers, typer.Option(help=_EXTRA_BUFFERS_HELP)] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of lines.")] = False,
) -> None:
    """What this machine is and whether edgelalm runs on it (paste it into bug reports): versions,
    CPU features, onnxruntime providers, llama.cpp's build and buffer setting, and with --bundle a
    verified load and a short run of that bundle."""
    from edgelalm.doctor import bundle_report, format_bundle, format_machine, machine_report

    machine = machine_report(threads, llama_extra_buffers)
    if not json_output:
        _say(format_machine(machine))
    # What the machine lacks (llama.cpp that does not load, threads it does not have) is reported
    # whole first, then fails the command; a bundle is run only on a machine that can run it.
    failure = EdgelalmError(machine["errors"][0]) if machine["errors"] else None
    report = None
    if bundle and failure is None:
        try:
            report = bundle_report(bundle, threads, llama_extra_buffers, device)
        except EdgelalmError as error:
            failure = error
    if json_output:
        # The machine's report is what a bug report needs: the JSON keeps it, with the bundle's error.
        bundle_part = report and {"ok": True, **report}
        if bundle and report is None:  # not run where the machine lacks what runs it
            bundle_part = {"ok": False, "run": not machine["errors"], "error": str(failure)}
        _say(json.dumps({"machine": machine, "bundle": bundle_part}, indent=2))
    elif report:
        _say(format_bundle(report))
    if failure is not None:
        raise failure


def main() -> None:
    """Console entry point: every failure the user can act on is one line on stderr."""
    # Where llama.cpp aborts in this process, its assertion line is enough: no debugger's backtrace.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    # onnxruntime writes a telemetry device id under ~/.cache on every session and warns in colour
    # where it cannot (a read-only root on a device): a command line tool has no use for it.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    # A stdout whose encoding cannot hold a name or an answer (Windows' cp1252 when redirected,
    # PYTHONIOENCODING=latin-1) writes \u escapes instead of failing part-way through a batch.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    if sys.stdout is None:  # `>&-`: every command's result (help too) would vanish after its work, exit 0
        _fail("standard output is closed: there is nowhere to write the result", 1)
    if (empty := _empty_argument(sys.argv[1:])) is not None:
        _fail(empty, 2)
    try:
        # SIGTERM unwinds like Ctrl-C, so an interrupted export removes its staging folder. Inside the
        # try: a signal while the watcher thread starts raised from install() itself, a traceback.
        interrupts.install()
        # Non-standalone, typer returns an exit code: 130 where it caught a KeyboardInterrupt.
        exit_code = app(standalone_mode=False, prog_name="edgelalm")
        if exit_code == 130:
            _fail_interrupted()
        if isinstance(exit_code, int) and exit_code:
            sys.exit(exit_code)
    except SystemExit:
        raise
    except BaseException as error:
        # Once signalled, whatever the unwinding raised says "interrupted": torch's exporter can
        # rewrap the KeyboardInterrupt as an error of its own.
        if interrupts.interrupted() or isinstance(error, KeyboardInterrupt | typer.Abort):
            if isinstance(error.__cause__, EOFError) and not interrupts.interrupted():
                # click turns an EOFError into Abort, as if Ctrl-D had answered a prompt; here
                # no prompt asks anything, so it is a file that ended early: not an interrupt.
                raise error.__cause__ from None
            _fail_interrupted()
        if isinstance(error, EdgelalmError):
            _fail(str(error), 1)
        if isinstance(error, OSError) and isinstance(error.filename, str):
            # A path the system refuses where no stage expected it (a name longer than the file
            # system's 255 bytes fails even Path.exists): one line naming it.
            _fail(f"{_shown_path(Path(error.filename))}: {error.strerror or error}", 1)
        if isinstance(error, OSError) and _raised_by_click_echo(error):
            error = _StdoutFailed(error)  # click's own writes (--help into /dev/full)
        if isinstance(error, _StdoutFailed):
            _stdout_failed(error.error)
        if (limit := _limit_reached(error)) is not None:
            _fail(limit, 1)
        if not isinstance(error, TyperException):
            raise
        # Usage errors: unknown option, bad value. Plain `edgelalm`: the help, not an error (typer's
        # vendored click class, matched by name as typer does).
        if type(error).__name__ == "NoArgsIsHelpError":
            try:
                typer.echo(error.format_message())
            except OSError as failed:
                _stdout_failed(failed)
            return
        # Typer validates choices through pydantic, whose wording leaks in.
        _fail(getattr(error, "format_message", error.__str__)().replace("Value error, ", ""), 2)


def _limit_reached(error: BaseException) -> str | None:
    """One line for what a machine's limits raise in Python (an address-space limit, a container's
    memory or pids limit: `ulimit -v`, `docker --pids-limit`), where they are not the user's input:
    tracebacks before."""
    if isinstance(error, MemoryError):
        return "out of memory (a memory or address-space limit? ulimit -v, a container's): free some or lift it"
    if isinstance(error, RuntimeError) and "can't start new thread" in str(error):
        return "cannot start a thread (a limit on processes or threads? ulimit -u, a container's pids limit)"
    if (
        isinstance(error, ImportError)
        and not isinstance(error, ModuleNotFoundError)  # a package missing, or a bug: the traceback says which
        and not (error.name or "").startswith("edgelalm")
    ):  # a library's shared object that cannot be mapped under a limit, or is broken
        return f"cannot load {error.name or 'a library'}: {error_gist(error)}"
    return None


def _stdout_failed(error: OSError) -> None:
    """The answer's reader is gone (`| head`: quietly, as Python's docs advise) or its disk is full
    (/dev/full): one line, not a traceback. What is still buffered goes to /dev/null, so that
    Python's own flush at exit does not fail a second time."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
    if isinstance(error, BrokenPipeError):
        sys.exit(1)
    _fail(f"cannot write to standard output: {error.strerror or error}", 1)


# What to do about an option given empty, where there is more to say than to give it a value.
_EMPTY_OPTION_ADVICE = {
    "--prompt": "leave it out for the bundle's transcription prompt",
    "--out-dir": "give the folder for the subtitle files",
}


def _empty_argument(arguments: list[str]) -> str | None:
    """The line for an empty argument, an unset shell variable most likely: a path given empty is
    the working folder to Python (`run ""` said "not an audio file: .", `export --out ""` wrote
    into the working folder and left the shell in a deleted one)."""
    if "" not in arguments and not any(argument.endswith("=") for argument in arguments):
        return None
    group = typer.main.get_command(app)
    command = group.commands.get(arguments[0]) if isinstance(group, typer.core.TyperGroup) and arguments else None
    taking_values = {
        name
        for parameter in [*group.params, *(command.params if command else [])]
        if parameter.param_type_name == "option" and not getattr(parameter, "is_flag", False)
        for name in parameter.opts
    }
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if argument == "--":  # past it, every argument is one of the command's own
            break
        if argument in taking_values:
            if index + 1 < len(arguments) and arguments[index + 1] == "":
                return _empty_option_line(argument)
            index += 2  # the option's value, whatever it looks like (a prompt "--note=")
            continue
        if argument.endswith("=") and argument[:-1] in taking_values:
            return _empty_option_line(argument[:-1])
        if argument == "":
            return _empty_argument_line(arguments, index, command is not None)
        index += 1
    if "" in arguments[index:]:
        return _empty_argument_line(arguments, arguments.index("", index), command is not None)
    return None


def _empty_option_line(option: str) -> str:
    return f"{option} is empty; {_EMPTY_OPTION_ADVICE.get(option, 'give it a value (an unset variable?)')}"


def _empty_argument_line(arguments: list[str], index: int, in_command: bool) -> str:
    where = f"edgelalm {arguments[0]}'s argument {index}" if in_command else f"argument {index + 1}"
    return f"{where} is empty (an unset variable?); give it a value or leave it out"


def _raised_by_click_echo(error: OSError) -> bool:
    """Whether `error` came from click's `echo` (the help, a usage line), which writes to the
    standard streams and nothing else."""
    import traceback

    return any(
        frame.f_code.co_name == "echo" and "click" in frame.f_code.co_filename
        for frame, _ in traceback.walk_tb(error.__traceback__)
    )


def _fail_interrupted() -> None:
    """Exit 130 after one line. os._exit, because CI once saw this process end by SIGINT (status
    -2) after printing this line: CPython may re-raise at exit an interrupt it saw unhandled in
    native code. The unwinding has already removed any half-written output. What stdout still
    buffers for a pipe goes only where the pipe takes it at once: a reader that does not read
    held the flush, and the process with it, for as long (Ctrl-C and SIGTERM did nothing)."""
    unblocked = None
    with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or no file (a test's capture)
        descriptor = sys.stdout.fileno()
        mode = os.fstat(descriptor).st_mode
        if (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) and os.get_blocking(descriptor):
            os.set_blocking(descriptor, False)
            unblocked = descriptor
    _end_stdout_line()
    for stream, text in ((sys.stdout, ""), (sys.stderr, interrupts.interrupted_line())):
        with contextlib.suppress(OSError, ValueError):  # a reader gone (`| head`), a stream closed
            stream.write(text)
            stream.flush()
    if unblocked is not None:  # the pipe's mode is every writer's: the next command's output was cut
        with contextlib.suppress(OSError):
            os.set_blocking(unblocked, True)
    os._exit(130)


def _checked_threads(threads: int | None) -> int | None:
    """--threads as given (None: each stage's default), refused in one line beyond the machine's CPUs."""
    from edgelalm.runtime.llama_backend import check_threads

    return None if threads is None else check_threads(threads)


def _require_export_extra(command: str) -> None:
    """The commands that write bundles or train need the export extra (a runtime-only install lacks
    it), and a process torch and transformers can run in: one line each, before they fail natively
    or with a traceback."""
    import importlib.util

    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise EdgelalmError(
            f"edgelalm {command} needs the export extra ({', '.join(missing)} missing): pip install 'edgelalm[export]'"
        )
    try:
        os.getcwd()
    except FileNotFoundError:  # torch's MKL then failed to load it: "Intel oneMKL FATAL ERROR", exit 2
        raise EdgelalmError("the current folder no longer exists (deleted?): cd to one that does") from None
    if sys.flags.optimize >= 2:  # transformers builds its output classes from their docstrings
        raise EdgelalmError(
            f"edgelalm {command} cannot run with docstrings stripped (python -OO, PYTHONOPTIMIZE=2), which "
            "transformers reads: unset PYTHONOPTIMIZE"
        )


def _holds_manifest(path: Path) -> bool:
    """Whether `path` is a folder with a bundle manifest (a bundle given where audio goes)."""
    try:
        return (path / MANIFEST_FILE).is_file()
    except OSError:  # a name too long for the file system: no bundle; reading it as audio says why
        return False


def _warn_if_extra_buffers_crash(choice: ExtraBuffers) -> None:
    """`on` where `auto` would have said off: the user asked for the setting that crashes here."""
    from edgelalm.runtime.llama_backend import decide_extra_buffers

    if choice == "on" and not (auto := decide_extra_buffers("auto")).enabled:
        _warn(f"--llama-extra-buffers on: {auto.reason.removeprefix('off: ')}")


def _shown_path(path: Path | str) -> str:
    """A file's name as stdout can carry it: bytes that are not UTF-8 written as \\xe9, control
    characters as \\n, and so a backslash of its own as \\\\ (`a\\nb.wav` and a name holding a line
    break were shown alike)."""
    name = os.fsencode(path)
    if os.sep != "\\":  # on Windows it is the separator, in no name
        name = name.replace(b"\\", b"\\\\")
    return printable(name.decode("utf-8", "backslashreplace"))


def _json_line(record: dict[str, Any]) -> str:
    """One JSON object on one line. `file` is the name as given, which JSON escapes as it must (a
    name that is not UTF-8 holds surrogate escapes: written as \\udcXX, read back by json to the
    same name, os.fsencode gives its bytes). Non-ASCII text as itself where stdout can hold it,
    \\u escapes otherwise."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line


def _stderr_line(kind: str, message: str) -> None:
    """One line on stderr, `edgelalm: [kind: ]message`, its control characters escaped. Best
    effort: a stderr closed (`2>&-`: print would have written to stdout), gone (its reader left)
    or full must not stop the answers, which go to stdout."""
    if sys.stderr is None:
        return
    try:
        sys.stderr.write(f"edgelalm: {kind}{printable(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        _discard_stderr()


def _discard_stderr() -> None:
    """stderr to /dev/null, so that what is still buffered cannot fail again (at exit)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stderr.fileno())
        os.close(null)


def _note(message: str) -> None:
    _stderr_line("", message)


def _warn(message: str) -> None:
    _stderr_line("warning: ", message)


class _StdoutFailed(Exception):
    """Standard output refused a write: its reader left (`| head`) or its disk is full."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _say(text: str = "", end: str = "\n") -> None:
    """A command's result on standard output, written through at once (the answer streams)."""
    global _stdout_line_open
    if sys.stdout is None:  # started with it closed (`>&-`): the answer would vanish, exit 0
        raise EdgelalmError("standard output is closed: there is nowhere to write the result")
    try:
        sys.stdout.write(text + end)
        sys.stdout.flush()
    except OSError as error:
        raise _StdoutFailed(error) from None
    if text + end:
        _stdout_line_open = not (text + end).endswith("\n")


# Whether stdout's last line is unfinished (an answer streamed in part): an error or an
# interrupt ends it first, so that the next line read from it is not glued to half an answer.
_stdout_line_open = False


def _end_stdout_line() -> None:
    if _stdout_line_open:
        with contextlib.suppress(OSError, ValueError, AttributeError, EdgelalmError, _StdoutFailed):
            _say()


def _error_line(message: str) -> None:
    _stderr_line("error: ", message)


def _fail(message: str, exit_code: int) -> None:
    _end_stdout_line()
    _error_line(message)
    sys.exit(exit_code)


def program() -> None:
    """main() for a process that ends with it (the console script, python -m): once the status is
    chosen, signals are ignored (edgelalm.interrupts.settle), so that a Ctrl-C during Python's
    shutdown cannot end a finished command by SIGINT. Not main() itself: in a process that goes on
    (tests run the CLI in theirs), ignored signals would stay ignored, children's too."""
    try:
        main()
    finally:
        interrupts.settle()


if __name__ == "__main__":
    program()
