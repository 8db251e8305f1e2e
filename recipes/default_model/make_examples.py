"""Render the example clips in examples/ from examples/transcripts.tsv (the one home of what each
clip says and who says it).

    python recipes/default_model/make_examples.py            # every row
    python recipes/default_model/make_examples.py kids-room.wav

Each row names its file, its transcript (what is read aloud), a voice as synthesizers.py names it
("espeak-ng:en-us+f4", "festival:kal_diphone", "flite:slt"), a tempo (1.0: the voice's own speed)
and an espeak-ng pitch. The `heard` column is written here, not by hand: whether the default model's
training heard that voice ("training voice"), held it out ("held-out voice") or never used its
synthesizer ("never-heard synthesizer"). A transcript that is a training sentence is refused: an
example must show the model on speech it was not trained on. The same run writes the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import soundfile

from edgelalm.constants import SAMPLING_RATE
from edgelalm.files import read_tsv, write_tsv
from edgelalm.training import synthesizers, texts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TABLE = EXAMPLES / "transcripts.tsv"
COLUMNS = ("file", "transcript", "voice", "tempo", "pitch", "heard")


def main(argv: list[str] | None = None) -> int:
    wanted = set(sys.argv[1:] if argv is None else argv)
    rows = read_tsv(TABLE)
    chosen = [row for row in rows if not wanted or row["file"] in wanted]
    if wanted - {row["file"] for row in chosen}:
        raise SystemExit(f"not in {TABLE.name}: {', '.join(sorted(wanted - {row['file'] for row in chosen}))}")
    for row in chosen:
        sentence = texts.normalize_transcript(row["transcript"])
        if texts.split_of(sentence) == "train":
            raise SystemExit(f"{row['file']}: {sentence!r} is a training sentence")
        request = synthesizers.Request(row["transcript"], row["voice"], float(row["tempo"]), int(row["pitch"]))
        (samples,) = synthesizers.render_all([request])
        soundfile.write(EXAMPLES / row["file"], samples, SAMPLING_RATE, subtype="PCM_16")
        row["heard"] = synthesizers.heard_in_training(row["voice"])
        print(f"{row['file']}: {sentence!r} ({row['voice']}, {row['heard']})", file=sys.stderr)
    write_tsv(TABLE, rows, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
