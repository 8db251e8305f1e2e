"""Audio file -> 16 kHz mono float32, the input every later stage expects. Torch-free."""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from edgelalm.checks import is_real_number
from edgelalm.errors import EdgelalmError


def _check_file(path: Path) -> None:
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
    if not stat.S_ISREG(status.st_mode):
        raise EdgelalmError(f"not an audio file: {path}")
    if status.st_size == 0:
        raise EdgelalmError(f"{path} is empty")


@dataclass(frozen=True)
class AudioFileInfo:
    path: Path
    frames: int
    samplerate: int
    channels: int

    def resampled_length(self, sampling_rate: int) -> int:
        """Samples after resampling to `sampling_rate` (soxr gives the rounded product)."""
        return round(self.frames * sampling_rate / self.samplerate)


# libsndfile's subtypes that store samples as floats, which may go past full scale: integer PCM
# cannot, and the lossy codecs' small overshoots are no mistake of the file's.
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})

# Samples per channel read at a time: a few MB whatever the rate and channel count.
_BLOCK_VALUES = 1 << 20

# Below this rate audio holds no speech (telephone lines sample at 8000), and resampling to 16 kHz
# multiplies the samples by 16000 / rate: a header or an argument saying 1 Hz made 80 KB of
# samples into hours of audio and gigabytes.
MIN_SAMPLING_RATE = 1000


def _check_rate(rate: float, source: str) -> None:
    if not is_real_number(rate) or not 0 < rate < math.inf:
        raise EdgelalmError(f"{source}: the sampling rate must be a positive number of samples a second, not {rate!r}")
    if rate < MIN_SAMPLING_RATE:
        raise EdgelalmError(
            f"{source}: a sampling rate of {rate:g} Hz holds no speech; edgelalm reads audio sampled at "
            f"{MIN_SAMPLING_RATE} Hz or more"
        )


def _reason(error: Exception) -> str:
    """libsndfile's own words, without soundfile's "Error opening b'...'" (the path, as bytes)."""
    return str(getattr(error, "error_string", None) or error)


def _native_path(path: Path) -> str | bytes:
    """`path` as libsndfile opens it: soundfile encodes a str strictly, so a file name that is not
    UTF-8 (latin-1 bytes, kept by Python as surrogates) could not be opened; its bytes can. A file
    named `-` goes as `./-`: libsndfile reads `-` from standard input."""
    if os.name == "nt":
        return ".\\-" if str(path) == "-" else str(path)
    return b"./-" if os.fsencode(path) == b"-" else os.fsencode(path)


def open_audio(path: Path) -> AudioFileInfo:
    """What `path`'s header says (no samples read): refuses what libsndfile cannot read."""
    _check_file(path)
    try:
        info = soundfile.info(_native_path(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise EdgelalmError(f"cannot read audio from {path}: {_reason(error)}") from None
    if info.frames <= 0:
        raise EdgelalmError(f"{path} holds no audio samples{_unfinished_header_hint(path)}")
    _check_rate(info.samplerate, str(path))
    return AudioFileInfo(path, info.frames, info.samplerate, info.channels)


def audio_seconds(path: Path) -> float:
    """Duration of `path` from its header alone (no samples read): for listing many files."""
    info = open_audio(path)
    return info.frames / info.samplerate


def stream_audio(info: AudioFileInfo, sampling_rate: int, warnings: list[str] | None = None) -> Iterator[np.ndarray]:
    """`info.path` as consecutive mono float32 chunks at `sampling_rate`, read block by block, so
    memory stays flat with the file's length. The chunks join to exactly what `read_audio` returns
    (soxr's stream resampler equals its one-shot one). Once the file is read, `warnings` gets a
    sentence like `loudness_warning`'s if a float file's samples went past full scale (not a
    lossy file's: MP3, Vorbis and Opus decoders overshoot 1.0 a little on loud audio)."""
    resampler = (
        soxr.ResampleStream(info.samplerate, sampling_rate, 1, dtype="float32", quality="HQ")
        if info.samplerate != sampling_rate
        else None
    )
    block = max(1, _BLOCK_VALUES // info.channels)
    peak = 0.0
    try:
        with soundfile.SoundFile(_native_path(info.path)) as stream:
            stores_floats = stream.subtype in _FLOAT_SUBTYPES
            while True:
                samples = stream.read(block, dtype="float32", always_2d=True)
                last = len(samples) < block
                mono = _mono(samples, str(info.path))
                if stores_floats:
                    peak = max(peak, _peak(samples))
                chunk = resampler.resample_chunk(mono, last=last) if resampler else mono
                if len(chunk):
                    yield chunk
                if last:
                    break
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise EdgelalmError(f"cannot read audio from {info.path}: {_reason(error)}") from None
    note = _past_full_scale(peak, str(info.path), "integer PCM values stored as floats are that much too loud")
    if note and warnings is not None:
        warnings.append(note)


def read_audio(path: Path, sampling_rate: int) -> np.ndarray:
    """Samples of `path` (wav, flac, ogg, ... whatever libsndfile reads), averaged to mono and
    resampled with soxr to `sampling_rate`."""
    _check_file(path)
    try:
        samples, file_rate = soundfile.read(_native_path(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise EdgelalmError(f"cannot read audio from {path}: {_reason(error)}") from None
    return prepare_samples(samples, file_rate, sampling_rate, str(path))


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
                f"{source}: samples of {samples.dtype} are no PCM width; integer PCM goes in int16 (16-bit), int32 "
                "or uint8 arrays (e.g. samples.astype(np.int16)), else pass floats in [-1, 1]"
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


def _past_full_scale(peak: float, source: str, likely_cause: str) -> str | None:
    if not peak > 1.0:  # NaN is refused, with its own message
        return None
    return f"{source}: samples reach {peak:.4g}, past full scale (float samples are read in [-1, 1]; {likely_cause})"


def _mono(samples: np.ndarray, source: str) -> np.ndarray:
    """[frames, channels] (or [frames]) float32 -> [frames] float32, refusing NaN and infinities.
    Channels are averaged in float64 (float32 sums of samples near its largest value overflowed to
    inf), and checked after: a NaN or an infinity in any channel carries into the average."""
    mono = samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float64)
    if not np.isfinite(mono).all():
        raise EdgelalmError(f"{source} contains NaN or infinite samples")
    return mono.astype(np.float32, copy=False)


def prepare_samples(samples: np.ndarray, file_rate: float, sampling_rate: int, source: str = "the audio") -> np.ndarray:
    """[frames] or [frames, channels] at `file_rate` -> mono float32 at `sampling_rate`."""
    _check_rate(file_rate, source)
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim not in (1, 2):
        raise EdgelalmError(f"{source}: expected samples shaped [frames] or [frames, channels], got {samples.shape}")
    if samples.size == 0:
        raise EdgelalmError(f"{source} holds no audio samples")
    samples = _mono(samples, source)
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
        return None
    declared = data.declared_bytes // data.block_align
    if declared > info.frames:
        return (
            f"{info.path}: the header declares {declared / info.samplerate:.2f} s of audio but the file holds "
            f"{info.frames / info.samplerate:.2f} s (truncated?); using what is there"
        )
    unread_seconds = data.unexplained_bytes / data.block_align / info.samplerate
    if unread_seconds >= 0.1:
        return (
            f"{info.path}: the header declares {info.frames / info.samplerate:.2f} s of audio but about "
            f"{unread_seconds:.2f} s more follow it (a header not updated when the recording stopped?); using the "
            f"declared {info.frames / info.samplerate:.2f} s ({_REWRITE_ADVICE})"
        )
    return None


_REWRITE_ADVICE = "`sox --ignore-length in.wav out.wav` rewrites the header to hold them all"


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
    block_align: int  # bytes a frame
    unexplained_bytes: int  # bytes after the declared data that are no chunk: audio the size leaves out
    start: int  # where the data chunk's samples start in the file


def _wav_data(path: Path) -> _WavData | None:
    """The RIFF/WAVE header's data chunk; None for anything else (RF64, streams written with a
    placeholder size, files too short to tell)."""
    with path.open("rb") as stream:
        file_size = os.fstat(stream.fileno()).st_size
        if stream.read(4) != b"RIFF" or len(stream.read(4)) != 4 or stream.read(4) != b"WAVE":
            return None
        block_align = None
        while header := stream.read(8):
            if len(header) < 8:
                return None
            chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"fmt ":
                body = stream.read(size + size % 2)
                if len(body) < 14:
                    return None
                block_align = struct.unpack("<H", body[12:14])[0]
            elif chunk_id == b"data":
                if not block_align or size == 0xFFFFFFFF:
                    return None
                start = stream.tell()
                end = _end_of_chunks(stream, start + size + size % 2, file_size)
                return _WavData(size, block_align, max(0, file_size - end), start)
            else:
                stream.seek(size + size % 2, 1)
    return None


# The most a RIFF size field counts: a WAV stream past it cannot say how long it is.
_MAX_RIFF_BYTES = 0xFFFFFFFF


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
        is_riff = stream.read(4) == b"RIFF"
    file_size = path.stat().st_size
    if is_riff and file_size - 8 > _MAX_RIFF_BYTES:
        raise EdgelalmError(
            f"{source} holds {file_size / 2**30:.1f} GiB of WAV, more than a WAV header can count (4 GiB); "
            "pipe FLAC instead (sox ... -t flac -, ffmpeg ... -f flac -)"
        )
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


def _end_of_chunks(stream: BinaryIO, position: int, file_size: int) -> int:
    """Where the well-formed chunks from `position` end (a LIST or id3 chunk after the data is
    common): each a four-character printable id and a size inside the file."""
    while position + 8 <= file_size:
        stream.seek(position)
        header = stream.read(8)
        chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
        if not all(32 <= byte < 127 for byte in chunk_id) or position + 8 + size > file_size:
            break
        position += 8 + size + size % 2
    return min(position, file_size)
