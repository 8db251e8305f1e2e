"""Audio file -> 16 kHz mono float32, the input every later stage expects. Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from edgelalm.errors import EdgelalmError


def _check_file(path: Path) -> None:
    if not path.exists():
        raise EdgelalmError(f"audio file not found: {path}")
    if not path.is_file():
        raise EdgelalmError(f"not an audio file: {path}")
    if path.stat().st_size == 0:
        raise EdgelalmError(f"{path} is empty")


def audio_seconds(path: Path) -> float:
    """Duration of `path` from its header alone (no samples read): for listing many files."""
    _check_file(path)
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise EdgelalmError(f"cannot read audio from {path}: {error}") from None
    if info.frames <= 0:
        raise EdgelalmError(f"{path} holds no audio samples")
    return info.frames / info.samplerate


def read_audio(path: Path, sampling_rate: int) -> np.ndarray:
    """Samples of `path` (wav, flac, ogg, ... whatever libsndfile reads), averaged to mono and
    resampled with soxr to `sampling_rate`."""
    _check_file(path)
    try:
        samples, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise EdgelalmError(f"cannot read audio from {path}: {error}") from None
    return prepare_samples(samples, file_rate, sampling_rate, str(path))


def prepare_samples(samples: np.ndarray, file_rate: int, sampling_rate: int, source: str = "the audio") -> np.ndarray:
    """[frames] or [frames, channels] at `file_rate` -> mono float32 at `sampling_rate`."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.ndim != 1:
        raise EdgelalmError(f"{source}: expected samples shaped [frames] or [frames, channels], got {samples.shape}")
    if samples.size == 0:
        raise EdgelalmError(f"{source} holds no audio samples")
    if not np.isfinite(samples).all():
        raise EdgelalmError(f"{source} contains NaN or infinite samples")
    if file_rate != sampling_rate:
        samples = soxr.resample(samples, file_rate, sampling_rate, quality="HQ").astype(np.float32)
    return samples
