"""Several speech synthesizers behind one call, so the default model hears more than one kind of voice.

    render_all([Request("set a timer", "festival:kal_diphone", tempo=1.1), ...])  # float32 clips, 16 kHz

A voice is "engine:name":

- "espeak-ng:en-us+f3": espeak-ng's formant voices with their variants (`speech.voices`); tempo
  sets the words per minute, pitch espeak-ng's pitch;
- "festival:kal_diphone", "festival:ked_diphone" (diphone, US male), "festival:cmu_us_slt_arctic_hts"
  (HTS, US female): Debian's festival voices; tempo sets festival's Duration_Stretch (which the
  HTS voice ignores: its speed varies only through the training data's speed perturbation);
- "flite:awb", "flite:rms", "flite:slt": flite's clustergen voices. Never trained on: the default
  model's never-heard test synthesizer (flite's kal is festival's kal diphones, so it is left out).

Text reaches each program on stdin or in a file it reads as data, never through a shell. Festival
requests are rendered in one festival process per batch (its start-up, 0.3 s, dwarfs one clip).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from edgelalm.constants import SAMPLING_RATE
from edgelalm.errors import EdgelalmError
from edgelalm.runtime.audio import prepare_samples
from edgelalm.training import speech
from edgelalm.training.texts import Split

ENGINES = ("espeak-ng", "festival", "flite")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FLITE_VOICES = ("awb", "rms", "slt")
UNHEARD_VOICES = tuple(f"flite:{name}" for name in FLITE_VOICES)
ESPEAK_WORDS_PER_MINUTE = 175  # espeak-ng's default speed: tempo 1.0
TEMPO_RANGE = (0.7, 1.4)
_TIMEOUT_S = 600


@dataclass(frozen=True)
class Request:
    text: str
    voice: str  # "engine:name"
    tempo: float = 1.0  # 1.0: the voice's own speed
    pitch: int = 50  # espeak-ng only (0-99)


def engine_of(voice: str) -> tuple[str, str]:
    engine, _, name = voice.partition(":")
    if engine not in ENGINES or not name:
        raise EdgelalmError(f"not a voice: {voice!r} (engine:name with engine one of {', '.join(ENGINES)})")
    return engine, name


def training_voices(split: Split) -> tuple[str, ...]:
    """espeak-ng's voices of `split` (its held-out variants are test only) and festival's voices."""
    return tuple(f"espeak-ng:{v}" for v in speech.voices(split)) + tuple(f"festival:{v}" for v in FESTIVAL_VOICES)


def heard_in_training(voice: str) -> str:
    """What the default model's training made of `voice`: "training voice", "held-out voice" (an
    espeak-ng variant kept for the test set) or "never-heard synthesizer" (flite)."""
    engine_of(voice)
    if voice in UNHEARD_VOICES:
        return "never-heard synthesizer"
    if voice in training_voices("train"):
        return "training voice"
    if voice in training_voices("test"):
        return "held-out voice"
    raise EdgelalmError(f"{voice!r} is none of the default model's voices (synthesizers.training_voices)")


def _program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EdgelalmError(f"{name} is not installed (Debian/Ubuntu: apt-get install {package})")
    return path


def _read_wav(data: bytes, what: str) -> np.ndarray:
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise EdgelalmError(f"{what}: unreadable audio ({error})") from None
    return prepare_samples(samples, rate, SAMPLING_RATE, what)


def _check(request: Request) -> None:
    if not request.text.strip():
        raise EdgelalmError("cannot render an empty text")
    if not TEMPO_RANGE[0] <= request.tempo <= TEMPO_RANGE[1]:
        raise EdgelalmError(f"tempo {request.tempo} is outside {TEMPO_RANGE}")


def _espeak(request: Request, name: str) -> np.ndarray:
    speed = int(round(ESPEAK_WORDS_PER_MINUTE * request.tempo))
    return speech.render(request.text, name, speed, request.pitch, SAMPLING_RATE)


def _flite(request: Request, name: str) -> np.ndarray:
    if name not in FLITE_VOICES:
        raise EdgelalmError(f"not a flite voice here: {name!r} (one of {', '.join(FLITE_VOICES)})")
    with tempfile.TemporaryDirectory(prefix="edgelalm-flite-") as folder:
        text_file, wav_file = Path(folder) / "text.txt", Path(folder) / "out.wav"
        text_file.write_text(request.text, encoding="utf-8")
        stretch = f"duration_stretch={1.0 / request.tempo:.3f}"
        args = [
            _program("flite", "flite"),
            "-voice",
            name,
            "--setf",
            stretch,
            "-f",
            str(text_file),
            "-o",
            str(wav_file),
        ]
        result = subprocess.run(args, capture_output=True, check=False, timeout=_TIMEOUT_S)
        if result.returncode != 0 or not wav_file.is_file():
            raise EdgelalmError(f"flite could not render {request.text!r}: {result.stderr.decode(errors='replace')}")
        return _read_wav(wav_file.read_bytes(), f"flite's audio for {request.text!r}")


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival(requests: list[tuple[Request, str]]) -> list[np.ndarray]:
    """Every request in one festival process."""
    with tempfile.TemporaryDirectory(prefix="edgelalm-festival-") as folder:
        lines = []
        for index, (request, name) in enumerate(requests):
            if name not in FESTIVAL_VOICES:
                raise EdgelalmError(f"not a festival voice here: {name!r} (one of {', '.join(FESTIVAL_VOICES)})")
            wav = Path(folder) / f"{index}.wav"
            utterance = f"(utt.synth (Utterance Text {_scheme_string(request.text)}))"
            lines.append(
                f"(voice_{name})(Parameter.set 'Duration_Stretch {1.0 / request.tempo:.3f})"
                f"(utt.save.wave {utterance} {_scheme_string(str(wav))} 'riff)"
            )
        script = Path(folder) / "render.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = subprocess.run(
            [
                _program("festival", "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"),
                "--batch",
                str(script),
            ],
            capture_output=True,
            check=False,
            timeout=_TIMEOUT_S,
        )
        out = []
        for index, (request, name) in enumerate(requests):
            wav = Path(folder) / f"{index}.wav"
            if not wav.is_file():
                message = result.stderr.decode(errors="replace").strip()[-300:]
                raise EdgelalmError(f"festival ({name}) could not render {request.text!r}: {message}")
            out.append(_read_wav(wav.read_bytes(), f"festival's audio for {request.text!r}"))
        return out


def render_all(requests: list[Request]) -> list[np.ndarray]:
    """Each request's clip (mono float32 at 16 kHz), in order."""
    out: list[np.ndarray | None] = [None] * len(requests)
    festival: list[tuple[int, Request, str]] = []
    for index, request in enumerate(requests):
        _check(request)
        engine, name = engine_of(request.voice)
        if engine == "festival":
            festival.append((index, request, name))
        elif engine == "flite":
            out[index] = _flite(request, name)
        else:
            out[index] = _espeak(request, name)
    if festival:
        for (index, _, _), samples in zip(festival, _festival([(r, n) for _, r, n in festival]), strict=True):
            out[index] = samples
    return [samples for samples in out if samples is not None]
