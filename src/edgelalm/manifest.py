"""The bundle's manifest: one JSON file that says what every other file in the bundle is.

Written last by `edgelalm export` (with a SHA-256 of every file), read first by the runtime,
`inspect` and `doctor`, which refuse a bundle whose files do not match it. The manifest is typed:
export builds a `Manifest` and writes it; the reader builds the same dataclasses from the JSON,
checking every field it will use (presence, type, range, file names that stay inside the bundle)
and refusing a malformed manifest with one line naming the file and the field, as whisper builds
`ModelDimensions(**checkpoint["dims"])`. Keys the reader does not know are ignored, so a bundle
written by another version-1 writer still loads. Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar, Union

from edgelalm.checks import check_unicode_text, is_finite_number, is_whole_number, short_repr
from edgelalm.compression import CompressorSpec
from edgelalm.constants import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    COMPRESSOR_INPUT,
    COMPRESSOR_OUTPUT,
    CTC_FRAMES_INPUT,
    CTC_INPUT,
    CTC_OUTPUT,
    DECODING_ADVICE_FILE,
    ENCODER_FILE,
    ENCODER_FRAMES_PER_SECOND,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    ENCODER_RIGHT_CONTEXT_INPUT,
    FEATURES_KIND,
    MANIFEST_FILE,
    MIN_MEL_FRAMES,
    REALIGNED_HEADS_FORMAT_VERSION,
    RIGHT_CONTEXT_FRAMES,
    SEVERAL_COMPRESSORS_FORMAT_VERSION,
    SINGLE_COMPRESSOR_FORMAT_VERSION,
    WINDOWS_ADVICE_FILE,
    CompressorName,
    EncoderPrecision,
    PromptFormat,
    QuantType,
    TemplateSource,
    WindowMode,
)
from edgelalm.errors import EdgelalmError
from edgelalm.files import read_json, sha256_of, write_json

# Larger than any real width, count or length; small enough for llama.cpp's int32 parameters.
_MAX_INT = 2**31 - 1
# A file's size: a 7B decoder is 8 GB, past int32; JSON keeps integers exact up to 2**53.
FileBytes = typing.NewType("FileBytes", int)
_MAX_FILE_BYTES = 2**53 - 1


def is_encoder_file(name: str) -> bool:
    """The encoder graph and the external weights beside it (encoder.onnx.data)."""
    return name == ENCODER_FILE or name.startswith(ENCODER_FILE + ".")


def bundle_name(compressor_label: str, quant: str, encoder_precision: str, plain_precision: str = "fp32") -> str:
    """'avg3-q8_0' for an encoder in `plain_precision` (export: the checkpoint's own width, what
    `auto` picks; the bench: fp32), else 'avg3-q8_0-encoder-int8' (fp32, fp16w, fp16): one name
    for one content."""
    encoder_suffix = "" if encoder_precision == plain_precision else f"-encoder-{encoder_precision}"
    return f"{compressor_label}-{quant}{encoder_suffix}"


# -- the sections ------------------------------------------------------------------------------


# A count, size or rate the runtime divides by or allocates with: 0 is malformed.
_AT_LEAST_ONE = {"min": 1}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str  # the checkpoint folder it was exported from
    architecture: str
    audio_width: int = field(metadata=_AT_LEAST_ONE)
    hidden_size: int = field(metadata=_AT_LEAST_ONE)
    vocab_size: int = field(metadata=_AT_LEAST_ONE)


@dataclass(frozen=True)
class FeaturesInfo:
    kind: str  # whisper_log_mel
    sampling_rate: int = field(metadata=_AT_LEAST_ONE)
    num_mel_bins: int = field(metadata=_AT_LEAST_ONE)
    n_fft: int = field(metadata=_AT_LEAST_ONE)
    hop_length: int = field(metadata=_AT_LEAST_ONE)
    window_seconds: float = field(metadata=_AT_LEAST_ONE)
    window_mel_frames: int = field(metadata=_AT_LEAST_ONE)  # the encoder's window: 2 * max_source_positions
    mel_filters_file: str


@dataclass(frozen=True)
class ProbeInfo:
    seconds: float
    max_abs_diff_vs_pytorch_fp32: float


@dataclass(frozen=True)
class EncoderInfo:
    file: str
    precision: EncoderPrecision
    inputs: dict[str, str]
    output: dict[str, str]
    right_context_frames: int
    min_mel_frames: int
    max_mel_frames: int = field(metadata=_AT_LEAST_ONE)
    frames_per_second: float
    probe: ProbeInfo


@dataclass(frozen=True)
class CompressorInfo:
    file: str
    name: CompressorName
    factor: int = field(metadata=_AT_LEAST_ONE)
    description: str
    audio_tokens_per_second: float | None  # None: depends on the audio (unseg, mean, max)
    includes_projector: bool
    inputs: dict[str, str]
    output: dict[str, str]

    @property
    def spec(self) -> CompressorSpec:
        """What runs it (its label: avg3, unseg); raises for a name or factor this edgelalm lacks."""
        return CompressorSpec(self.name, self.factor)


@dataclass(frozen=True)
class AdapterInfo:
    """A compressor choice's LoRA as a llama.cpp adapter GGUF, applied at run time (issue 19)."""

    file: str
    description: dict[str, Any]  # rank, alpha, targets, sha256 of the peft weights (as DecoderInfo.adapter)
    gguf_alpha: float  # adapter.lora.alpha in the GGUF; 0: each module's scaling folded into its B


@dataclass(frozen=True)
class CompressorChoice:
    """One compressor a bundle of several offers: its graph and its realigned adapter (or none)."""

    compressor: CompressorInfo
    adapter: AdapterInfo | None
    ctc: CtcInfo | None = None  # its adapter's CTC head; None: the bundle's (`Manifest.ctc`), if any


@dataclass(frozen=True)
class DecoderInfo:
    file: str
    format: str
    architecture: str
    quant: QuantType
    layers: int = field(metadata=_AT_LEAST_ONE)
    hidden_size: int = field(metadata=_AT_LEAST_ONE)
    attention_heads: int = field(metadata=_AT_LEAST_ONE)
    kv_heads: int = field(metadata=_AT_LEAST_ONE)
    context_length: int = field(metadata=_AT_LEAST_ONE)
    vocab_size: int = field(metadata=_AT_LEAST_ONE)
    tied_embeddings: bool
    adapter: dict[str, Any] | None  # the merged LoRA's description (rank, alpha, targets, sha256)


@dataclass(frozen=True)
class PromptInfo:
    """The chat template rendered around one audio and a prompt, cut into its pieces."""

    chat_template: str  # empty for the base format
    before_audio: str
    after_audio: str
    after_prompt: str
    default_prompt: str
    format: PromptFormat = "instruct"
    # Where the template came from: "checkpoint" (its own file), "edgelalm" (Qwen2-Audio-Instruct's
    # template shipped in edgelalm, for a checkpoint that carries none), "none" (base format).
    template_source: TemplateSource = "checkpoint"


@dataclass(frozen=True)
class SpecialToken:
    text: str
    id: int


@dataclass(frozen=True)
class SpecialTokens:
    audio: SpecialToken
    audio_bos: SpecialToken
    audio_eos: SpecialToken
    im_start: SpecialToken
    im_end: SpecialToken
    endoftext: SpecialToken
    end_of_turn_ids: list[int]  # the checkpoint's own stop tokens (generation_config.json)

    def named(self) -> dict[str, SpecialToken]:
        """{role: token} for the named tokens (audio, audio_bos, ..., endoftext)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "end_of_turn_ids"}


@dataclass(frozen=True)
class FileRecord:
    bytes: FileBytes
    sha256: str


@dataclass(frozen=True)
class WindowsInfo:
    """How `run` cuts a clip by default when the caller does not say (`run --windows`): the
    checkpoint's advice (its WINDOWS_ADVICE_FILE), for a model that answers some windows better."""

    mode: WindowMode
    seconds: float | None = None  # with "each": windows this long, cut at a pause; None: the encoder's


@dataclass(frozen=True)
class CtcInfo:
    """A CTC head (a checkpoint's CTC_HEAD_FILE with its decoder's input embeddings): log-probabilities
    of a blank and of each decoder token, for joint decoding; over the encoder's frames (its graph
    holds the projector; `inputs` names CTC_FRAMES_INPUT) or over a compressor's audio tokens."""

    file: str
    vocab_size: int = field(metadata=_AT_LEAST_ONE)  # columns after the blank: the decoder's tokens
    inputs: dict[str, str] = field(default_factory=dict)
    output: dict[str, str] = field(default_factory=dict)
    # The compressor it was realigned to (its adapter's head); None: the checkpoint's own head,
    # trained on uncompressed embeddings.
    realigned_to: str | None = None

    @property
    def reads_frames(self) -> bool:
        """Whether it reads the encoder's frames (every compressor's audio, at the full rate)."""
        return list(self.inputs) == [CTC_FRAMES_INPUT]


# A manifest of several compressors with a long chat template is a few tens of kB.
MAX_MANIFEST_BYTES = 1_000_000

# Wider beams cost a sequence each in the KV cache and a row each in every decoding step.
MAX_BEAM_SIZE = 16


@dataclass(frozen=True)
class DecodingInfo:
    """How `run` decodes when the caller does not say (`run --beam-size/--ctc-weight`): the
    checkpoint's advice (its DECODING_ADVICE_FILE). Without it: greedy, the decoder alone."""

    beam_size: int = field(default=1, metadata=_AT_LEAST_ONE)
    ctc_weight: float = 0.0  # the CTC head's share of each hypothesis's score, 0 to 1


@dataclass(frozen=True)
class Manifest:
    created_utc: str
    model: ModelInfo
    features: FeaturesInfo
    encoder: EncoderInfo
    compressor: CompressorInfo
    decoder: DecoderInfo | None  # None only in the first bundles; the runtime refuses them
    prompt: PromptInfo
    special_tokens: SpecialTokens
    tools: dict[str, str | None]  # versions of what wrote the bundle
    files: dict[str, FileRecord] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT
    format_version: int = SINGLE_COMPRESSOR_FORMAT_VERSION
    # A bundle of several compressors (format version 2): {label: choice}, in the order exported;
    # `compressor` is the first, the default. Empty: one compressor, its adapter (if any) merged.
    compressors: dict[str, CompressorChoice] = field(default_factory=dict)
    windows: WindowsInfo | None = None  # None: joined, the encoder's window (as bundles before it)
    ctc: CtcInfo | None = None  # None: no CTC head (every Qwen2-Audio checkpoint; bundles before it)
    decoding: DecodingInfo | None = None  # None: greedy

    def to_json(self) -> dict[str, Any]:
        header = {"format": self.format, "format_version": self.format_version}
        body = {key: value for key, value in dataclasses.asdict(self).items() if key not in header}
        if not self.compressors:
            del body["compressors"]  # a version-1 bundle, as older writers wrote it
        for optional in ("windows", "ctc", "decoding"):
            if body[optional] is None:
                del body[optional]
        return {**header, **body}

    def file_names(self) -> list[str]:
        """The files each section names (they must be among `files`)."""
        names = [self.features.mel_filters_file, self.encoder.file, self.compressor.file]
        for choice in self.compressors.values():
            names += [choice.compressor.file] + ([choice.adapter.file] if choice.adapter else [])
            names += [choice.ctc.file] if choice.ctc else []
        names += [self.ctc.file] if self.ctc else []
        return names + ([self.decoder.file] if self.decoder else [])

    def ctc_head_for(self, label: str | None) -> CtcInfo | None:
        """The CTC head a compressor decodes with: its own (realigned), else the bundle's."""
        choice = self.compressors.get(label) if label is not None else None
        return choice.ctc if choice is not None and choice.ctc is not None else self.ctc

    def ctc_heads(self) -> list[tuple[str, CtcInfo]]:
        """Every CTC head the bundle holds, each with the section that names it."""
        named = [("ctc", self.ctc)] + [(f"compressors.{label}.ctc", c.ctc) for label, c in self.compressors.items()]
        return [(where, head) for where, head in named if head is not None]

    def headless_compressors(self, labels: list[str] | None = None) -> list[str]:
        """Those of `labels` (default: every compressor the bundle offers) with no CTC head to decode
        with, neither their own nor the bundle's."""
        labels = labels if labels is not None else list(self.compressors) or [self.compressor.spec.label]
        return [label for label in labels if self.ctc_head_for(label) is None]


def format_version_for(compressors: dict[str, CompressorChoice]) -> int:
    """The lowest format version that holds these choices (none: one compressor, merged)."""
    if not compressors:
        return SINGLE_COMPRESSOR_FORMAT_VERSION
    if any(choice.ctc is not None for choice in compressors.values()):
        return REALIGNED_HEADS_FORMAT_VERSION
    return SEVERAL_COMPRESSORS_FORMAT_VERSION


# -- writing -----------------------------------------------------------------------------------


def file_records(bundle_dir: Path, checked: dict[str, FileRecord] | None = None) -> dict[str, FileRecord]:
    """{relative path: bytes and sha256} for every file in the bundle but the manifest; `checked`:
    records of files whose checksums were just verified (an earlier bundle's shared files, which
    hashing again would cost a 7B decoder's read)."""
    records = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        name = path.relative_to(bundle_dir).as_posix()
        size = path.stat().st_size
        if checked and name in checked and checked[name].bytes == size:
            records[name] = checked[name]
        elif name != MANIFEST_FILE:
            records[name] = FileRecord(bytes=FileBytes(size), sha256=sha256_of(path))
    return records


def write_manifest(bundle_dir: Path, manifest: Manifest, checked: dict[str, FileRecord] | None = None) -> Manifest:
    """Write manifest.json: `manifest` with the checksums of the files now in `bundle_dir`
    (`checked`'s as they are: see `file_records`)."""
    manifest = dataclasses.replace(manifest, files=file_records(bundle_dir, checked))
    write_json(bundle_dir / MANIFEST_FILE, manifest.to_json())
    return manifest


# -- reading -----------------------------------------------------------------------------------


def enclosing_bundle(path: Path, itself: bool = False) -> Path | None:
    """The bundle folder that holds `path` (or is it, with `itself`): what is written there is not
    listed in its manifest, and the bundle is refused from then on (files not listed in
    manifest.json). Only an edgelalm manifest makes a bundle (a web app's manifest.json above is
    none of its business)."""
    absolute = Path(os.path.normpath(path.absolute()))
    try:  # through a link into a bundle, too
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13): said where it is used
        resolved = absolute
    folders = dict.fromkeys([*absolute.parents, *resolved.parents])
    for folder in [absolute, resolved, *folders] if itself else folders:
        try:
            manifest = read_json(folder / MANIFEST_FILE)
        except (EdgelalmError, OSError):
            continue
        if isinstance(manifest, dict) and {"format_version", "files"} <= manifest.keys():
            return folder
    return None


def read_manifest(bundle_dir: Path, verify_files: bool = True) -> Manifest:
    """The manifest of `bundle_dir`, validated; with `verify_files`, every listed file must match it."""
    manifest_path = bundle_dir / MANIFEST_FILE
    if bundle_dir.exists() and not bundle_dir.is_dir():  # a file, a device (/dev/null), a pipe
        kind = "a file" if bundle_dir.is_file() else "not a folder"
        raise EdgelalmError(f"{bundle_dir} is {kind}; a bundle is the folder that holds {MANIFEST_FILE}")
    if not bundle_dir.is_dir():
        raise EdgelalmError(f"bundle folder not found: {bundle_dir}")
    if manifest_path.is_symlink():
        raise EdgelalmError(f"bundle {bundle_dir}: {MANIFEST_FILE}: symbolic link (a bundle holds its own files)")
    if manifest_path.exists() and not manifest_path.is_file():
        raise EdgelalmError(f"{manifest_path} is not a file: a bundle's manifest is a JSON file")
    if not manifest_path.is_file():
        raise EdgelalmError(f"{bundle_dir} is not an edgelalm bundle: it has no {MANIFEST_FILE}")
    data = read_json(manifest_path, MAX_MANIFEST_BYTES)
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise EdgelalmError(f"{manifest_path} is not an edgelalm bundle manifest")
    version = data.get("format_version")
    if not is_whole_number(version) or version < SINGLE_COMPRESSOR_FORMAT_VERSION:
        raise EdgelalmError(
            f"{manifest_path}: format_version must be an integer from {SINGLE_COMPRESSOR_FORMAT_VERSION}, "
            f"got {short_repr(version)}"
        )
    if version > BUNDLE_FORMAT_VERSION:
        raise EdgelalmError(
            f"{bundle_dir} has bundle format version {version}; this edgelalm reads up to "
            f"{BUNDLE_FORMAT_VERSION}. Upgrade edgelalm or re-export the bundle"
        )
    manifest = _build(Manifest, data, "", manifest_path)
    _check_file_names(manifest, manifest_path)
    _check_contract(manifest, manifest_path)
    if verify_files:
        verify_bundle_files(bundle_dir, manifest)
    return manifest


def verify_bundle_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Raise, naming every file that is missing or differs from its checksum. Only regular files
    inside the folder count: a symlink could point anywhere, and a FIFO blocks its reader."""
    missing: list[str] = []
    links: list[str] = []
    irregular: list[str] = []  # there, but not a regular file
    altered: list[str] = []
    for name, record in manifest.files.items():
        path = bundle_dir / name
        if any(parent.is_symlink() for parent in [path, *path.parents][: len(PurePosixPath(name).parts)]):
            links.append(name)
        elif not path.is_file():
            (irregular if path.exists() else missing).append(name)
        elif path.stat().st_size != record.bytes or sha256_of(path) != record.sha256.lower():
            altered.append(name)
    problems = [f"missing {', '.join(missing)}"] if missing else []
    if unlisted := _unlisted_files(bundle_dir, manifest):
        # A graph may name any file beside it as its external weights: each one must be checked.
        problems.append(f"{', '.join(unlisted)}: not listed in {MANIFEST_FILE} (a bundle holds only its own files)")
    if links:
        problems.append(f"{', '.join(links)}: symbolic link (a bundle holds its own files)")
    if irregular:
        problems.append(f"{', '.join(irregular)}: not a regular file (a folder, a FIFO or a device)")
    if altered:
        problems.append(
            f"{', '.join(altered)} {'does' if len(altered) == 1 else 'do'} not match the checksums in {MANIFEST_FILE}"
        )
    if problems:
        raise EdgelalmError(f"bundle {bundle_dir}: {'; '.join(problems)}")


def _unlisted_files(bundle_dir: Path, manifest: Manifest) -> list[str]:
    """Whatever the folder holds beside the manifest and its listed files (links to folders too)."""
    listed = {*manifest.files, MANIFEST_FILE}
    found = []
    for root, folders, names in os.walk(bundle_dir):
        linked_folders = [name for name in folders if os.path.islink(os.path.join(root, name))]
        for name in names + linked_folders:
            relative = Path(root, name).relative_to(bundle_dir).as_posix()
            if relative not in listed:
                found.append(relative)
    return sorted(found)


def _check_file_names(manifest: Manifest, manifest_path: Path) -> None:
    """Every file name stays inside the bundle, and every file a section names is listed."""
    for name in manifest.files:
        parts = PurePosixPath(name).parts
        if not name or name.startswith("/") or "\\" in name or ".." in parts or name != PurePosixPath(name).as_posix():
            raise EdgelalmError(f"{manifest_path}: files: {name!r} is not a plain file name inside the bundle")
    for name in manifest.file_names():
        if name not in manifest.files:
            raise EdgelalmError(f"{manifest_path}: {name!r} is named by a section but not listed in files")


def _check_contract(manifest: Manifest, manifest_path: Path) -> None:
    """The graphs' names and the encoder's arithmetic are what this runtime feeds and reads."""
    encoder = manifest.encoder
    expected = {
        "features.kind": (manifest.features.kind, FEATURES_KIND),
        "encoder.inputs": (sorted(encoder.inputs), sorted([ENCODER_INPUT, ENCODER_RIGHT_CONTEXT_INPUT])),
        "encoder.output": (list(encoder.output), [ENCODER_OUTPUT]),
        "encoder.right_context_frames": (encoder.right_context_frames, RIGHT_CONTEXT_FRAMES),
        "encoder.min_mel_frames": (encoder.min_mel_frames, MIN_MEL_FRAMES),
        "encoder.frames_per_second": (encoder.frames_per_second, ENCODER_FRAMES_PER_SECOND),
        "encoder.max_mel_frames": (encoder.max_mel_frames, manifest.features.window_mel_frames),
    }
    _expect(expected, manifest_path)
    check_features(manifest.features, manifest_path)
    compressors = [("compressor", manifest.compressor)] + [
        (f"compressors.{label}.compressor", choice.compressor) for label, choice in manifest.compressors.items()
    ]
    for where, compressor in compressors:
        expected = {
            f"{where}.inputs": (list(compressor.inputs), [COMPRESSOR_INPUT]),
            f"{where}.output": (list(compressor.output), [COMPRESSOR_OUTPUT]),
            f"{where}.includes_projector": (compressor.includes_projector, True),
        }
        _expect(expected, manifest_path)
    _check_choices(manifest, manifest_path)
    _check_decoder_agrees(manifest, manifest_path)
    if manifest.windows is not None:
        check_windows(manifest.windows, manifest.features.window_seconds, manifest_path)
    for where, head in manifest.ctc_heads():
        expected = {f"{where}.output": (list(head.output), [CTC_OUTPUT])}
        # The bundle's own head may read the encoder's frames; a choice's reads its audio tokens.
        if where != "ctc":
            expected = {f"{where}.inputs": (list(head.inputs), [CTC_INPUT]), **expected}
        elif list(head.inputs) not in ([CTC_INPUT], [CTC_FRAMES_INPUT]):
            raise EdgelalmError(
                f"{manifest_path}: ctc.inputs is {list(head.inputs)!r}; this edgelalm reads [{CTC_INPUT!r}] "
                f"(the audio tokens) or [{CTC_FRAMES_INPUT!r}] (the encoder's frames)"
            )
        if manifest.decoder is not None:
            expected[f"{where}.vocab_size"] = (head.vocab_size, manifest.decoder.vocab_size)
        _expect(expected, manifest_path)
    # A choice's own head is an adapter's, realigned; the bundle's, in a bundle of several, the checkpoint's.
    for label, choice in manifest.compressors.items():
        if choice.ctc is not None and choice.ctc.realigned_to is None:
            raise EdgelalmError(
                f"{manifest_path}: compressors.{label}.ctc must say which compressor it is realigned to"
            )
    if manifest.compressors and manifest.ctc is not None and manifest.ctc.realigned_to is not None:
        raise EdgelalmError(f"{manifest_path}: ctc of a bundle of several compressors is realigned to none of them")
    if manifest.ctc is not None and manifest.ctc.reads_frames:
        if manifest.ctc.realigned_to is not None:
            raise EdgelalmError(f"{manifest_path}: ctc reads the encoder's frames, so it is realigned to no compressor")
        if any(choice.ctc is not None for choice in manifest.compressors.values()):
            raise EdgelalmError(
                f"{manifest_path}: ctc reads the encoder's frames for every compressor; none has its own"
            )
    if manifest.decoding is not None:
        check_decoding(manifest.decoding, not manifest.headless_compressors(), manifest_path)


def check_decoding(decoding: DecodingInfo, has_ctc_head: bool, source: Path | str) -> None:
    """A beam of 1 to MAX_BEAM_SIZE; a CTC weight from 0 to 1, above 0 only with a CTC head."""
    if not 1 <= decoding.beam_size <= MAX_BEAM_SIZE:
        raise EdgelalmError(f"{source}: beam_size must be from 1 to {MAX_BEAM_SIZE}, got {decoding.beam_size}")
    if not 0.0 <= decoding.ctc_weight <= 1.0:
        raise EdgelalmError(f"{source}: ctc_weight must be from 0 to 1, got {decoding.ctc_weight:g}")
    if decoding.ctc_weight > 0 and not has_ctc_head:
        raise EdgelalmError(f"{source}: ctc_weight {decoding.ctc_weight:g} needs a CTC head, and there is none")


def read_decoding_advice(checkpoint_dir: Path, has_ctc_head: bool) -> DecodingInfo | None:
    """The checkpoint's DECODING_ADVICE_FILE, checked as the manifest's section is; None without one."""
    path = checkpoint_dir / DECODING_ADVICE_FILE
    if not path.is_file():
        return None
    decoding = _build(DecodingInfo, read_json(path), "decoding", path)
    check_decoding(decoding, has_ctc_head, path)
    return decoding


def write_decoding_advice(checkpoint_dir: Path, decoding: DecodingInfo) -> Path:
    return _write_advice(checkpoint_dir / DECODING_ADVICE_FILE, decoding)


def _write_advice(path: Path, section: WindowsInfo | DecodingInfo) -> Path:
    path.write_text(json.dumps(dataclasses.asdict(section), indent=2) + "\n", encoding="utf-8")
    return path


# Audio rates a feature extractor is made for (Whisper's is 16 kHz); past them, resampling a clip
# to the rate would take gigabytes. The FFT: Whisper's is 400; the filterbank grows with it.
SAMPLING_RATES = (4000, 192000)
MAX_N_FFT = 16384


def check_features(features: FeaturesInfo, source: Path) -> None:
    """The feature settings agree with each other: a window's samples are what its seconds say
    (the manifest's, and export's from a checkpoint's feature extractor and tower)."""
    low, high = SAMPLING_RATES
    problem = (
        f"sampling_rate {features.sampling_rate} is outside {low}-{high} Hz"
        if not low <= features.sampling_rate <= high
        else f"n_fft {features.n_fft} is over {MAX_N_FFT}"
        if features.n_fft > MAX_N_FFT
        else f"hop_length {features.hop_length} is longer than n_fft {features.n_fft}"
        if features.hop_length > features.n_fft
        else f"window_mel_frames {features.window_mel_frames} of {features.hop_length} samples are not "
        f"window_seconds {features.window_seconds:g} at {features.sampling_rate} Hz"
        if abs(features.window_mel_frames * features.hop_length - features.window_seconds * features.sampling_rate)
        > features.hop_length
        else None
    )
    if problem:
        raise EdgelalmError(f"{source}: features: {problem}")


def check_windows(windows: WindowsInfo, encoder_seconds: float, source: Path) -> None:
    """A window length only for "each", from 1 s to the encoder's window."""
    if windows.seconds is None:
        return
    if windows.mode != "each":
        raise EdgelalmError(f"{source}: windows.seconds applies to mode each (windows answered each on its own)")
    if not 1.0 <= windows.seconds <= encoder_seconds:
        raise EdgelalmError(
            f"{source}: windows.seconds must be from 1 to the encoder's window of {encoder_seconds:g} s, "
            f"got {windows.seconds:g}"
        )


def read_windows_advice(checkpoint_dir: Path, encoder_seconds: float) -> WindowsInfo | None:
    """The checkpoint's WINDOWS_ADVICE_FILE, checked as the manifest's section is; None without one."""
    path = checkpoint_dir / WINDOWS_ADVICE_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    windows = _build(WindowsInfo, data, "windows", path)
    check_windows(windows, encoder_seconds, path)
    return windows


def write_windows_advice(checkpoint_dir: Path, windows: WindowsInfo) -> Path:
    return _write_advice(checkpoint_dir / WINDOWS_ADVICE_FILE, windows)


def _check_decoder_agrees(manifest: Manifest, manifest_path: Path) -> None:
    """The model section's sizes are the decoder's, and every special token is one of its tokens
    (`inspect` prints them; the runtime stops at the end ids): a manifest edited to say otherwise
    loaded, and described another model."""
    decoder = manifest.decoder
    if decoder is None:
        return
    for size in ("hidden_size", "vocab_size"):
        if (found := getattr(manifest.model, size)) != (wanted := getattr(decoder, size)):
            raise EdgelalmError(f"{manifest_path}: model.{size} is {found}; decoder.{size} is {wanted}")
    tokens = manifest.special_tokens
    ids = {f"special_tokens.{name}.id": token.id for name, token in tokens.named().items()}
    ids |= {f"special_tokens.end_of_turn_ids[{index}]": token for index, token in enumerate(tokens.end_of_turn_ids)}
    for name, token in ids.items():
        if token >= decoder.vocab_size:
            raise EdgelalmError(f"{manifest_path}: {name} is {token}, past the decoder's {decoder.vocab_size} tokens")


def _expect(expected: dict[str, tuple[Any, Any]], manifest_path: Path) -> None:
    for name, (found, wanted) in expected.items():
        if found != wanted:
            raise EdgelalmError(f"{manifest_path}: {name} is {found!r}; this edgelalm reads {wanted!r}")


def _check_choices(manifest: Manifest, manifest_path: Path) -> None:
    """A bundle of several compressors (version 2): each named by its label, the first the default,
    adapters applied at run time over a decoder with none merged."""
    choices = manifest.compressors
    if not choices:
        if manifest.format_version >= SEVERAL_COMPRESSORS_FORMAT_VERSION:
            raise EdgelalmError(f"{manifest_path}: format version {manifest.format_version} needs compressors")
        return
    needed = format_version_for(choices)
    if manifest.format_version < needed:
        raise EdgelalmError(
            f"{manifest_path}: these compressors need format version {needed}, got {manifest.format_version}"
        )
    for label, choice in choices.items():
        try:
            expected_label = choice.compressor.spec.label
        except EdgelalmError as error:
            raise EdgelalmError(f"{manifest_path}: compressors.{label}: {error}") from None
        if label != expected_label:
            raise EdgelalmError(f"{manifest_path}: compressors.{label} holds {expected_label}")
    if manifest.compressor != next(iter(choices.values())).compressor:
        raise EdgelalmError(f"{manifest_path}: compressor is not the first of compressors")
    if manifest.decoder is not None and manifest.decoder.adapter is not None:
        raise EdgelalmError(f"{manifest_path}: decoder.adapter: a bundle of several compressors merges no adapter")


T = TypeVar("T")


def _build(cls: type[T], data: Any, where: str, manifest_path: Path) -> T:
    """`cls` (a dataclass) from `data`, every field checked against its type hint."""
    if not isinstance(data, dict):
        raise EdgelalmError(f"{manifest_path}: {where or 'the manifest'} must be an object")
    hints = typing.get_type_hints(cls)
    values = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = f"{where}.{spec.name}" if where else spec.name
        if spec.name not in data:
            if spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING:
                continue
            raise EdgelalmError(f"{manifest_path}: missing {path}")
        value = _value(hints[spec.name], data[spec.name], path, manifest_path)
        if "min" in spec.metadata and value < spec.metadata["min"]:
            raise EdgelalmError(f"{manifest_path}: {path} must be at least {spec.metadata['min']}, got {value}")
        values[spec.name] = value
    return cls(**values)


def _value(hint: Any, value: Any, path: str, manifest_path: Path) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _value(inner, value, path, manifest_path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, path, manifest_path)
    if origin is dict:
        key_type, item_type = args
        if not isinstance(value, dict):
            raise EdgelalmError(f"{manifest_path}: {path} must be an object")
        return {key: _value(item_type, item, f"{path}.{key}", manifest_path) for key, item in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise EdgelalmError(f"{manifest_path}: {path} must be a list")
        return [_value(args[0], item, f"{path}[{index}]", manifest_path) for index, item in enumerate(value)]
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise EdgelalmError(
                f"{manifest_path}: {path} must be one of {', '.join(map(str, args))}, got {short_repr(value)}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise EdgelalmError(f"{manifest_path}: {path} must be true or false, got {value!r}")
        return value
    if hint is int or hint is FileBytes:
        limit = _MAX_FILE_BYTES if hint is FileBytes else _MAX_INT
        if not is_whole_number(value) or not 0 <= value <= limit:
            raise EdgelalmError(
                f"{manifest_path}: {path} must be an integer from 0 to {limit}, got {short_repr(value)}"
            )
        return value
    if hint is float:
        if not is_finite_number(value) or value < 0:
            raise EdgelalmError(f"{manifest_path}: {path} must be a finite number >= 0, got {short_repr(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise EdgelalmError(f"{manifest_path}: {path} must be a string, got {short_repr(value)}")
        # JSON may escape a lone surrogate ("\udcff"); a tokenizer or a terminal cannot take it.
        check_unicode_text(value, f"{manifest_path}: {path}")
        return value
    raise TypeError(f"manifest field {path} has a type the reader does not know: {hint}")
