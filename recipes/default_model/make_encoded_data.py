"""Render, augment and encode the default model's data (issue 15; edgelalm.training.encoded).

    python recipes/default_model/make_encoded_data.py --init build/default-model/init --out data3

Writes OUT/test (held-out texts and espeak-ng voices, festival's voices; audio kept for the WER
table), OUT/unheard (held-out texts spoken by flite, a synthesizer never trained on; audio kept)
and OUT/train. A split already built is kept. `--sentences FILE` makes the clips say a file's
sentences (make_lm_text.py's prose) instead of the mixture: OUT/<train-folder>, or OUT/test-prose.
`--recordings TSV` encodes recorded clips instead (a table of file and transcript, as
amazon_queen_speech.py writes), as recorded, or with `--augment-seed N` each one's seeded variation
(speed, gain, reverb, noise, telephone line): OUT/<train-folder>, joined to the synthetic clips in
training.
Needs espeak-ng, festival with its English voices and flite (Debian/Ubuntu: apt-get install
espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgelalm import interrupts
from edgelalm.errors import EdgelalmError
from edgelalm.files import read_json_object
from edgelalm.training.encoded import build_encoded, build_encoded_recordings
from edgelalm.training.synthesizers import UNHEARD_VOICES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--init", type=Path, default=Path("build/default-model/init"), help="checkpoint whose tower encodes"
    )
    parser.add_argument("--out", type=Path, default=Path("data3"))
    parser.add_argument("--train-count", type=int, default=40000)
    parser.add_argument("--test-count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--splits", default="test,unheard,train", help="which of test, unheard, train to build")
    parser.add_argument(
        "--train-folder", default="train", help="the training split's folder name (more training clips: another seed)"
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="long clips (corpus.iter_long_texts: 15-30 s, one encoder window each); the held-out sets are "
        "then written as test-long and unheard-long",
    )
    parser.add_argument(
        "--below-layer",
        type=int,
        default=None,
        help="store the tower's hidden states entering this layer (50/s) instead of its output, so that "
        "training can tune the layers above (train_base.py --tune-tower)",
    )
    parser.add_argument(
        "--sentences",
        type=Path,
        default=None,
        help="the clips say these sentences (one per line, e.g. make_lm_text.py's prose) instead of the "
        "mixture: --splits train (its voices, --train-folder) or test (held-out voices, audio kept, test-prose)",
    )
    parser.add_argument(
        "--recordings",
        type=Path,
        default=None,
        help="encode these recorded clips (a TSV of file and transcript, paths relative to it) into OUT/<train-folder>",
    )
    parser.add_argument(
        "--augment-seed",
        type=int,
        default=None,
        help="with --recordings: each recording's seeded variation (played 0.9-1.1x as fast, gain, maybe reverb, "
        "noise, a telephone line), to train on beside the recordings as recorded",
    )
    args = parser.parse_args(argv)
    interrupts.install()  # SIGTERM unwinds like Ctrl-C: the half-built folder is removed
    if args.sentences and (args.splits not in ("train", "test") or args.long):
        parser.error("--sentences: one of --splits train or test, without --long")
    if args.augment_seed is not None and args.recordings is None:
        parser.error("--augment-seed: only with --recordings (synthetic clips are augmented by --seed)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ".gitignore").write_text("# rendered by recipes/default_model/make_encoded_data.py\n*\n")
    if args.recordings is not None:
        target = args.out / args.train_folder
        if (target / "dataset.json").is_file():
            built = read_json_object(target / "dataset.json")
            if (built.get("recordings"), built.get("augment_seed")) != (str(args.recordings), args.augment_seed):
                parser.error(
                    f"{target} holds {built.get('recordings')} with augment seed {built.get('augment_seed')}: "
                    "name another --train-folder"
                )
            print(f"{target}: already built, kept", file=sys.stderr)
        else:
            build_encoded_recordings(target, args.recordings, args.init, augment_seed=args.augment_seed)
        return 0
    splits = (
        ("test", "test", args.test_count, None, True),
        ("unheard", "test", args.test_count, UNHEARD_VOICES, True),
        ("train", "train", args.train_count, None, False),
    )
    wanted = set(args.splits.split(","))
    for name, split, count, voices, keep_audio in splits:
        if name not in wanted:
            continue
        folder = args.train_folder if name == "train" else name + ("-long" if args.long else "")
        folder += "-prose" if args.sentences and name != "train" else ""
        target = args.out / folder
        if (target / "dataset.json").is_file():
            print(f"{target}: already built, kept", file=sys.stderr)
            continue
        build_encoded(
            target,
            split,
            count,
            args.seed,
            args.init,
            voices=voices,
            keep_audio=keep_audio,
            workers=args.workers,
            long=args.long,
            below_layer=args.below_layer,
            sentences=args.sentences,
        )
    return 0


if __name__ == "__main__":  # the guard matters: the workers are spawned processes
    try:
        sys.exit(main())
    except EdgelalmError as error:
        print(f"make_encoded_data: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("make_encoded_data: interrupted (the unfinished folder was removed)", file=sys.stderr)
        sys.exit(130)
