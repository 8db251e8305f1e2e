"""Whisper log-mel features in numpy, for the clip's own length. Torch-free.

The same computation as transformers' WhisperFeatureExtractor (periodic Hann window of n_fft,
hop 160, reflect-padded centred frames, power spectrum, the checkpoint's own mel filters,
log10 floored at 1e-10, clamped at max - 8, then (x + 4) / 4), but without padding the clip to
the full window. It also returns the two mel frames after the clip that the padded computation
would see (the encoder's right context, see edgelalm.export.encoder), so the encoder's output
equals transformers' padded, masked run. Long audio is cut into windows, each featurised as its
own clip, as transformers would process each window.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelalm.constants import MIN_MEL_FRAMES, RIGHT_CONTEXT_FRAMES
from edgelalm.errors import EdgelalmError

STFT_BLOCK_FRAMES = 256


@dataclass(frozen=True)
class FeatureSettings:
    sampling_rate: int
    n_fft: int
    hop_length: int
    window_samples: int  # samples per encoder window (30 s for Qwen2-Audio-7B)
    mel_filters: np.ndarray  # [n_fft // 2 + 1, n_mels], the checkpoint's own filters

    @property
    def window_frames(self) -> int:
        return self.window_samples // self.hop_length

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sampling_rate


@dataclass(frozen=True)
class WindowFeatures:
    mel: np.ndarray  # [n_mels, T] the clip's frames
    right_context: np.ndarray  # [n_mels, 2] the frames after it (zeros past the window)


def conv_positions(mel_frames: int) -> int:
    """Positions after the audio tower's stride-2 convolution for `mel_frames` valid mel frames."""
    return (mel_frames - 1) // 2 + 1


def encoder_output_frames(mel_frames: int) -> int:
    """Encoder frames for `mel_frames` valid mel frames: transformers' own length formula
    (stride-2 convolution, then AvgPool1d(2, 2)). Here, not beside the encoder session, so that
    training and the benchmark's PyTorch reference use it without loading onnxruntime."""
    return (conv_positions(mel_frames) - 2) // 2 + 1


# Cutting at a pause (`cut_at_pauses`): a full window ends at the middle of its quietest 20 ms
# within its last 5 s (its second half, if shorter), so that a window answered on its own does not
# cut a word in two.
PAUSE_SEARCH_SECONDS = 5.0
PAUSE_FRAME_SECONDS = 0.02


def _frame_samples(settings: FeatureSettings) -> int:
    return max(1, round(PAUSE_FRAME_SECONDS * settings.sampling_rate))


def _frame_energy(samples: np.ndarray, frame: int) -> np.ndarray:
    """The mean square of each whole `frame` of `samples`."""
    frames = len(samples) // frame
    return (samples[: frames * frame].astype(np.float64).reshape(frames, frame) ** 2).mean(axis=1)


def pause_cut(window: np.ndarray, settings: FeatureSettings) -> int:
    """Where to end `window` (a full one, with audio after it): the sample count to keep."""
    frame = _frame_samples(settings)
    frames = min(len(window) // 2, round(PAUSE_SEARCH_SECONDS * settings.sampling_rate)) // frame
    if frames == 0:
        return len(window)
    energy = _frame_energy(window[len(window) - frames * frame :], frame)
    latest_quietest = frames - 1 - int(np.argmin(energy[::-1]))  # the latest on a tie: longer windows
    return len(window) - (frames - latest_quietest) * frame + frame // 2


# A window's speech (`speech_span`): its 20 ms frames louder than both 15 dB above the window's
# quiet (its 10th percentile) and 40 dB below its loudest, padded by 0.2 s. Where a subtitle cue
# shows: a window is cut at pauses, not at speech, and 5 s of silence before a sentence showed it
# 5 s early. A window whose quiet is itself above -50 dBFS (speech over music, a loud room) is
# sound throughout.
SPEECH_OVER_QUIET_DB, SPEECH_UNDER_LOUDEST_DB, SPEECH_PAD_SECONDS = 15.0, 40.0, 0.2
SOUND_THROUGHOUT_DBFS = -50.0


def speech_span(window: np.ndarray, settings: FeatureSettings) -> tuple[int, int] | None:
    """The samples of `window` from its first to its last frame of speech (padded); the whole
    window where it is sound throughout; None where nothing stands out of its quiet (silence, a
    low hiss)."""
    frame = _frame_samples(settings)
    energy = _frame_energy(window, frame)
    if len(energy) < 2:
        return None
    quiet, loudest = float(np.percentile(energy, 10)), float(energy.max())
    if quiet > 10 ** (SOUND_THROUGHOUT_DBFS / 10):
        return 0, len(window)
    threshold = max(quiet * 10 ** (SPEECH_OVER_QUIET_DB / 10), loudest * 10 ** (-SPEECH_UNDER_LOUDEST_DB / 10))
    loud = np.flatnonzero(energy > threshold)
    if loudest <= 0 or len(loud) == 0:
        return None
    pad = round(SPEECH_PAD_SECONDS * settings.sampling_rate)
    return max(0, int(loud[0]) * frame - pad), min(len(window), (int(loud[-1]) + 1) * frame + pad)


def split_windows(samples: np.ndarray, settings: FeatureSettings, cut_at_pauses: bool = False) -> list[np.ndarray]:
    """Consecutive windows of at most `window_samples` (each but the last ended at a pause, with
    `cut_at_pauses`)."""
    windows, start = [], 0
    while start < len(samples):
        window = samples[start : start + settings.window_samples]
        if cut_at_pauses and start + len(window) < len(samples):
            window = window[: pause_cut(window, settings)]
        windows.append(window)
        start += len(window)
    return windows


def stream_windows(
    chunks: Iterable[np.ndarray], settings: FeatureSettings, cut_at_pauses: bool = False
) -> Iterator[np.ndarray]:
    """The same windows as `split_windows`, cut from a stream of chunks: one window in memory."""
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        # A window is cut at a pause only once audio is known to follow it, as split_windows does.
        while held > settings.window_samples or (held == settings.window_samples and not cut_at_pauses):
            joined = np.concatenate(pending)
            window = joined[: settings.window_samples]
            if cut_at_pauses:
                window = window[: pause_cut(window, settings)]
            yield window
            rest = joined[len(window) :]
            pending, held = [rest], len(rest)
    if held:
        yield np.concatenate(pending)


def window_lengths(total_samples: int, settings: FeatureSettings) -> list[int]:
    """The sample count of each window of a clip of `total_samples`, without the clip."""
    full, tail = divmod(total_samples, settings.window_samples)
    return [settings.window_samples] * full + ([tail] if tail else [])


def valid_mel_frames(num_samples: int, hop_length: int) -> int:
    """Valid mel frames for `num_samples` of audio: transformers' attention-mask count."""
    return -(-num_samples // hop_length)


def mel_frames_for(num_samples: int, settings: FeatureSettings) -> int:
    """Valid mel frames for a window of `num_samples` under `settings`."""
    return valid_mel_frames(num_samples, settings.hop_length)


def usable_window(num_samples: int, settings: FeatureSettings) -> bool:
    """A window gives the encoder at least one frame (30 ms of audio); a shorter tail is skipped."""
    return mel_frames_for(num_samples, settings) >= MIN_MEL_FRAMES


def log_mel_window(samples: np.ndarray, settings: FeatureSettings) -> WindowFeatures:
    """Features of one window (at most `window_samples` samples)."""
    hop, n_fft = settings.hop_length, settings.n_fft
    valid_frames = mel_frames_for(len(samples), settings)
    # Zeros after the clip, as transformers pads to the window, far enough that the frames we
    # keep never reach the reflect padding at the end; never past the window itself.
    padded_length = min(valid_frames * hop + 3 * hop + n_fft, settings.window_samples)
    padded_length = max(padded_length, len(samples))
    waveform = np.zeros(padded_length, dtype=np.float64)
    waveform[: len(samples)] = samples
    waveform = np.pad(waveform, n_fft // 2, mode="reflect")
    num_frames = 1 + (len(waveform) - n_fft) // hop
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    mel_power = np.empty((num_frames, settings.mel_filters.shape[1]), dtype=np.float64)
    # A block of frames at a time: the whole window's float64 frames and spectra would be ~40 MB.
    for start in range(0, num_frames, STFT_BLOCK_FRAMES):
        starts = np.arange(start, min(start + STFT_BLOCK_FRAMES, num_frames))[:, None] * hop
        spectrum = np.fft.rfft(waveform[starts + np.arange(n_fft)[None, :]] * window, n=n_fft, axis=1)
        mel_power[start : start + len(starts)] = (spectrum.real**2 + spectrum.imag**2) @ settings.mel_filters
    log_mel = np.log10(np.maximum(mel_power, 1e-10)).T  # [n_mels, frames]
    # transformers drops the last frame of the padded window; frames past the window do not exist.
    kept = min(valid_frames + RIGHT_CONTEXT_FRAMES, settings.window_frames, log_mel.shape[1])
    log_mel = log_mel[:, :kept]
    # Frames past the clip in the padded window are silence, log10(1e-10) = -10: never the max.
    log_mel = np.maximum(log_mel, max(log_mel.max(), -10.0) - 8.0)
    normalized = ((log_mel + 4.0) / 4.0).astype(np.float32)
    context = np.zeros((normalized.shape[0], RIGHT_CONTEXT_FRAMES), dtype=np.float32)
    available = normalized[:, valid_frames : valid_frames + RIGHT_CONTEXT_FRAMES]
    context[:, : available.shape[1]] = available
    return WindowFeatures(mel=normalized[:, :valid_frames], right_context=context)


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_mel_filters(path: Path, n_fft: int, num_mel_bins: int) -> np.ndarray:
    """The bundle's mel filterbank, checked against the manifest's feature settings: its .npy
    header first, so that a header declaring terabytes (or a .npz, which np.load opens as an
    archive) is refused before anything is read."""
    expected = (n_fft // 2 + 1, num_mel_bins)
    try:
        with path.open("rb") as stream:
            version = np.lib.format.read_magic(stream)
            if version not in _NPY_HEADER_READERS:  # 3.0 is for UTF-8 field names: never filters
                raise ValueError(f".npy format {version[0]}.{version[1]}, where np.save writes 1.0 for floats")
            shape, _, dtype = _NPY_HEADER_READERS[version](stream)
            if shape != expected or not np.issubdtype(dtype, np.floating):
                raise EdgelalmError(f"{path}: expected finite mel filters of shape {expected}, got {dtype} {shape}")
            stream.seek(0)
            filters = np.lib.format.read_array(stream, allow_pickle=False)
    except (OSError, ValueError, EOFError, TypeError) as error:  # EOFError: an empty file
        reason = str(error).split(". If you trust", 1)[0] if str(error) else "it is empty"
        raise EdgelalmError(f"{path} is not a numpy array file: {reason}") from None
    # Triangular weights (Whisper's peak at about 0.03): anything else overflows the log-mel.
    if not (np.isfinite(filters).all() and filters.min() >= 0 and filters.max() <= 1):
        raise EdgelalmError(f"{path}: mel filters must be finite weights from 0 to 1")
    return filters
