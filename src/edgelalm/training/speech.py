"""Synthetic speech: espeak-ng renders a sentence in a voice; numpy augments it for training.

    samples = render("set a timer for ten minutes", "en-us+f3", speed_wpm=160, pitch=50)
    noisy = augment(samples, np.random.default_rng(0))

Voices are espeak-ng's English voices (its own, not the MBROLA ones, which need extra packages)
alone or combined with one of its voice variants, written as espeak-ng's `-v` takes them:
"en-gb", "en-us+f3", "en-gb-scotland+klatt2". `voices("test")` holds combinations that
`voices("train")` never has: every combination with a held-out variant, and a hashed share of the
others. The plain voices (no variant) are always train.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile

from edgelalm.constants import SAMPLING_RATE
from edgelalm.errors import EdgelalmError
from edgelalm.runtime.audio import prepare_samples
from edgelalm.training import texts
from edgelalm.training.texts import Split

ESPEAK = "espeak-ng"

# espeak-ng's limits for -s and -p
SPEED_RANGE_WPM = (80, 450)
PITCH_RANGE = (0, 99)

# Variants left out: "fast" changes nothing at ordinary speeds (its file says it is unstable); a
# file name with a space cannot be passed as `-v voice+variant` safely.
EXCLUDED_VARIANTS = frozenset({"fast"})
# Variants only in test: female, male, klatt and "character" voices alike.
HELD_OUT_VARIANTS = ("f4", "m6", "klatt3", "Andrea", "iven3", "steph2", "robosoft4", "travis", "Henrique", "anika")
# Share of the other voice+variant combinations that go to test.
TEST_VOICE_FRACTION = 0.1

_VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\+[A-Za-z0-9][A-Za-z0-9_-]*)?$")


def _espeak() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise EdgelalmError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    return path


def _run_espeak(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([_espeak(), *args], input=stdin, capture_output=True, check=False, timeout=120)
    except subprocess.TimeoutExpired:
        raise EdgelalmError(f"espeak-ng {' '.join(args)} did not finish in 120 s") from None


@lru_cache(maxsize=1)
def espeak_version() -> str:
    """E.g. "1.51" (what `espeak-ng --version` reports)."""
    result = _run_espeak(["--version"])
    match = re.search(r"text-to-speech:\s*(\S+)", result.stdout.decode("utf-8", "replace"))
    if result.returncode != 0 or match is None:
        raise EdgelalmError(f"cannot read the espeak-ng version: {result.stdout!r} {result.stderr!r}")
    return match.group(1)


def _listing(argument: str) -> list[str]:
    result = _run_espeak([argument])
    if result.returncode != 0:
        raise EdgelalmError(f"espeak-ng {argument} failed: {result.stderr.decode('utf-8', 'replace').strip()}")
    return result.stdout.decode("utf-8", "replace").splitlines()[1:]  # skip the header line


@lru_cache(maxsize=1)
def english_voices() -> tuple[str, ...]:
    """espeak-ng's own English voices by language name ("en-gb", "en-us", "en-gb-scotland", ...),
    MBROLA voices ("mb/...") left out."""
    found: list[str] = []
    for line in _listing("--voices=en"):
        fields = line.split()
        if len(fields) < 5 or fields[4].startswith("mb/") or not fields[1].startswith("en"):
            continue
        if fields[1] not in found and _VOICE_NAME.match(fields[1]):
            found.append(fields[1])
    if not found:
        raise EdgelalmError("espeak-ng lists no English voices (is espeak-ng-data installed?)")
    return tuple(sorted(found))


@lru_cache(maxsize=1)
def voice_variants() -> tuple[str, ...]:
    """espeak-ng's voice variants by file name ("f3", "klatt2", "Alicia"): the part after "+"."""
    found: set[str] = set()
    for line in _listing("--voices=variant"):
        position = line.find("!v/")
        if position < 0:
            continue
        name = re.sub(r"(\s*\([^)]*\))+\s*$", "", line[position + 3 :]).strip()
        if name and name not in EXCLUDED_VARIANTS and _VOICE_NAME.match(name):
            found.add(name)
    return tuple(sorted(found))


def voice_split(voice: str) -> Split:
    """The split a voice ("en-us" or "en-us+f3") belongs to."""
    _, _, variant = voice.partition("+")
    if not variant:
        return "train"
    if variant in HELD_OUT_VARIANTS:
        return "test"
    return "test" if texts.stable_fraction(voice) < TEST_VOICE_FRACTION else "train"


@lru_cache(maxsize=2)
def voices(split: Split) -> tuple[str, ...]:
    """The voices of `split`, sorted: plain English voices and voice+variant combinations."""
    texts.check_split(split)
    every = list(english_voices()) + [f"{v}+{variant}" for v in english_voices() for variant in voice_variants()]
    return tuple(sorted(v for v in every if voice_split(v) == split))


def render(text: str, voice: str, speed_wpm: int, pitch: int, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """`text` spoken by espeak-ng: mono float32 samples at `sampling_rate`.

    The text goes to espeak-ng on stdin (never through a shell or as an argument, so no text is
    read as an option); espeak-ng's SSML and phoneme inputs stay off.
    """
    if not text.strip():
        raise EdgelalmError("cannot render an empty text")
    if not _VOICE_NAME.match(voice):
        raise EdgelalmError(f"not an espeak-ng voice name: {voice!r}")
    speed_wpm, pitch = int(speed_wpm), int(pitch)
    if not SPEED_RANGE_WPM[0] <= speed_wpm <= SPEED_RANGE_WPM[1]:
        raise EdgelalmError(f"speed {speed_wpm} words per minute is outside espeak-ng's {SPEED_RANGE_WPM}")
    if not PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]:
        raise EdgelalmError(f"pitch {pitch} is outside espeak-ng's {PITCH_RANGE}")
    args = ["--stdout", "-v", voice, "-s", str(speed_wpm), "-p", str(pitch)]
    result = _run_espeak(args, stdin=" ".join(text.split()).encode("utf-8"))
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode("utf-8", "replace").strip() or f"exit status {result.returncode}"
        raise EdgelalmError(f"espeak-ng could not render {text!r} in voice {voice}: {message}")
    try:
        samples, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise EdgelalmError(f"espeak-ng wrote unreadable audio for {text!r}: {error}") from None
    return prepare_samples(samples, rate, sampling_rate, f"espeak-ng's audio for {text!r}")


# ---------------------------------------------------------------------------------------------
# Augmentation (numpy, seeded by the caller's Generator)

NOISE_COLORS = ("white", "pink", "brown")
_COLOR_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges `augment` draws from (uniformly; dB ranges uniformly in dB)."""

    gain_db: tuple[float, float] = (-12.0, 6.0)
    reverb_probability: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.7)  # time for the impulse response to decay by 60 dB
    reverb_wet: tuple[float, float] = (0.2, 0.6)  # share of reverberant signal in the mix
    max_silence_s: float = 0.5  # leading and trailing silence, each up to this long
    noise_probability: float = 0.8
    snr_db: tuple[float, float] = (5.0, 35.0)
    noise_colors: tuple[str, ...] = NOISE_COLORS


def power(samples: np.ndarray) -> float:
    """Mean square of `samples`."""
    samples = np.asarray(samples, dtype=np.float64)
    return float(np.mean(samples * samples)) if samples.size else 0.0


def apply_gain(samples: np.ndarray, gain_db: float) -> np.ndarray:
    return (samples * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def colored_noise(length: int, color: str, rng: np.random.Generator, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Noise of unit power whose power spectrum falls as 1/f**0 (white), 1/f (pink) or 1/f**2
    (brown); pink and brown are shaped from 50 Hz up (flat below, no DC), so their power is audible."""
    if color not in _COLOR_EXPONENT:
        raise ValueError(f"noise color must be one of {NOISE_COLORS}, not {color!r}")
    white = rng.standard_normal(length)
    exponent = _COLOR_EXPONENT[color]
    if exponent == 0.0 or length < 2:
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        frequencies = np.maximum(np.fft.rfftfreq(length, d=1.0 / sampling_rate), 50.0)
        spectrum *= frequencies ** (-exponent / 2.0)
        spectrum[0] = 0.0
        noise = np.fft.irfft(spectrum, n=length)
    noise_power = power(noise)
    return (noise / np.sqrt(noise_power) if noise_power > 0 else noise).astype(np.float32)


def add_noise(
    samples: np.ndarray,
    snr_db: float,
    color: str,
    rng: np.random.Generator,
    reference_power: float | None = None,
    sampling_rate: int = SAMPLING_RATE,
) -> np.ndarray:
    """`samples` plus `color` noise at `snr_db` below `reference_power` (default: the power of
    `samples`), over the whole clip."""
    reference = power(samples) if reference_power is None else reference_power
    noise = colored_noise(len(samples), color, rng, sampling_rate)
    scale = np.sqrt(reference / 10.0 ** (snr_db / 10.0))
    return (samples + noise * np.float32(scale)).astype(np.float32)


def add_reverb(
    samples: np.ndarray, rt60_s: float, wet: float, rng: np.random.Generator, sampling_rate: int = SAMPLING_RATE
) -> np.ndarray:
    """A synthetic room: `samples` convolved with exponentially decaying noise (60 dB down after
    `rt60_s`), mixed `wet` to 1 - `wet` with the dry signal, at the dry signal's power and length."""
    length = max(int(rt60_s * sampling_rate), 1)
    t = np.arange(length) / sampling_rate
    response = rng.standard_normal(length) * np.exp(-3.0 * np.log(10.0) * t / rt60_s)
    response /= np.sqrt(np.sum(response * response))
    n = len(samples) + length - 1
    size = 1 << (n - 1).bit_length()
    reverberant = np.fft.irfft(np.fft.rfft(samples, size) * np.fft.rfft(response, size), size)[: len(samples)]
    mixed = (1.0 - wet) * samples + wet * reverberant
    mixed_power = power(mixed)
    if mixed_power > 0:
        mixed *= np.sqrt(power(samples) / mixed_power)
    return mixed.astype(np.float32)


def pad_silence(samples: np.ndarray, leading: int, trailing: int) -> np.ndarray:
    return np.concatenate([np.zeros(leading, np.float32), samples.astype(np.float32), np.zeros(trailing, np.float32)])


def augment(
    samples: np.ndarray,
    rng: np.random.Generator,
    settings: AugmentSettings = AugmentSettings(),
    sampling_rate: int = SAMPLING_RATE,
) -> np.ndarray:
    """One random variation of a clip, all draws from `rng`: gain, maybe reverb, leading and
    trailing silence, maybe noise (its SNR measured against the speech, then spread over the
    silence too), clipped to [-1, 1]. The length grows by the silence only."""
    samples = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    gain_db = rng.uniform(*settings.gain_db)
    if peak > 0:
        gain_db = min(gain_db, -20.0 * np.log10(peak))  # no clipping from the gain itself
    out = apply_gain(samples, gain_db)
    if rng.random() < settings.reverb_probability:
        out = add_reverb(out, rng.uniform(*settings.rt60_s), rng.uniform(*settings.reverb_wet), rng, sampling_rate)
    speech_power = power(out)
    most = int(settings.max_silence_s * sampling_rate)
    out = pad_silence(out, int(rng.integers(0, most + 1)), int(rng.integers(0, most + 1)))
    if rng.random() < settings.noise_probability:
        color = settings.noise_colors[int(rng.integers(len(settings.noise_colors)))]
        out = add_noise(out, rng.uniform(*settings.snr_db), color, rng, speech_power, sampling_rate)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def speed_perturb(samples: np.ndarray, factor: float, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Played `factor` times faster: tempo and pitch both change (Kaldi's speed perturbation)."""
    import soxr

    return soxr.resample(samples, sampling_rate * factor, sampling_rate).astype(np.float32)


def telephone_band(samples: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Through an 8 kHz line: 300-3400 Hz kept, the rest removed."""
    import soxr

    narrow = soxr.resample(samples, sampling_rate, 8000)
    spectrum = np.fft.rfft(narrow)
    frequencies = np.fft.rfftfreq(len(narrow), d=1.0 / 8000)
    spectrum[(frequencies < 300.0) | (frequencies > 3400.0)] = 0.0
    return soxr.resample(np.fft.irfft(spectrum, n=len(narrow)), 8000, sampling_rate).astype(np.float32)


def silence_or_noise(seconds: float, rng: np.random.Generator, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """A clip without speech: digital silence, or colored noise from -75 to -20 dB below full scale."""
    length = max(int(seconds * sampling_rate), 1)
    if rng.random() < 0.2:
        return np.zeros(length, np.float32)
    color = NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))]
    level = 10.0 ** (rng.uniform(-75.0, -20.0) / 20.0)
    return (colored_noise(length, color, rng, sampling_rate) * np.float32(level)).astype(np.float32)
