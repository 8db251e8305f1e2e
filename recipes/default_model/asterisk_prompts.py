"""A real human voice at length: Asterisk's English prompts (Debian main, `asterisk-core-sounds-en-wav`,
CC-BY-SA-3.0), about 22 minutes of one professional speaker (Allison Smith) recorded for telephone
menus at 8 kHz, with the package's own transcript of each prompt (`core-sounds-en.txt`).

    python recipes/default_model/asterisk_prompts.py build/asterisk-prompts

Fetches the two .deb files with `apt-get download` (no install), writes each spoken prompt at
16 kHz and a `transcripts.tsv` (file, transcript) that wer_table.py and whisper_reference.py read.
Left out: tones and silences, prompts whose transcript describes rather than spells what is said
(brackets, parentheses), and the three prompts longer than an encoder window (30 s); "*" and "#" are
said "star" and "pound".
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

import soundfile
import soxr
from debian_packages import unpacked

from edgelalm.files import write_tsv

PACKAGES = ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")
SOUNDS = Path("usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SAMPLING_RATE = 16000
WINDOW_SECONDS = 30.0


def spoken_prompts(transcripts: Path) -> dict[str, str]:
    """Prompt name (its path without .wav) -> what is said, for the prompts spelled out."""
    prompts = {}
    for line in gzip.open(transcripts, "rt", encoding="utf-8"):
        name, separator, text = line.partition(":")
        if line.startswith(";") or not separator or name.startswith("silence/"):
            continue
        text = text.strip()
        if not text or any(mark in text for mark in "[]()"):
            continue
        prompts[name.strip()] = text.replace("*", " star ").replace("#", " pound ")
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        tree = unpacked(PACKAGES, Path(scratch))
        prompts = spoken_prompts(tree / TRANSCRIPTS)
        args.out.mkdir(parents=True, exist_ok=True)
        rows, seconds = [], 0.0
        for name, text in sorted(prompts.items()):
            source = tree / SOUNDS / f"{name}.wav"
            if not source.is_file():
                continue
            audio, rate = soundfile.read(source, dtype="float32")
            if len(audio) > WINDOW_SECONDS * rate:
                continue
            target = name.replace("/", "_") + ".wav"
            soundfile.write(args.out / target, soxr.resample(audio, rate, SAMPLING_RATE), SAMPLING_RATE)
            rows.append({"file": target, "transcript": " ".join(text.split())})
            seconds += len(audio) / rate
    write_tsv(args.out / "transcripts.tsv", rows, ("file", "transcript"))
    print(f"{args.out}: {len(rows)} prompts, {seconds / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
