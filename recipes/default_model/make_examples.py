"""Render the example clips in examples/ (held-out sentences and voices, never in the training set).

    python recipes/default_model/make_examples.py

Each clip is a sentence of the test split (texts.utterances("test", ..., seed=EXAMPLE_SEED): a seed
the held-out WER set does not use) spoken by a held-out voice, written as 16-bit wav, with its
transcript appended to examples/transcripts.tsv. The same run writes the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import soundfile

from edgelalm.training import speech, texts

EXAMPLE_SEED = 2026
EXAMPLES = (  # (file, index into the seeded test sentences, held-out voice, speed wpm, pitch)
    ("text-yusuf.wav", 0, "en-gb+Andrea", 160, 45),
    ("kids-room.wav", 1, "en-us+f4", 170, 60),
    ("air-quality.wav", 2, "en-029+edward2", 150, 40),
)


def main() -> int:
    examples = Path(__file__).resolve().parents[2] / "examples"
    sentences = [s for s in texts.utterances("test", 200, EXAMPLE_SEED) if len(s.split()) >= 6]
    held_out = set(speech.voices("test"))
    table = examples / "transcripts.tsv"
    rows = table.read_text(encoding="utf-8").splitlines()
    for file, index, voice, speed, pitch in EXAMPLES:
        if voice not in held_out:
            raise SystemExit(f"{voice} is not a held-out voice")
        text = sentences[index]
        soundfile.write(examples / file, speech.render(text, voice, speed, pitch), speech.SAMPLING_RATE, subtype="PCM_16")
        rows = [r for r in rows if not r.startswith(file + "\t")]
        rows.append(f"{file}\t{text}\tespeak-ng {voice}, speed {speed}, pitch {pitch} (held-out voice)")
        print(f"{file}: {text!r} ({voice})", file=sys.stderr)
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
