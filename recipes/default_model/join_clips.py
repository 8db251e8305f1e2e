"""Clips longer than one 30 s encoder window, for the runtime's windowing: consecutive pairs (or
`--group N`) of a long set's clips (15-30 s each, make_encoded_data.py --long) joined with a pause
between them.

    python recipes/default_model/join_clips.py data3/test-long build/test-xlong
    python recipes/default_model/wer_table.py --data build/test-xlong/transcripts.tsv --clips 20 \
        --compressors none,unseg --quants q8_0 --max-answer-tokens 320 --out recipes/default_model/results/test-xlong

A joined clip is one speaker after another where the pair's voices differ, as in a recorded
conversation. Writes OUT/NNN.wav (16 kHz mono 16-bit) and OUT/transcripts.tsv (file, transcript).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile

from edgelalm.files import write_tsv
from edgelalm.training.encoded import EncodedDataset

PAUSE_SECONDS = 0.6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a long set of make_encoded_data.py (its audio kept)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--group", type=int, default=2, help="clips joined into one (2: 31-51 s; 3: 46-80 s)")
    args = parser.parse_args(argv)
    data = EncodedDataset(args.data)
    rate = data.sampling_rate
    pause = np.zeros(round(PAUSE_SECONDS * rate), dtype=np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for first in range(0, len(data) - args.group + 1, args.group):
        group = range(first, first + args.group)
        samples = np.concatenate([part for index in group for part in (pause, data.audio(index))][1:])
        name = f"{first // args.group:03d}.wav"
        soundfile.write(args.out / name, samples, rate, subtype="PCM_16")
        rows.append({"file": name, "transcript": " ".join(data.texts[index] for index in group)})
        print(f"{name}: {len(samples) / rate:.1f} s", file=sys.stderr)
    write_tsv(args.out / "transcripts.tsv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
