"""Real human voices, acted: the English speech of the freeware adventure game Drascula (Debian
main, `drascula`, Alcachofa Soft's BSD-like licence: free use, modification and redistribution),
about 46 minutes in some 740 lines by ten characters, each line with the text the game shows
while it is said.

    python recipes/default_model/drascula_speech.py build/drascula-speech

Fetches the .deb with `apt-get download` (no install) and writes each spoken line at 16 kHz with a
`transcripts.tsv` (file, transcript, speaker, seconds) that wer_table.py reads. Nobody here
produced these voices; the default model never trained on them.

The formats, as ScummVM's drascula engine reads them (learned from its source; parsed here):

- `drascula.dat`, big-endian: b"DRASCULA", a version byte (6), a character map (u16 count of
  4-byte records), twelve tables of 16-bit records (u16 count, then count x RECORD_WORDS[i]
  words), a u16 language count, then the text tables (TEXT_TABLES), each a u16 string count and,
  per language, a u16 block length and the block: 2 bytes, then per string a u16 record length
  (counting itself), the string NUL-terminated, padding. String N is line N; line 0 is empty.
- `<PREFIX><N>.ALS`: headerless unsigned 8-bit mono PCM at 11025 Hz, the character PREFIX names
  (SPEAKERS) saying line N of its table; S<N>.ALS are sound effects.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import soundfile
from debian_packages import unpacked

from edgelalm.constants import SAMPLING_RATE
from edgelalm.files import write_tsv
from edgelalm.runtime.audio import prepare_samples

PACKAGE = "drascula"
GAME = Path("usr/share/scummvm/drascula/en")
DAT_MAGIC, DAT_VERSION = b"DRASCULA", 6
ENGLISH = 0  # the first language of every text table
RECORD_WORDS = (2, 2, 1, 2, 1, 2, 1, 1, 10, 10, 5, 4)  # 16-bit words per record, the twelve tables
TEXT_TABLES = ("text", "textd", "textb", "textbj", "texte", "texti", "textl", "textp", "textt", "textvb",
               "textsys", "texthis", "textverbs", "textmisc", "textd1")  # fmt: skip
# Voice file prefix -> (the text table the engine shows while it plays, who says it).
SPEAKERS = {
    "": ("text", "hero"),
    "D": ("textd", "drascula"),
    "B": ("textb", "drunk"),
    "BJ": ("textbj", "bj"),
    "E": ("texte", "e"),
    "I": ("texti", "igor"),
    "L": ("textl", "werewolf"),
    "P": ("textp", "pianist"),
    "T": ("textt", "bartender"),
    "VB": ("textvb", "von-braun"),
}
SOURCE_RATE = 11025
# The engine plays only part of the English 3.ALS (long silences around the line): its size, the
# first byte played and the bytes left off the end.
TRIMMED = {"3": (145166, 73959, 26306)}
# Lines whose recording is not the text: 122 says lines 122 and 123 together; 367 says "watch
# your language, transilvanian" for "what language are you speaking, transilvanian".
NOT_THE_TEXT = {"122", "367"}


def read_texts(dat: bytes) -> dict[str, list[list[bytes]]]:
    """{text table: [its strings in language 0, in language 1, ...]} of a drascula.dat."""
    if dat[: len(DAT_MAGIC)] != DAT_MAGIC or dat[len(DAT_MAGIC)] != DAT_VERSION:
        raise ValueError(f"not a version {DAT_VERSION} drascula.dat")
    position = len(DAT_MAGIC) + 1

    def u16() -> int:
        nonlocal position
        (value,) = struct.unpack_from(">H", dat, position)
        position += 2
        return value

    # Each count read first: `position += 4 * u16()` would add to the position before u16 moved it.
    characters = u16()
    position += 4 * characters  # the character map
    for words in RECORD_WORDS:
        records = u16()
        position += 2 * words * records
    languages = u16()
    tables = {}
    for table in TEXT_TABLES:
        count = u16()
        per_language = []
        for _ in range(languages):
            length = u16()
            block = dat[position : position + length]
            position += length
            strings, at = [], 2
            while at < len(block):
                (record,) = struct.unpack_from(">H", block, at)
                if record < 2:
                    raise ValueError(f"{table}: a string record of length {record}")
                strings.append(block[at + 2 : at + record].split(b"\0", 1)[0])
                at += record
            if len(strings) != count:
                raise ValueError(f"{table} has {len(strings)} strings where its header says {count}")
            per_language.append(strings)
        tables[table] = per_language
    if position != len(dat):
        raise ValueError(f"{len(dat) - position} bytes left after the text tables")
    return tables


def decode(line: bytes) -> str:
    """A line as the game prints it, upper case: ASCII, and code page 850 for the few accented
    letters (English has one, 0x90, "TOUPÉ"), the accent dropped as a speaker does."""
    text = "".join(chr(byte) if byte < 0x80 else bytes([byte]).decode("cp850") for byte in line)
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(plain.split())


def voice_lines(game: Path) -> list[tuple[Path, str, int]]:
    """(file, speaker prefix, line number) of each voice file, in a stable order."""
    found = []
    for path in game.iterdir():
        match = re.fullmatch(r"([A-Z]*)(\d+)\.ALS", path.name.upper())
        if match and match.group(1) in SPEAKERS:
            found.append((path, match.group(1), int(match.group(2))))
    return sorted(found, key=lambda item: (item[1], item[2]))


def read_voice(path: Path) -> np.ndarray:
    """The file's samples in [-1, 1), trimmed as the engine plays it."""
    raw = path.read_bytes()
    size, start, dropped = TRIMMED.get(path.stem.upper(), (None, 0, 0))
    if len(raw) == size:
        raw = raw[start : len(raw) - dropped]
    return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0


def spoken_lines(game: Path) -> list[dict]:
    """One row per voice file with a line of text: its file, transcript, speaker, seconds, and
    its samples at SAMPLING_RATE."""
    tables = read_texts((game / "drascula.dat").read_bytes())
    rows = []
    for path, prefix, number in voice_lines(game):
        name = path.stem.upper()
        strings = tables[SPEAKERS[prefix][0]][ENGLISH]
        text = decode(strings[number]) if number < len(strings) else ""
        if not text or name in NOT_THE_TEXT:
            continue  # lines the English game does not show (Spanish leftovers), or recorded otherwise
        samples = read_voice(path)
        rows.append(
            {
                "file": f"{name}.wav",
                "transcript": text,
                "speaker": SPEAKERS[prefix][1],
                "seconds": f"{len(samples) / SOURCE_RATE:.2f}",
                "samples": prepare_samples(samples, SOURCE_RATE, SAMPLING_RATE, name),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        rows = spoken_lines(unpacked([PACKAGE], Path(scratch)) / GAME)
    args.out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        soundfile.write(args.out / row["file"], row.pop("samples"), SAMPLING_RATE, subtype="PCM_16")
    write_tsv(args.out / "transcripts.tsv", rows, ("file", "transcript", "speaker", "seconds"))
    minutes = sum(float(row["seconds"]) for row in rows) / 60
    speakers = len({row["speaker"] for row in rows})
    print(f"{args.out}: {len(rows)} lines, {minutes:.1f} min, {speakers} characters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
