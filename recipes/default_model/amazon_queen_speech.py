"""Real human voices, acted: the English speech of the CD release of Flight of the Amazon Queen
(Debian main, `flight-of-the-amazon-queen`, (c) 1995 John Passfield and Steven Stamatiadis,
freeware: free to give away, modify and redistribute modified), about 270
minutes in some 6,550 lines by about 120 characters, each line with the text the game shows while
it is said.

    python recipes/default_model/amazon_queen_speech.py build/amazon-queen-speech

Fetches the .deb with `apt-get download` (no install) and writes each spoken line at 16 kHz with a
`transcripts.tsv` (file, transcript, speaker, source, seconds) that wer_table.py reads. Nobody here
produced these voices; the default model never trained on them.

The formats, as ScummVM's queen engine reads them (learned from its resource, logic, talk, cutaway
and sound sources; parsed here). Numbers are big-endian; "word" is 16 bits.

- `queen.1c`, the "rebuilt" CD bundle: b"QTBL", a 6-byte NUL-padded version (CEM10), 2 bytes, a
  compression byte (1: MP3), a u16 entry count, then per entry 21 bytes (ENTRY): a 12-byte
  NUL-padded name, a bundle byte, a u32 offset from the start of the file and a u32 size.
- The AmBk header, 20 bytes in front of every .DOG, .CUT and QUEEN.JAS: b"AmBk", a u16 bank
  number, u16 memory flags, a u32 whose low 28 bits count the 8-byte bank name and the payload (the
  top 4 are flags), then the name (b"Datas   "). Offsets below count from the end of this header.
- Strings: a length byte, that many Latin-1 characters, then padding so that the next field starts
  at a multiple of 2 (in a .DOG's line tables, 4) from the payload's start; an empty string is its
  length byte alone, unpadded.
- `.DOG` (a dialogue): words level count (negative: the player cannot leave), unique key, talk key,
  Joe line count, person line count, 2 x (game state, test value, item), then u16 offsets of the
  person line table (byte 22), the cutaway to run after (24) and the second-visit strings (26).
  From byte 32 the dialogue tree, 96 bytes a level; Joe's line table follows it, at 32 + 96 x
  levels. A line table record: 2 bytes, an i16 line id, the string. The second-visit strings: what
  the person says, then what Joe says, when Joe talks to them again.
- `.CUT` (a cutaway scene): u16 panel mode, i16 object count (negative: cannot be skipped), i16
  final room, then u16 offsets of the game-state block (byte 6), the sentence list (8) and the bank
  names (10). From byte 12 one record per object: 17 i16 words (CUT_OBJECT: the object number
  first, its animation list 5th, execute 6th, the object it copies 13th), an i16 count of people to
  turn on and their words, and, for an animated object, frames until a header word of -2, each a
  header word and 9 words. The sentence list: an entry string, then one string per object.
- `QUEEN.JAS`: u16 counts of rooms, names, objects and descriptions, then per object (numbered from
  1) 8 i16 words: name (a line of the names, negative while hidden), x, y, description, entry
  object, room, state, image (-3 or -4: a person).
- `QUEEN2.JAS` (no AmBk header): Latin-1 lines ended by CRLF: the descriptions, the object names,
  the room names, VERBS verb names, JOE_RESPONSES of Joe's stock responses, then others.
- `.SB`: in this release bare MP3 (MPEG-2 layer III, 11025 Hz, mono) without the 110- or 122-byte
  header of the uncompressed releases.

Which file says which words (the voice-file naming rule):

- The engine speaks a sentence in segments: it splits at every '*' and the two-letter command after
  it (*XY also takes the 11 characters of its coordinates, as in *XY00(237,112)). The text before
  the k-th command (from 1), and after the last, is segment k, played from `<prefix><k in hex>`;
  every command uses up an index, but *GD and *GM (Joe grabs) play no file for the text before them.
- In the first 8 characters of a voice name spaces become '0', then ".SB" is appended; the bundle's
  names are upper case.
- Prefixes: Joe's stock response n is JOE%04d, and his description of thing n JOE%04d of
  JOE_RESPONSES + n. In a .DOG, `%2d%4xP` of the talk key and line id is a person's line, `%2d%4xJ`
  a Joe line; the first Joe record, when its id is 0, is also his opening line `%2dSSSSJ`; the
  second-visit strings are `%2dXXXXP` and `%2dXXXXJ`. In a .CUT the i-th object (from 1) says the
  i-th sentence with prefix: the file's base name, its first 5 characters padded with '_' to 5,
  then %02d of i; a text object (-2, -3) plays its whole sentence as `<prefix>1`.

Speakers: JOE for his lines, `<DOG name>:person` for the other side of a dialogue, NARRATOR for
cutaway text, and for other cutaway lines the name of the object, found by walking the object
records (`cutaway_roles`, best effort).
"""

from __future__ import annotations

import argparse
import io
import re
import struct
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
from debian_packages import unpacked

from edgelalm.constants import SAMPLING_RATE
from edgelalm.errors import EdgelalmError
from edgelalm.files import write_tsv
from edgelalm.runtime.audio import prepare_samples

PACKAGE = "flight-of-the-amazon-queen"  # Debian main: the CD release, speech MP3-compressed
BUNDLE = Path("usr/share/scummvm/flight-of-the-amazon-queen/queen.1c")  # every game file, in one bundle
BUNDLE_MAGIC = b"QTBL"  # a "rebuilt" bundle, its table inside (the originals keep it in the engine)
BUNDLE_HEADER = struct.Struct(">4s6s2xBH")  # magic, version, 2 bytes, compression, entry count
ENTRY = struct.Struct(">12sBII")  # name, bundle, offset, size: 21 bytes
COMPRESSION_MP3 = 1  # the bundle's compression byte: its .SB files are MP3
AMBK_MAGIC = b"AmBk"  # an AMOS memory bank: the game was first written in AMOS on the Amiga
AMBK = struct.Struct(">4sHHI8s")  # magic, bank number, memory flags, flags + length, name: 20 bytes
AMBK_LENGTH_BITS = 0x0FFFFFFF  # the length's low 28 bits; it counts the 8-byte name too
AMBK_NAME_SIZE = 8  # the bank name the length counts before the payload
STRING_ALIGN, DOG_LINE_ALIGN = 2, 4  # strings pad to 2 bytes, a .DOG's line tables to 4
DOG_TREE_START, DOG_LEVEL_SIZE = 32, 96  # the dialogue tree: 6 nodes of 8 words a level
DOG_PERSON_TABLE, DOG_SECOND_VISIT = 22, 26  # byte offsets of those two u16 offsets in a .DOG
CUT_GAME_STATE, CUT_SENTENCES, CUT_OBJECTS = 6, 8, 12  # where a .CUT holds those (the first two are offsets)
CUT_OBJECT = struct.Struct(">17h")  # a cutaway object record: 17 signed words
ANIMATION_END, ANIMATION_FRAME_SIZE = -2, 18  # the header word ending the frames; a frame's 9 words after its header
ANIMATION_HEADER_MAX = 1000  # the engine stops with "Header too large" above this
PEOPLE_MAX = 50  # a sanity bound on a cutaway object's people to turn on; more means the walk is lost
OBJECT_JOE, OBJECT_ROOMFADE = 0, -5  # cutaway objects that are Joe (ROOMFADE: Joe after a fade)
TEXT_OBJECTS = (-2, -3)  # cutaway objects whose sentence is spoken as one file (-4 is shown only)
TEXT_SHOWN_ONLY = -4  # a cutaway object whose sentence is shown, not spoken
PERSON_IMAGES = (-3, -4)  # an object whose image is one of these is a person
JAS_OBJECTS, JAS_OBJECT = 8, struct.Struct(">8h")  # QUEEN.JAS's object records: where, and each one
VERBS = 12  # verb names in QUEEN2.JAS, between the room names and Joe's responses
JOE_RESPONSES = 40  # Joe's stock responses; his descriptions are numbered after them
JOE, NARRATOR = "JOE", "NARRATOR"  # speakers: the hero, and cutaway text read out
SILENT_COMMANDS = ("GD", "GM")  # Joe grabs down / mid: no voice file for the text before them
WALK_COMMAND, WALK_ARGUMENTS = "XY", 11  # *XY00(237,112): a walk, 11 characters after XY
VOICE_NAME_PADDED = 8  # spaces in this many leading characters of a voice name become '0'
CUT_NAME_PADDED = 5  # a cutaway's voice prefix: its base name's first 5 characters, '_'-padded
# Cleaning (`transcript`): the font's glyphs the voice does not say, and sound cues in brackets.
TRADEMARK, MUSIC_NOTE = "^_", "@@"
SOUND_CUE = re.compile(r"\([^)]*\)|<[^>]*>")  # (sigh), <gulp>
# A line holding any of these is dropped: digits (how they are read out is unknown), '/' (menu
# prompts and alternatives) and the '&', '#', '$' of censored swearing ("&#$").
UNSAYABLE = re.compile(r"[0-9/#$&]")


def read_word(data: bytes, offset: int, *, signed: bool = True) -> int:
    """The 16-bit big-endian word at `offset`; ValueError past the end."""
    if offset < 0 or offset + 2 > len(data):
        raise ValueError(f"a word at byte {offset} runs past the {len(data)} bytes")
    return int.from_bytes(data[offset : offset + 2], "big", signed=signed)


def read_string(data: bytes, offset: int, align: int = STRING_ALIGN) -> tuple[str, int]:
    """The length-prefixed string at `offset` and where the next field starts (module docstring)."""
    if offset < 0 or offset >= len(data):
        raise ValueError(f"a string at byte {offset} runs past the {len(data)} bytes")
    length = data[offset]
    offset += 1
    if length == 0:
        return "", offset
    if offset + length > len(data):
        raise ValueError(f"a string of {length} bytes at byte {offset} runs past the {len(data)} bytes")
    text = data[offset : offset + length].decode("latin-1")
    return text, -(-(offset + length) // align) * align


class BundleEntry(NamedTuple):
    offset: int
    size: int


class Bundle(NamedTuple):
    """A queen.1c: its bytes, version, compression byte and {file name: entry}."""

    data: bytes
    version: str
    compression: int
    entries: dict[str, BundleEntry]

    def read(self, name: str) -> bytes:
        entry = self.entries[name]
        return self.data[entry.offset : entry.offset + entry.size]

    def payload(self, name: str) -> bytes:
        """A .DOG's, .CUT's or QUEEN.JAS's data after its AmBk header."""
        return ambk_payload(self.read(name), name)


def read_bundle(data: bytes) -> Bundle:
    """The bundle's table (module docstring); ValueError when it is not one or runs past the data."""
    if len(data) < BUNDLE_HEADER.size or data[: len(BUNDLE_MAGIC)] != BUNDLE_MAGIC:
        raise ValueError("not a rebuilt queen.1c bundle (no QTBL)")
    _, version, compression, count = BUNDLE_HEADER.unpack_from(data)
    end = BUNDLE_HEADER.size + count * ENTRY.size
    if end > len(data):
        raise ValueError(f"the table of {count} entries runs past the {len(data)} bytes")
    entries = {}
    for position in range(BUNDLE_HEADER.size, end, ENTRY.size):
        raw_name, _, offset, size = ENTRY.unpack_from(data, position)
        name = raw_name.split(b"\0", 1)[0].decode("latin-1")
        if offset + size > len(data):
            raise ValueError(f"{name} (bytes {offset} to {offset + size}) runs past the {len(data)} bytes")
        entries[name] = BundleEntry(offset, size)
    return Bundle(data, version.split(b"\0", 1)[0].decode("latin-1"), compression, entries)


def ambk_payload(data: bytes, name: str = "a file") -> bytes:
    """The data after an AmBk header (module docstring); ValueError when the header is wrong."""
    if len(data) < AMBK.size or data[: len(AMBK_MAGIC)] != AMBK_MAGIC:
        raise ValueError(f"{name} has no AmBk header")
    _, _, _, flags_and_length, _ = AMBK.unpack_from(data)
    length = (flags_and_length & AMBK_LENGTH_BITS) - AMBK_NAME_SIZE
    if length != len(data) - AMBK.size:
        raise ValueError(f"{name}'s AmBk header says {length} bytes, it holds {len(data) - AMBK.size}")
    return data[AMBK.size :]


class ObjectRecord(NamedTuple):
    """A QUEEN.JAS object: its 8 words."""

    name: int
    x: int
    y: int
    description: int
    entry_object: int
    room: int
    state: int
    image: int


class GameText(NamedTuple):
    """QUEEN.JAS's objects (index 0 unused) with the lines of QUEEN2.JAS the pairing needs."""

    objects: list[ObjectRecord | None]
    descriptions: list[str]
    names: list[str]
    joe_responses: list[str]

    def object_name(self, number: int) -> str | None:
        """Object `number`'s name, shown or hidden; None when there is no such object or name."""
        if not 0 < number < len(self.objects):
            return None
        record = self.objects[number]
        line = abs(record.name) if record else 0
        return self.names[line - 1] if 1 <= line <= len(self.names) else None


def read_game_text(jas: bytes, jas2: bytes) -> GameText:
    """QUEEN.JAS's payload and QUEEN2.JAS (module docstring); ValueError when either is too short."""
    rooms, names, objects, descriptions = (read_word(jas, 2 * index, signed=False) for index in range(4))
    end = JAS_OBJECTS + objects * JAS_OBJECT.size
    if end > len(jas):
        raise ValueError(f"QUEEN.JAS: {objects} objects run past its {len(jas)} bytes")
    records: list[ObjectRecord | None] = [None]
    records += [ObjectRecord(*JAS_OBJECT.unpack_from(jas, at)) for at in range(JAS_OBJECTS, end, JAS_OBJECT.size)]
    lines = jas2.decode("latin-1").split("\r\n")
    joe_at = descriptions + names + rooms + VERBS
    if joe_at + JOE_RESPONSES > len(lines):
        raise ValueError(f"QUEEN2.JAS has {len(lines)} lines, QUEEN.JAS's counts need {joe_at + JOE_RESPONSES}")
    return GameText(
        objects=records,
        descriptions=lines[:descriptions],
        names=lines[descriptions : descriptions + names],
        joe_responses=lines[joe_at : joe_at + JOE_RESPONSES],
    )


class Segment(NamedTuple):
    number: int  # from 1, as in the voice name
    text: str


def split_segments(sentence: str) -> list[Segment]:
    """The segments the engine speaks and their numbers (module docstring: *XX commands)."""
    segments = []
    number, start, position = 1, 0, 0
    while position < len(sentence):
        if sentence[position] != "*":
            position += 1
            continue
        text = sentence[start:position]
        command = sentence[position + 1 : position + 3]
        position += 3 + (WALK_ARGUMENTS if command == WALK_COMMAND else 0)
        if command not in SILENT_COMMANDS:
            segments.append(Segment(number, text))
        number += 1
        start = position
    if start < len(sentence):
        segments.append(Segment(number, sentence[start:]))
    return segments


def voice_file(prefix: str, segment: int) -> str:
    """The bundle name of `prefix`'s segment `segment`: hex number, spaces to '0', upper case, .SB."""
    name = f"{prefix}{segment:x}"
    name = name[:VOICE_NAME_PADDED].replace(" ", "0") + name[VOICE_NAME_PADDED:]
    return name.upper() + ".SB"


def cutaway_prefix(base: str, index: int) -> str:
    """Object `index`'s voice prefix in cutaway `base` (the engine writes the number over a longer name)."""
    return base[:CUT_NAME_PADDED].ljust(CUT_NAME_PADDED, "_") + f"{index:02d}"[:2]


class DialogueLine(NamedTuple):
    prefix: str
    sentence: str
    joe: bool  # said by Joe, else by the person he talks to


def line_table(payload: bytes, offset: int, count: int) -> list[tuple[int, str]]:
    """(line id, string) of a .DOG line table's `count` records."""
    records = []
    for _ in range(count):
        line_id = read_word(payload, offset + 2)
        text, offset = read_string(payload, offset + 4, DOG_LINE_ALIGN)
        records.append((line_id, text))
    return records


def read_dialogue(payload: bytes) -> list[DialogueLine]:
    """The lines a .DOG can speak, with their voice prefixes (module docstring); empty ones left out."""
    levels = abs(read_word(payload, 0))
    talk_key, joe_count, person_count = (read_word(payload, at) for at in (4, 6, 8))
    person_table = read_word(payload, DOG_PERSON_TABLE, signed=False)
    second_visit = read_word(payload, DOG_SECOND_VISIT, signed=False)
    lines = [
        DialogueLine(f"{talk_key:2d}{line_id:4x}P", text, False)
        for line_id, text in line_table(payload, person_table, person_count)
        if text
    ]
    joe_table = line_table(payload, DOG_TREE_START + DOG_LEVEL_SIZE * levels, joe_count)
    for number, (line_id, text) in enumerate(joe_table):
        if number == 0 and line_id == 0 and text:
            lines.append(DialogueLine(f"{talk_key:2d}SSSSJ", text, True))
        if text:
            lines.append(DialogueLine(f"{talk_key:2d}{line_id:4x}J", text, True))
    person_again, offset = read_string(payload, second_visit)
    joe_again, _ = read_string(payload, offset)
    if person_again:
        lines.append(DialogueLine(f"{talk_key:2d}XXXXP", person_again, False))
    if joe_again:
        lines.append(DialogueLine(f"{talk_key:2d}XXXXJ", joe_again, True))
    return lines


def read_cutaway_sentences(payload: bytes) -> list[str]:
    """A .CUT's sentences, the i-th (from 0) said by object i + 1; the entry string left out."""
    objects = abs(read_word(payload, 2))
    _, offset = read_string(payload, read_word(payload, CUT_SENTENCES, signed=False))
    sentences = []
    for _ in range(objects):
        sentence, offset = read_string(payload, offset)
        sentences.append(sentence)
    return sentences


class CutawayRoles(NamedTuple):
    """Who says a cutaway's sentences: {object index from 1: speaker} and the text objects."""

    speakers: dict[int, str]
    texts: frozenset[int]


def cutaway_roles(payload: bytes, text: GameText) -> CutawayRoles | None:
    """Best effort: walk a .CUT's object records as the engine's getObjectType reads them, to learn
    which objects are people (and their names) and which are text. The walk uses the objects' images
    as QUEEN.JAS starts the game, not as play has changed them, so a few names are wrong (a "note"
    in C41B). None when the walk loses its way: a record past the data, an unknown object, too many
    people, an animation header over ANIMATION_HEADER_MAX, or an end that is not 2 bytes before the
    game-state block (as it is in every file the walk reads right)."""
    try:
        objects = abs(read_word(payload, 2))
        position = CUT_OBJECTS
        speakers: dict[int, str] = {}
        texts: set[int] = set()
        for index in range(1, objects + 1):
            if position + CUT_OBJECT.size > len(payload):
                return None
            record = CUT_OBJECT.unpack_from(payload, position)
            position += CUT_OBJECT.size
            number, animations, execute, copied = record[0], record[4], record[5], record[12]
            people = read_word(payload, position)
            if not 0 <= people <= PEOPLE_MAX:
                return None
            position += 2 + 2 * people
            kind = "animation"
            if number > 0 and not animations:
                if number >= len(text.objects):
                    return None
                record_of = text.objects[number]
                if record_of and record_of.image in PERSON_IMAGES:
                    kind = "person"
            elif number in (OBJECT_JOE, OBJECT_ROOMFADE) and not animations:
                kind = "person"
            if copied > 0:
                kind = "none"
            if number in TEXT_OBJECTS:
                kind = "text"
            elif number == TEXT_SHOWN_ONLY:
                kind = "shown"
            if kind == "animation" and not execute:
                kind = "none"
            if kind == "animation":
                while (header := read_word(payload, position)) != ANIMATION_END:
                    if header > ANIMATION_HEADER_MAX:
                        return None
                    position += ANIMATION_FRAME_SIZE + 2
                position += 2
            elif kind == "person":
                if number in (OBJECT_JOE, OBJECT_ROOMFADE):
                    speakers[index] = JOE
                elif name := text.object_name(number):
                    speakers[index] = name
            elif kind == "text":
                texts.add(index)
        if position + 2 != read_word(payload, CUT_GAME_STATE, signed=False):
            return None
    except ValueError:
        return None
    return CutawayRoles(speakers, frozenset(texts))


class SpokenLine(NamedTuple):
    """A sentence the game speaks from voice files `<prefix><segment>`, or, `whole`, one file `<prefix>1`."""

    prefix: str
    sentence: str
    speaker: str
    source: str
    whole: bool = False


def joe_lines(text: GameText) -> list[SpokenLine]:
    """Joe's stock responses and his descriptions of things (those naming a .CUT or .DOG run it instead)."""
    lines = [
        SpokenLine(f"JOE{number:04d}", response, JOE, f"joe_response:{number}")
        for number, response in enumerate(text.joe_responses, 1)
    ]
    for number, description in enumerate(text.descriptions, 1):
        if not description.upper().endswith((".CUT", ".DOG")):
            lines.append(SpokenLine(f"JOE{number + JOE_RESPONSES:04d}", description, JOE, f"description:{number}"))
    return lines


def cutaway_lines(name: str, payload: bytes, text: GameText) -> list[SpokenLine]:
    """A .CUT's spoken sentences: not empty, not "*" (nothing said), not "#..." (credits)."""
    base = name.rsplit(".", 1)[0]
    roles = cutaway_roles(payload, text)
    lines = []
    for index, sentence in enumerate(read_cutaway_sentences(payload), 1):
        if not sentence or sentence == "*" or sentence.startswith("#"):
            continue
        prefix = cutaway_prefix(base, index)
        if roles and index in roles.texts:
            lines.append(SpokenLine(prefix, sentence, NARRATOR, name, whole=True))
        else:
            speaker = roles.speakers.get(index, "") if roles else ""
            lines.append(SpokenLine(prefix, sentence, speaker, name))
    return lines


def spoken_lines(bundle: Bundle) -> list[SpokenLine]:
    """Every line of Joe's, of the dialogues and of the cutaways."""
    text = read_game_text(bundle.payload("QUEEN.JAS"), bundle.read("QUEEN2.JAS"))
    lines = joe_lines(text)
    for name in sorted(bundle.entries):
        if name.endswith(".DOG"):
            person = name.rsplit(".", 1)[0] + ":person"
            for line in read_dialogue(bundle.payload(name)):
                lines.append(SpokenLine(line.prefix, line.sentence, JOE if line.joe else person, name))
    for name in sorted(bundle.entries):
        if name.endswith(".CUT"):
            lines += cutaway_lines(name, bundle.payload(name), text)
    return lines


def transcript(raw: str) -> str | None:
    """The words of a line: TRADEMARK and MUSIC_NOTE removed, SOUND_CUEs dropped, spaces collapsed;
    None when it holds an UNSAYABLE character or no letter."""
    text = raw.replace(TRADEMARK, "").replace(MUSIC_NOTE, "")
    if UNSAYABLE.search(text):
        return None
    text = " ".join(SOUND_CUE.sub(" ", text).split())
    return text if re.search("[A-Za-z]", text) else None


class Said(NamedTuple):
    """One line that reaches a voice file."""

    text: str
    speaker: str
    source: str


class Pairing(NamedTuple):
    """Rows (file, transcript, speaker, source: the voice file's bundle name under "voice") and counts."""

    rows: list[dict[str, str]]
    reached: int  # voice files some line reaches
    ambiguous: int  # reached by two different lines: left out
    unusable: int  # the line is no transcript (`transcript`): left out


def pair_voices(bundle: Bundle) -> Pairing:
    """Each voice file in the bundle that exactly one line's text reaches, with that line cleaned."""
    reached: dict[str, list[Said]] = {}
    for line in spoken_lines(bundle):
        segments = [Segment(1, line.sentence)] if line.whole else split_segments(line.sentence)
        for number, text in segments:
            voice = voice_file(line.prefix, number)
            if voice in bundle.entries:
                reached.setdefault(voice, []).append(Said(text.strip(), line.speaker, line.source))
    rows, ambiguous, unusable = [], 0, 0
    for voice in sorted(reached):
        said = reached[voice]
        if len({item.text for item in said}) > 1:
            ambiguous += 1
            continue
        words = transcript(said[0].text)
        if words is None:
            unusable += 1
            continue
        rows.append(
            {
                "voice": voice,
                "file": voice.rsplit(".", 1)[0] + ".wav",
                "transcript": words,
                "speaker": "|".join(sorted({item.speaker for item in said if item.speaker})),
                "source": "|".join(sorted({item.source for item in said})),
            }
        )
    return Pairing(rows, len(reached), ambiguous, unusable)


def decode_voice(mp3: bytes, name: str = "a voice file") -> np.ndarray:
    """An MP3's samples, mono, at SAMPLING_RATE, in [-1, 1]."""
    samples, rate = soundfile.read(io.BytesIO(mp3), dtype="float32", always_2d=True)
    return np.clip(prepare_samples(samples, rate, SAMPLING_RATE, name), -1.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = read_bundle((unpacked([PACKAGE], Path(scratch)) / BUNDLE).read_bytes())
    if bundle.compression != COMPRESSION_MP3:
        raise SystemExit(f"{BUNDLE.name}: compression {bundle.compression}, not the MP3 ({COMPRESSION_MP3}) of the CD")
    pairing = pair_voices(bundle)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, undecodable = [], 0
    for row in pairing.rows:
        try:
            samples = decode_voice(bundle.read(row["voice"]), row["voice"])
        except (RuntimeError, ValueError, EdgelalmError) as error:  # libsndfile's errors are RuntimeErrors
            print(f"{row['voice']}: {error}", file=sys.stderr)
            undecodable += 1
            continue
        soundfile.write(args.out / row["file"], samples, SAMPLING_RATE, subtype="PCM_16")
        rows.append({**row, "seconds": f"{len(samples) / SAMPLING_RATE:.3f}"})
    write_tsv(args.out / "transcripts.tsv", rows, ("file", "transcript", "speaker", "source", "seconds"))
    minutes = sum(float(row["seconds"]) for row in rows) / 60
    speakers = len({row["speaker"] for row in rows if row["speaker"]})
    voices = sum(name.endswith(".SB") for name in bundle.entries)
    print(
        f"{args.out}: {len(rows)} lines, {minutes:.1f} min, {speakers} speakers; of {voices} voice files "
        f"{pairing.reached} have a line, {pairing.ambiguous} two, {pairing.unusable} one without a usable "
        f"transcript, {undecodable} did not decode",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
