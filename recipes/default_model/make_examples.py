"""Render the example clips in examples/ (held-out sentences and voices, never in the training set).

    python recipes/default_model/make_examples.py

Each clip is a sentence of the test split spoken by a held-out voice, written as 16-bit wav, with
its transcript appended to examples/transcripts.tsv. The same run writes the same files. The
sentences were drawn once from texts.utterances("test", 200, seed=2026) (a seed the held-out WER
set does not use) under grammar version 1; they are written out here so that a later grammar keeps
the same clips, and each is checked to be test-only still.
"""

from __future__ import annotations

import sys
from pathlib import Path

import soundfile

from edgelalm.training import speech, texts

EXAMPLES = (  # (file, sentence, held-out voice, speed wpm, pitch)
    ("text-yusuf.wav", "text yusuf that i'll call you later", "en-gb+Andrea", 160, 45),
    ("kids-room.wav", "set the kids room to sixty seven degrees", "en-us+f4", 170, 60),
    ("air-quality.wav", "what's the air quality in lisbon", "en-029+edward2", 150, 40),
)


def main() -> int:
    examples = Path(__file__).resolve().parents[2] / "examples"
    held_out = set(speech.voices("test"))
    table = examples / "transcripts.tsv"
    rows = table.read_text(encoding="utf-8").splitlines()
    for file, text, voice, speed, pitch in EXAMPLES:
        if voice not in held_out:
            raise SystemExit(f"{voice} is not a held-out voice")
        if texts.split_of(text) != "test":
            raise SystemExit(f"{text!r} is not a test-only sentence")
        soundfile.write(
            examples / file, speech.render(text, voice, speed, pitch), speech.SAMPLING_RATE, subtype="PCM_16"
        )
        rows = [r for r in rows if not r.startswith(file + "\t")]
        rows.append(f"{file}\t{text}\tespeak-ng {voice}, speed {speed}, pitch {pitch} (held-out voice)")
        print(f"{file}: {text!r} ({voice})", file=sys.stderr)
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
