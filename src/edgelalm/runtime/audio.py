"""Audio file -> 16 kHz mono float32, the input every later stage expects. Torch-free."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import stat
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import soundfile
import soxr

from edgelalm.checks import is_real_number
from edgelalm.errors import EdgelalmError
from edgelalm.runtime.flac import flac_stream_seconds
from edgelalm.runtime.mpeg import MpegLength, id3v2_bytes, mpeg_length
from edgelalm.runtime.ogg import OggLinks, ogg_links


def _check_file(path: Path) -> None:
    if "\0" in str(path):  # a TSV's or a caller's text: os.stat raised ValueError
        raise EdgelalmError(f"cannot read audio from {path}: a file name cannot hold a NUL character")
    try:
        status = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise EdgelalmError(f"{path} is a symbolic link to nothing") from None
        if str(path) == "-":  # `edgelalm run -` reads standard input; this is a file named -
            raise EdgelalmError("audio file not found: ./- (a file named -)") from None
        raise EdgelalmError(f"audio file not found: {path}") from None
    except OSError as error:  # a loop of links, a name too long, no permission
        if error.errno == errno.ELOOP:
            raise EdgelalmError(f"{path} is a loop of symbolic links") from None
        raise EdgelalmError(f"cannot read audio from {path}: {error.strerror or error}") from None
    if stat.S_ISFIFO(status.st_mode):  # `run <(sox ...)`, /dev/stdin from a pipe: read once, cannot seek
        raise EdgelalmError(f"{path} is a pipe; give it as - to read it from standard input (... | edgelalm run -)")
    if not stat.S_ISREG(status.st_mode):
        raise EdgelalmError(f"not an audio file: {path}")
    try:  # libsndfile says "System error." of a file it may not read (/proc/self/mem: Input/output error)
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # /proc/kmsg waits for a line
        try:
            holds_more = status.st_size == 0 and _reads_a_byte(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise EdgelalmError(f"cannot read audio from {path}: {error.strerror or error}") from None
    if holds_more:  # /proc and /sys files say they are empty and are not
        raise EdgelalmError(f"not an audio file: {path} (a file of the system's, not of audio)")
    if status.st_size == 0:
        raise EdgelalmError(f"{path} is empty")


def _reads_a_byte(descriptor: int) -> bool:
    try:
        return bool(os.read(descriptor, 1))
    except BlockingIOError:  # a file of the system's that has nothing yet
        return True


@dataclass(frozen=True)
class AudioFileInfo:
    path: Path
    frames: int
    samplerate: int
    channels: int
    # Frames past `frames` that libsndfile will not read (an MP3 whose length header counts less,
    # Ogg files joined), and why, with the way to read them all.
    unread_frames: int = 0
    unread_cause: str = ""
    # Whether `frames` is a count the file states (a header), so that decoding fewer means a cut
    # file; an MP3 without a length header is counted by its frames instead.
    stated_length: bool = True
    # Why fewer frames than stated could be decoded: an Ogg file that does not end inside a page
    # is whole, and its count is its last page's position, so what is missing was damaged inside.
    shortfall_cause: str = "truncated?"
    # What the file's structure shows libsndfile does not read (an Ogg file cut before its last
    # page, WAV files joined), said once it is read.
    structure_note: str = ""

    def resampled_length(self, sampling_rate: int) -> int:
        """Samples after resampling to `sampling_rate` (soxr gives the rounded product)."""
        return round(self.frames * sampling_rate / self.samplerate)


# libsndfile's subtypes that store samples as floats, which may go past full scale: integer PCM
# cannot, and the lossy codecs' small overshoots are no mistake of the file's.
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})

# Samples read at a time, over every channel: 2 s at 16 kHz mono, a few hundred KB. An MP3 is
# read two MPEG-1 frames at a time (0.05 s at 44.1 kHz): a read that fails in a damaged stretch
# gives none of the block it was decoding (0.74 s of good audio was lost before the damage).
_BLOCK_VALUES = 1 << 15
_MP3_BLOCK_FRAMES = 2 * 1152


def _block_frames(stream: soundfile.SoundFile) -> int:
    if stream.format == "MP3":
        return _MP3_BLOCK_FRAMES
    return max(1, _BLOCK_VALUES // stream.channels)


# Below this rate audio holds no speech (telephone lines sample at 8000), and resampling to 16 kHz
# multiplies the samples by 16000 / rate: a header or an argument saying 1 Hz made 80 KB of
# samples into hours of audio and gigabytes.
MIN_SAMPLING_RATE = 1000
# The most a WAV or AIFF header that libsndfile reads can say; past it (1e15 as an argument) soxr
# did not return, or raised its own TypeError (10**400).
MAX_SAMPLING_RATE = 2**31 - 1


def _check_rate(rate: float, source: str) -> None:
    if not is_real_number(rate) or not 0 < rate < math.inf:
        raise EdgelalmError(f"{source}: the sampling rate must be a positive number of samples a second, not {rate!r}")
    if rate < MIN_SAMPLING_RATE:
        raise EdgelalmError(
            f"{source}: a sampling rate of {rate:g} Hz holds no speech; edgelalm reads audio sampled at "
            f"{MIN_SAMPLING_RATE} Hz or more"
        )
    if rate > MAX_SAMPLING_RATE:
        shown = f"{rate:g}" if rate < 1e300 else "more than 1e300"  # an int past a float's range
        raise EdgelalmError(
            f"{source}: a sampling rate of {shown} Hz is past any audio's; edgelalm reads rates up to "
            f"{MAX_SAMPLING_RATE} Hz"
        )


def _reason(error: Exception) -> str:
    """libsndfile's own words, without soundfile's "Error opening b'...'" (the path, as bytes).
    Its "File does not exist or is not a regular file" also answers a file that exists but whose
    decoder gave up at once (an MP3 cut after its first frame); the file was checked before."""
    reason = str(getattr(error, "error_string", None) or error)
    if reason.startswith("File does not exist or is not a regular file"):
        return "its decoder found no audio it could read (a damaged or cut file?)"
    if "SF_INFO struct incomplete" in reason:  # what libsndfile says of a header's impossible numbers
        return "its header declares no usable format (a sampling rate or channel count of 0?)"
    return reason


_Walk = TypeVar("_Walk")

# Formats libsndfile does not read, by their first bytes (past any ID3v2 tag): what phones and
# browsers record (an iPhone's voice memo is M4A, a browser's MediaRecorder WebM), and a file
# extension for the advice to convert it. libsndfile only says "Format not recognised".
_UNREAD_FORMATS: tuple[tuple[Callable[[bytes], bool], str, str], ...] = (
    (lambda head: head[4:8] == b"ftyp", "an MP4 file (M4A, 3GP, MOV: AAC, ALAC or AMR audio)", "m4a"),
    (lambda head: head[:4] == b"\x1a\x45\xdf\xa3", "a WebM/Matroska file", "webm"),
    (lambda head: head[:5] == b"#!AMR", "an AMR voice recording", "amr"),
    (lambda head: head[:16] == bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"), "a WMA (ASF) file", "wma"),
    # ADTS: a 12-bit sync and MPEG layer 0, which no MP3 frame has (libsndfile reads those).
    (lambda head: len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0, "raw AAC audio (ADTS)", "aac"),
    (lambda head: head[:2] == b"\x0b\x77", "AC-3 audio", "ac3"),
)


def _unreadable_reason(path: Path, error: Exception) -> str:
    """Why `path` cannot be read: the format by its first bytes where it is one libsndfile does not
    read, with the way to convert it; else libsndfile's words."""
    with contextlib.suppress(OSError):
        with path.open("rb") as stream:
            tag_bytes = id3v2_bytes(stream.read(10))
            stream.seek(tag_bytes)
            head = stream.read(16)
            joined = _files_joined(stream, head)
        if tag_bytes and head[:4] == b"OggS":
            name = "an Ogg file behind an ID3 tag (libsndfile skips one only before MP3, FLAC and WAV)"
            return f"it is {name}; convert it first (`ffmpeg -i in.ogg out.flac`)"
        for matches, name, extension in _UNREAD_FORMATS:
            if matches(head):
                convert = f"ffmpeg -i in.{extension} out.flac"
                return f"it is {name}, which libsndfile does not read; convert it first (`{convert}`)"
        if joined:
            return f"{joined}, which libsndfile does not read"
    return _reason(error)


def _joined_note(path: Path) -> str:
    """The sentence for WAV or AIFF files joined with `cat` that libsndfile opens: it reads the first."""
    with contextlib.suppress(OSError), path.open("rb") as stream:
        joined = _files_joined(stream, stream.read(4))
        if joined:
            return f"{joined}, and libsndfile reads the first"
    return ""


def _files_joined(stream: BinaryIO, head: bytes) -> str:
    """What `stream` is where RIFF (WAV) or FORM (AIFF) files follow each other from its start
    (`head` its first bytes; each one's size says where the next starts), with how to join them;
    empty where it is one file."""
    if head[:4] != b"RIFF" and not (head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC")):
        return ""
    order, count, position = ("<I" if head[:4] == b"RIFF" else ">I"), 0, 0
    while count < 1000:
        stream.seek(position)
        header = stream.read(8)
        if len(header) < 8 or header[:4] != head[:4]:
            break
        count += 1
        size = struct.unpack(order, header[4:8])[0]
        position = _past_pad(stream, position + 8 + size, size, head[:4])
    if count < 2:
        return ""
    kind, extension = ("WAV", "wav") if head[:4] == b"RIFF" else ("AIFF", "aiff")
    return (
        f"it is {count} {kind} files one after another (joined with cat?; `sox a.{extension} b.{extension} "
        f"out.{extension}` joins them)"
    )


def _past_pad(stream: BinaryIO, end: int, size: int, next_file: bytes) -> int:
    """Where what follows a chunk of `size` bytes ending at `end` starts: past the pad byte an odd
    size asks for, unless the next of WAV or AIFF files joined (`next_file`, its first bytes) starts
    at `end` (its writer left the pad out)."""
    if not size % 2:
        return end
    stream.seek(end)
    return end if stream.read(len(next_file)) == next_file else end + 1


# libsndfile keeps a file's name in 1024 bytes: a longer one ("Supplied filename too long.", at
# 1024 "System error.") is opened through a short link to it (Linux allows 4095).
_LIBSNDFILE_NAME_BYTES = 1024


@contextlib.contextmanager
def _libsndfile_name(path: Path) -> Iterator[str | bytes]:
    """`path` as libsndfile opens it: soundfile encodes a str strictly, so a file name that is not
    UTF-8 (latin-1 bytes, kept by Python as surrogates) could not be opened; its bytes can. A file
    named `-` goes as `./-`: libsndfile reads `-` from standard input."""
    if os.name == "nt":
        yield ".\\-" if str(path) == "-" else str(path)
        return
    name = b"./-" if os.fsencode(path) == b"-" else os.fsencode(path)
    if len(name) < _LIBSNDFILE_NAME_BYTES:
        yield name
        return
    if not os.path.isdir("/proc/self/fd"):
        yield name  # libsndfile's own line says it
        return
    descriptor = os.open(path, os.O_RDONLY)  # whatever the path's absolute form, past 4095 bytes too
    try:
        with contextlib.ExitStack() as scratch:
            opened = f"/proc/self/fd/{descriptor}"
            try:  # a short link that keeps the extension: libsndfile knows an MP3 behind junk by it
                folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="edgelalm-audio-"))
                link = Path(folder) / f"audio{path.suffix if len(path.suffix) < 16 else ''}"
                link.symlink_to(opened)
                opened = str(link)
            except OSError:  # no writable temporary folder, or one that holds no links
                pass
            yield os.fsencode(opened)
    finally:
        os.close(descriptor)


def open_audio(path: Path) -> AudioFileInfo:
    """What `path`'s header says (no samples read): refuses what libsndfile cannot read."""
    _check_file(path)
    try:
        with _decoder_messages_muted(), _libsndfile_name(path) as name:
            info = soundfile.info(name)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise EdgelalmError(f"cannot read audio from {path}: {_unreadable_reason(path, error)}") from None
    if info.frames <= 0:
        raise EdgelalmError(f"{path} holds no audio samples{_unfinished_header_hint(path)}")
    _check_rate(info.samplerate, str(path))
    frames = _count_frames(path) if info.frames == _UNKNOWN_LENGTH else info.frames
    if frames == 0:
        raise EdgelalmError(f"{path} holds no audio samples")
    if info.format == "MP3" and (walked := _walked(mpeg_length, path, info.samplerate)) is not None:
        # libsndfile reads up to its own count; a count that was a guess gives way to the frames'.
        stated = walked.has_length_tag
        frames = frames if stated else min(frames, walked.frames)
        unread = walked.frames - frames if walked.frames - frames > _MP3_UNCOUNTED_FRAMES else 0
        cause = "its length header counts less: a VBR file without one, or MP3 files joined"
        return AudioFileInfo(
            path,
            frames,
            info.samplerate,
            info.channels,
            unread,
            f"{cause}; {_MP3_ADVICE}",
            stated_length=stated,
            structure_note=_no_mp3_note(walked),
        )
    if info.format == "OGG" and (links := _walked(ogg_links, path)) is not None:
        return _ogg_file(AudioFileInfo(path, frames, info.samplerate, info.channels), links)
    if info.format == "FLAC" and len(streams := _walked(flac_stream_seconds, path) or []) > 1:
        # libsndfile reads the first stream, then fails on the next one's header as on damage.
        cause = f"it is {len(streams)} FLAC files joined, and libsndfile reads the first"
        return _joined_parts(AudioFileInfo(path, frames, info.samplerate, info.channels), streams, cause)
    return AudioFileInfo(path, frames, info.samplerate, info.channels, structure_note=_joined_note(path))


def _walked(walker: Callable[..., _Walk | None], *arguments: Any) -> _Walk | None:
    """A walker's account of the file, or None where the file cannot be mapped (a file system that
    refuses mmap): then libsndfile's own count stands, as before the walkers."""
    try:
        return walker(*arguments)
    except OSError:
        return None


# The samples an MP3's frames hold beyond what its decoder gives: the encoder's delay and padding
# (LAME's 576 + 529 and up to a frame), which gapless decoding leaves out. More than that past
# libsndfile's count is audio it does not read.
_MP3_UNCOUNTED_FRAMES = 4096
_MP3_ADVICE = "`ffmpeg -i in.mp3 out.flac` reads it all"
# The least share of an MP3's bytes (past its ID3v2 tags) its frames hold: a whole or damaged
# file holds 47% or more (5000 zero bytes inside 4 KB of frames), a program named .mp3 10%.
_MP3_LEAST_FRAME_SHARE = 0.25


def _no_mp3_note(walked: MpegLength) -> str:
    """A sentence where few of the file's bytes are MPEG frames: libsndfile decodes the chance
    frames of a file that is no MP3 to a moment of silence, and the answer was empty."""
    share = walked.frame_bytes / max(walked.untagged_bytes, 1)
    if share >= _MP3_LEAST_FRAME_SHARE:
        return ""
    return f"only {share:.0%} of its bytes are MPEG audio frames (is it an MP3 file?)"


# Tools that play an Ogg file's links through, by codec (each checked on two joined files).
_OGG_ADVICE = {
    "vorbis": "`sox in.ogg out.flac` reads them all",
    "opus": "`opusdec in.opus out.wav` reads them all",
}


def _ogg_file(info: AudioFileInfo, links: OggLinks) -> AudioFileInfo:
    """`info` with what libsndfile leaves out of an Ogg file: every link past the first (files
    joined with `cat`), and the end of one cut short."""
    advice = _OGG_ADVICE.get(links.codec, "`ffmpeg -i in.ogg out.flac` reads them all")
    cause = f"it is {len(links.seconds)} Ogg files joined, and libsndfile reads the first; {advice}"
    cut = "it ends inside an Ogg page (truncated?)" if links.cut and len(links.seconds) == 1 else ""
    shortfall_cause = "truncated?" if links.cut else "damaged inside?"
    return _joined_parts(
        dataclasses.replace(info, structure_note=cut, shortfall_cause=shortfall_cause), links.seconds, cause
    )


def _joined_parts(info: AudioFileInfo, seconds: Sequence[float], cause: str) -> AudioFileInfo:
    """`info` where its file is parts of `seconds` each, joined, of which libsndfile reads the
    first: the rest unread, for `cause`."""
    unread = round(sum(seconds[1:]) * info.samplerate)
    return dataclasses.replace(info, unread_frames=unread, unread_cause=cause if unread else "")


# libsndfile's frame count for a file that does not say how long it is: a FLAC written into a pipe
# (sox, ffmpeg), whose header gives no total. Counted by reading it once (it was a MemoryError).
_UNKNOWN_LENGTH = 2**63 - 1


# Whether the decoders' own lines on stderr are dropped (`mute_decoder_messages`).
_muted = False


def mute_decoder_messages() -> None:
    """Drop what libsndfile's decoders write to stderr themselves while they open and read a file
    (libmpg123: `Note: Illegal Audio-MPEG-Header ... at offset 15948.`, `Warning: Xing stream size
    off ...`): the command line's stderr carries its own one-line warnings, which say what the
    damage means. For a process of its own (the command line): stderr's descriptor is pointed
    at /dev/null while a decoder runs, which would also hide another thread's lines."""
    global _muted
    _muted = True


@contextlib.contextmanager
def _decoder_messages_muted() -> Iterator[None]:
    if not _muted:
        yield
        return
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to quiet (started with stderr closed)
        saved = None
    if saved is None:
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[soundfile.SoundFile]:
    with _decoder_messages_muted(), _libsndfile_name(path) as name:
        stream = soundfile.SoundFile(name)
    with stream:
        yield stream


def _count_frames(path: Path) -> int:
    try:
        with _opened(path) as stream:
            return sum(len(samples) for samples in _blocks(stream, _block_frames(stream), []))
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise EdgelalmError(f"cannot read audio from {path}: {_reason(error)}") from None


# Reads in a row that fail and give nothing before the file counts as ended. An MP3 decoder
# resyncs after a damaged stretch, giving up 1 KB at a time (libmpg123's resync limit): a failed
# read for each KB of it, then audio again (after 3, the 1.5 s past 5 KB of zeros were lost).
_FAILED_READS_IN_A_ROW = 64


def _blocks(stream: soundfile.SoundFile, frames: int, errors: list[tuple[int, str]]) -> Iterator[np.ndarray]:
    """The stream's blocks of up to `frames` frames, float32 [n, channels], to its end: until a read
    gives nothing. A short read is no end (a decoder returns short reads at a damaged stretch and
    then more), and a read that fails keeps what it decoded: `errors` gets (frames before it,
    libsndfile's words) and reading goes on (a damaged FLAC lost everything decoded before)."""
    position = failed_in_a_row = 0
    while True:
        samples, error = _read_block(stream, frames)
        if error is not None:  # after the frames this read gave
            errors.append((position + len(samples), error))
        if len(samples):
            failed_in_a_row = 0
            position += len(samples)
            yield samples
        elif error is None or (failed_in_a_row := failed_in_a_row + 1) >= _FAILED_READS_IN_A_ROW:
            return


def _read_block(stream: soundfile.SoundFile, frames: int) -> tuple[np.ndarray, str | None]:
    """Up to `frames` frames and libsndfile's error for the read, if any. libsndfile is asked
    directly: soundfile's own read raises on an error and drops the frames decoded before it, and
    where the file does not say its length it first asks for the position, a seek that fails there
    ("Internal psf_fseek() failed")."""
    out = np.empty((frames, stream.channels), dtype=np.float32)
    with _decoder_messages_muted():
        read = soundfile._snd.sf_readf_float(stream._file, soundfile._ffi.cast("float *", out.ctypes.data), frames)
    code = soundfile._snd.sf_error(stream._file)
    error = soundfile._ffi.string(soundfile._snd.sf_error_number(code)).decode(errors="replace") if code else None
    return out[:read], error


def audio_seconds(path: Path) -> float:
    """Duration of `path` from its header alone (no samples read): for listing many files."""
    info = open_audio(path)
    return info.frames / info.samplerate


def stream_audio(info: AudioFileInfo, sampling_rate: int, warnings: list[str] | None = None) -> Iterator[np.ndarray]:
    """`info.path` as consecutive mono float32 chunks at `sampling_rate`, read block by block, so
    memory stays flat with the file's length. Once the file is read, `warnings` gets a
    sentence like `loudness_warning`'s if a float file's samples went past full scale (not a
    lossy file's: MP3, Vorbis and Opus decoders overshoot 1.0 a little on loud audio), and one
    where part of it could not be decoded."""
    resampler = (
        soxr.ResampleStream(info.samplerate, sampling_rate, 1, dtype="float32", quality="HQ")
        if info.samplerate != sampling_rate
        else None
    )
    peak = 0.0
    cancelled = False
    frames_read = 0
    errors: list[tuple[int, str]] = []
    try:
        with _opened(info.path) as stream:
            stores_floats = stream.subtype in _FLOAT_SUBTYPES
            for samples in _blocks(stream, _block_frames(stream), errors):
                frames_read += len(samples)
                mono, block_cancelled = _mono(samples, str(info.path))
                cancelled = cancelled or block_cancelled
                if stores_floats:
                    peak = max(peak, _peak(samples))
                chunk = resampler.resample_chunk(mono, last=False) if resampler else mono
                if len(chunk):
                    yield chunk
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise EdgelalmError(f"cannot read audio from {info.path}: {_reason(error)}") from None
    if errors and not frames_read:  # libsndfile's words are "Unspecified internal error." for an MP3
        raise EdgelalmError(f"cannot read audio from {info.path}: {info.structure_note or errors[0][1]}")
    if resampler and len(tail := resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)):
        yield tail
    notes = [
        _past_full_scale(peak, str(info.path), "integer PCM values stored as floats are that much too loud"),
        _damage_warning(info, errors, frames_read) if _damaged(info, errors) else _shortfall_warning(info, frames_read),
        _unread_warning(info),
        None if errors else _structure_warning(info, frames_read),
        _cancelled_warning(str(info.path)) if cancelled else None,
    ]
    if warnings is not None:
        warnings.extend(note for note in notes if note)


def _damaged(info: AudioFileInfo, errors: list[tuple[int, str]]) -> bool:
    """Whether a read failed before the end of what libsndfile can read (past it, in files joined,
    the failure is the next file's header, which `_unread_warning` says)."""
    return bool(errors) and not (info.unread_frames and errors[0][0] >= info.frames)


def _damage_warning(info: AudioFileInfo, errors: list[tuple[int, str]], frames_read: int) -> str:
    """A sentence where the decoder failed part-way (a damaged or cut FLAC, MP3 or Ogg file)."""
    position, reason = errors[0]
    return (
        f"{info.path}: damaged from {position / info.samplerate:.2f} s ({reason}); using the "
        f"{frames_read / info.samplerate:.2f} s that could be decoded"
    )


def _unread_warning(info: AudioFileInfo) -> str | None:
    if not info.unread_frames:
        return None
    return (
        f"{info.path}: only the first {info.frames / info.samplerate:.2f} s of its "
        f"{(info.frames + info.unread_frames) / info.samplerate:.2f} s can be read ({info.unread_cause})"
    )


def _structure_warning(info: AudioFileInfo, frames_read: int) -> str | None:
    if not info.structure_note:
        return None
    return f"{info.path}: {info.structure_note}; using the {frames_read / info.samplerate:.2f} s read"


def _shortfall_warning(info: AudioFileInfo, frames_read: int) -> str | None:
    """A sentence where fewer frames could be decoded than the header counts: a cut MP3 whose Xing
    header gives the whole length (libsndfile's count is the header's; whole files decode to it
    exactly, every format libsndfile reads)."""
    if not info.stated_length or info.frames - frames_read <= info.samplerate // 100:  # 10 ms
        return None
    return (
        f"{info.path}: the header declares {info.frames / info.samplerate:.2f} s of audio but only "
        f"{frames_read / info.samplerate:.2f} s could be decoded ({info.shortfall_cause}); using what is there"
    )


def read_audio(path: Path, sampling_rate: int) -> np.ndarray:
    """Samples of `path` (wav, flac, ogg, ... whatever libsndfile reads), averaged to mono and
    resampled with soxr to `sampling_rate`: `stream_audio`'s chunks, joined."""
    chunks = list(stream_audio(open_audio(path), sampling_rate))
    if not chunks:
        raise EdgelalmError(f"{path}: no audio could be decoded from it (truncated?)")
    return np.concatenate(chunks)


def samples_in_memory(audio: np.ndarray | Sequence[float], source: str = "the audio") -> np.ndarray:
    """Samples handed to `Runtime.run` -> float32, [frames] or [frames, channels]. Float samples
    (and lists of numbers, which declare no width) are taken as they are; an integer PCM array
    (int8, int16, int32, uint8) is scaled to [-1, 1) as libsndfile reads it from a file; a 64-bit
    one is refused (no file stores such PCM: it is numpy's default integer, which read as 64-bit
    PCM was silence)."""
    try:
        samples = np.asarray(audio) if isinstance(audio, np.ndarray) else np.asarray(audio, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise EdgelalmError(f"{source}: samples must be numbers ({error})") from None
    if samples.dtype.kind in "iu":
        if samples.dtype.itemsize > 4:  # numpy's default integer: most likely a list of int16 values
            raise EdgelalmError(
                f"{source}: samples of {samples.dtype} are no PCM width; integer PCM goes in int16 (16-bit), int32, "
                "int8 or uint8 arrays (e.g. samples.astype(np.int16)), else pass floats in [-1, 1]"
            )
        samples = pcm_to_float(samples)
    elif samples.dtype.kind != "f":
        raise EdgelalmError(f"{source}: samples must be float or integer PCM, not {samples.dtype}")
    if samples.ndim == 2 and samples.shape[1] > samples.shape[0]:
        # Too short to encode either way; a channels-first array is the likely mistake.
        raise EdgelalmError(
            f"{source}: shaped {samples.shape}, that is {samples.shape[0]} frames of {samples.shape[1]} channels; "
            "samples go [frames, channels] (transpose channels-first audio)"
        )
    return samples.astype(np.float32, copy=False)


def loudness_warning(samples: np.ndarray, source: str = "the audio") -> str | None:
    """A sentence when float samples go past full scale: integer PCM in a float array (or a list of
    integers) reads 32768 times too loud, and the model hears noise."""
    return _past_full_scale(_peak(samples), source, "integer PCM goes in an integer array, int16 for 16-bit")


def _peak(samples: np.ndarray) -> float:
    return float(np.abs(samples).max()) if samples.size else 0.0


# Float samples past full scale by this factor (6 dB) are a mistake: integer PCM stored or passed
# as floats reaches hundreds or more. A float mix a little past 1.0 (1.12, as an editor leaves
# it) is heard as it is, no warning.
_PAST_FULL_SCALE = 2.0


def _past_full_scale(peak: float, source: str, likely_cause: str) -> str | None:
    if not peak > _PAST_FULL_SCALE:  # NaN is refused, with its own message
        return None
    return f"{source}: samples reach {peak:.4g}, past full scale (float samples are read in [-1, 1]; {likely_cause})"


# Channels whose average keeps less than this share of their energy cancel each other out: one
# of them wired with its polarity inverted (a mono microphone on a stereo input), whose average
# is silence (an empty answer, with no warning). Below _SILENT_ENERGY (-80 dBFS) a block is
# silence either way.
_CANCELLED_ENERGY = 1e-3
_SILENT_ENERGY = 1e-8


def _mono(samples: np.ndarray, source: str) -> tuple[np.ndarray, bool]:
    """[frames, channels] (or [frames]) float32 -> [frames] float32, refusing NaN and infinities,
    and whether the channels cancelled out (then the loudest one is taken instead of the average).
    Channels are averaged in float64 (float32 sums of samples near its largest value overflowed to
    inf), and checked after: a NaN or an infinity in any channel carries into the average."""
    mono = samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float64)
    if not np.isfinite(mono).all():
        raise EdgelalmError(f"{source} contains NaN or infinite samples")
    cancelled = False
    if samples.ndim == 2 and samples.shape[1] > 1 and len(samples):
        # Sums of squares by einsum (a fraction of the average's own cost); float32 sums past its
        # range (samples near its largest value) are no cancellation to judge.
        channel_energy = np.einsum("ij,ij->j", samples, samples) / len(samples)
        mean_energy = float(channel_energy.mean())
        mono_energy = float(np.einsum("i,i->", mono, mono)) / len(mono)
        if _SILENT_ENERGY < mean_energy < math.inf and mono_energy < _CANCELLED_ENERGY * mean_energy:
            mono, cancelled = samples[:, int(channel_energy.argmax())], True
    return mono.astype(np.float32, copy=False), cancelled


def _cancelled_warning(source: str) -> str:
    return (
        f"{source}: its channels cancel each other out when averaged to mono (one with its polarity inverted?); "
        "the loudest channel was used where they did"
    )


def prepare_samples(
    samples: np.ndarray,
    file_rate: float,
    sampling_rate: int,
    source: str = "the audio",
    warnings: list[str] | None = None,
) -> np.ndarray:
    """[frames] or [frames, channels] at `file_rate` -> mono float32 at `sampling_rate`; `warnings`
    gets a sentence where the channels cancelled out."""
    _check_rate(file_rate, source)
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim not in (1, 2):
        raise EdgelalmError(f"{source}: expected samples shaped [frames] or [frames, channels], got {samples.shape}")
    if samples.size == 0:
        raise EdgelalmError(f"{source} holds no audio samples")
    samples, cancelled = _mono(samples, source)
    if cancelled and warnings is not None:
        warnings.append(_cancelled_warning(source))
    if file_rate != sampling_rate:
        samples = soxr.resample(samples, file_rate, sampling_rate, quality="HQ").astype(np.float32)
    return samples


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM -> float in [-1, 1): signed by 2^(bits-1); unsigned (8-bit WAV) about its midpoint."""
    full_scale = float(2 ** (8 * samples.dtype.itemsize - 1))
    offset = full_scale if samples.dtype.kind == "u" else 0.0
    return (samples.astype(np.float64) - offset) / full_scale


def header_warning(info: AudioFileInfo) -> str | None:
    """A sentence when `info.path` is a WAV whose header's data size disagrees with the file, else
    None. libsndfile reads what the header declares and the file holds, silently (its frame count,
    in `info`, is that): a size larger than the file (half-downloaded or half-written), or smaller,
    with audio after the data chunk that is no chunk of its own (a header not rewritten when the
    recording stopped)."""
    data = _wav_data(info.path)
    if data is None:
        return _cut_container_warning(info)
    declared = data.frames(data.declared_bytes)
    if declared > info.frames:
        return _cut_warning_of(info, data.declared_bytes, declared / info.samplerate)
    unread_seconds = data.frames(data.unexplained_bytes) / info.samplerate
    if unread_seconds >= 0.1:
        return (
            f"{info.path}: the header declares {info.frames / info.samplerate:.2f} s of audio but about "
            f"{unread_seconds:.2f} s more follow it (a header not updated when the recording stopped?); using the "
            f"declared {info.frames / info.samplerate:.2f} s ({_REWRITE_ADVICE})"
        )
    return None


def _cut_container_warning(info: AudioFileInfo) -> str | None:
    """The sentence `header_warning` gives a cut WAV for a cut AIFF, AU, Wave64 or RF64 file, whose
    header also says how many bytes of audio follow it (libsndfile reads what is there, silently)."""
    declared = _declared_audio(info.path)
    if declared is None:
        return None
    declared_bytes, start = declared
    present_bytes = info.path.stat().st_size - start
    if present_bytes <= 0 or declared_bytes <= present_bytes:
        return None
    return _cut_warning_of(info, declared_bytes, info.frames / info.samplerate * declared_bytes / present_bytes)


def _cut_warning_of(info: AudioFileInfo, declared_bytes: int, declared_seconds: float) -> str:
    """The sentence for a file whose header declares more audio than it holds: cut, or written into
    a pipe, where the writer could not go back to fill in the size it left as a placeholder."""
    held = f"{info.frames / info.samplerate:.2f} s"
    if declared_bytes in _PLACEHOLDER_SIZES:
        return (
            f"{info.path}: its header's data size is a placeholder a writer leaves in a pipe "
            f"(0x{declared_bytes:X}, never filled in); using the {held} the file holds"
        )
    return (
        f"{info.path}: the header declares {declared_seconds:.2f} s of audio but the file holds {held} "
        "(truncated?); using what is there"
    )


# Wave64's chunks are named by GUIDs; their first four bytes say which.
_W64_RIFF = bytes.fromhex("726966662e91cf11a5d628db04c10000")


def _declared_audio(path: Path) -> tuple[int, int] | None:
    """(bytes of audio the header declares, where they start) in an AIFF/AIFC, AU, Wave64 or RF64
    file; None for any other, or a header that says no size (AU's unknown size, an RF64 without
    its ds64 chunk)."""
    with path.open("rb") as stream:
        head = stream.read(16)
        if head[:4] == b".snd" and len(head) >= 12:  # AU: the data's offset and size
            start, size = struct.unpack(">II", head[4:12])
            return None if size == 0xFFFFFFFF else (size, start)
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            return _chunk_data(stream, 12, b"SSND", ">I", 8, skip=8)  # SSND: offset and block size first
        if head == _W64_RIFF:
            return _chunk_data(stream, 40, b"data", "<Q", 24, align=8)
        if head[:4] == b"RF64" and head[8:12] == b"WAVE":
            stream.seek(12)
            ds64 = stream.read(36)
            if ds64[:4] != b"ds64" or len(ds64) < 28:
                return None
            found = _chunk_data(stream, 12, b"data", "<I", 8)
            return None if found is None else (struct.unpack("<Q", ds64[16:24])[0], found[1])
    return None


def _chunk_data(
    stream: BinaryIO, position: int, name: bytes, size_format: str, header_bytes: int, skip: int = 0, align: int = 2
) -> tuple[int, int] | None:
    """(declared size, start) of the first chunk called `name` from `position`: chunks of a
    `header_bytes` header whose size field (`size_format`, after the name) counts the body
    (Wave64's counts its header too); `skip` bytes of the body are no audio."""
    counts_header = header_bytes == 24
    for _ in range(1000):
        stream.seek(position)
        header = stream.read(header_bytes)
        if len(header) < header_bytes:
            return None
        size = struct.unpack(size_format, header[header_bytes - struct.calcsize(size_format) :])[0]
        body = size - header_bytes if counts_header else size
        if header[:4] == name:
            return body - skip, position + header_bytes + skip
        position += header_bytes + body + (-(header_bytes + body) % align if counts_header else body % align)
    return None


_REWRITE_ADVICE = "`sox --ignore-length in.wav out.wav` rewrites the header to hold them all"
# Data sizes writers put in a header they cannot go back to fill in (writing into a pipe): sox's
# and arecord's in a WAV, sox's in an AIFF (its SSND chunk's 0x7F000008, less the chunk's offset
# and block size). ffmpeg's 0xFFFFFFFF in a WAV libsndfile reads as "to the end".
_PLACEHOLDER_SIZES = frozenset({0x7FFFF000, 0x80000000, 0x7F000000})


def _unfinished_header_hint(path: Path) -> str:
    """Why libsndfile found no samples, where a WAV's header declares none and audio follows it."""
    data = _wav_data(path)
    if data is None or data.declared_bytes or not data.unexplained_bytes:
        return ""
    return (
        f": its header declares no audio, but {data.unexplained_bytes} bytes follow it (a recording whose header "
        f"was never finished?); {_REWRITE_ADVICE}"
    )


@dataclass(frozen=True)
class _WavData:
    declared_bytes: int  # the data chunk's size, as the header says
    block_align: int  # bytes a block: one frame in PCM, float, A-law and mu-law
    frames_per_block: int  # 1, or hundreds in ADPCM and GSM 6.10 (their fmt chunk says)
    unexplained_bytes: int  # bytes after the declared data that are no chunk: audio the size leaves out
    start: int  # where the data chunk's samples start in the file

    def frames(self, size: int) -> int:
        """The frames `size` bytes of the data hold (whole blocks)."""
        return size // self.block_align * self.frames_per_block


# WAVE format tags whose block is one frame: PCM, IEEE float, A-law, mu-law, and the extensible
# header (whose subformats are these); any other (ADPCM, GSM 6.10) says its frames a block.
_FRAME_BLOCK_FORMATS = frozenset({0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE})


def _wav_data(path: Path) -> _WavData | None:
    """The RIFF/WAVE header's data chunk; None for anything else (RF64, streams written with a
    placeholder size, files too short to tell)."""
    with path.open("rb") as stream:
        file_size = os.fstat(stream.fileno()).st_size
        if stream.read(4) != b"RIFF" or len(stream.read(4)) != 4 or stream.read(4) != b"WAVE":
            return None
        block_align = frames_per_block = None
        while header := stream.read(8):
            if len(header) < 8:
                return None
            chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"fmt ":
                body = stream.read(size + size % 2)
                if len(body) < 14:
                    return None
                format_tag, block_align = struct.unpack("<H", body[:2])[0], struct.unpack("<H", body[12:14])[0]
                if format_tag in _FRAME_BLOCK_FORMATS:
                    frames_per_block = 1
                    if len(body) >= 16:  # a frame as libsndfile takes it, whatever nBlockAlign says
                        channels, bits = struct.unpack("<HxxxxxxxxxxH", body[2:16])
                        block_align = channels * -(-bits // 8)
                elif len(body) >= 20:  # cbSize, then wSamplesPerBlock
                    frames_per_block = struct.unpack("<H", body[18:20])[0]
            elif chunk_id == b"data":
                if not block_align or not frames_per_block or size == 0xFFFFFFFF:
                    return None
                start = stream.tell()
                end = _end_of_chunks(stream, _past_pad(stream, start + size, size, b"RIFF"), file_size)
                return _WavData(size, block_align, frames_per_block, max(0, file_size - end), start)
            else:
                stream.seek(size + size % 2, 1)
    return None


# The most a RIFF size field counts: a WAV stream past it cannot say how long it is.
_MAX_RIFF_BYTES = 0xFFFFFFFF


def check_wav_stream_size(first_bytes: bytes, size: int, source: str) -> None:
    """A RIFF stream (its first bytes) of `size` bytes past 4 GiB, which no WAV header can count,
    refused in one line: checked as a pipe is saved, not after gigabytes of it fill $TMPDIR."""
    if first_bytes[:4] == b"RIFF" and size - 8 > _MAX_RIFF_BYTES:
        raise EdgelalmError(
            f"{source} holds more than {size / 2**30:.1f} GiB of WAV, more than a WAV header can count (4 GiB); "
            "pipe FLAC instead (sox ... -t flac -, ffmpeg ... -f flac -)"
        )


# libsndfile's "Format not recognised" (SF_ERR_UNRECOGNISED_FORMAT).
_UNRECOGNISED_FORMAT = 1
# How much of a stream libsndfile is given to recognise its format by: every format it reads says
# what it is in its first bytes (past an ID3v2 tag, which may hold megabytes of cover art).
_RECOGNITION_BYTES = 1 << 20


def recognition_point(first_bytes: bytes) -> int:
    """How many bytes of a stream starting with `first_bytes` (10 or more) to save before
    `refuse_unrecognised` can judge it."""
    return id3v2_bytes(first_bytes[:10]) + _RECOGNITION_BYTES


def refuse_unrecognised(path: Path, source: str) -> None:
    """One line where the start of a stream being saved at `path` is no format libsndfile reads:
    checked as a pipe is saved (`run - < /dev/zero` filled $TMPDIR before it was refused)."""
    try:
        with _decoder_messages_muted(), _libsndfile_name(path) as name:
            soundfile.info(name)
    except soundfile.LibsndfileError as error:
        if error.code == _UNRECOGNISED_FORMAT:
            raise EdgelalmError(f"cannot read audio from {source}: {_unreadable_reason(path, error)}") from None
    except (RuntimeError, TypeError, ValueError):  # anything else is judged when the whole is there
        pass


def finish_streamed_wav_header(path: Path, source: str) -> bool:
    """Give a WAV written into a pipe the sizes its writer could not go back and fill in, so that
    it is read to its end: a data size of 0, past what follows (sox writes 0x7FFFF000, arecord
    0x80000000), or short of audio that follows it (the same placeholder on a longer stream)
    becomes what follows the header, in whole frames. 0xFFFFFFFF (ffmpeg's) libsndfile reads to the
    end itself. Only for a pipe's bytes saved to a file (`run -`): there a placeholder and a writer
    that stopped early look the same, and so do a writer's pad byte and one more 8-bit frame.
    Whether the header was changed; anything but such a WAV is left as it is. A RIFF stream past
    4 GiB, which no WAV header can count, is refused."""
    with path.open("rb") as stream:
        first_bytes = stream.read(4)
    file_size = path.stat().st_size
    check_wav_stream_size(first_bytes, file_size, source)
    data = _wav_data(path)
    if data is None or not (data.declared_bytes > file_size - data.start or data.unexplained_bytes):
        return False
    following = file_size - data.start
    with path.open("r+b") as stream:
        stream.seek(4)
        stream.write(struct.pack("<I", file_size - 8))
        stream.seek(data.start - 4)
        stream.write(struct.pack("<I", following - following % data.block_align))
    return True


_TRAILING_TAGS = (b"ID3", b"TAG")


def _end_of_chunks(stream: BinaryIO, position: int, file_size: int) -> int:
    """Where the well-formed chunks from `position` end (a LIST or id3 chunk after the data is
    common): each a four-character printable id and a size inside the file. An ID3 tag written
    after the RIFF chunks as it is (ID3v2 or ID3v1, by tagging tools) explains the rest."""
    while position + 8 <= file_size:
        stream.seek(position)
        header = stream.read(8)
        if header[:3] in _TRAILING_TAGS or header[:4] == b"RIFF":  # a tag, or WAV files joined (_joined_note)
            return file_size
        chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
        if not all(32 <= byte < 127 for byte in chunk_id) or position + 8 + size > file_size:
            break
        position += 8 + size + size % 2
    return min(position, file_size)
