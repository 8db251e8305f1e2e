"""recipes/default_model/amazon_queen_speech.py: the game's voice files paired with the lines its
dialogue, cutaway and text files hold, read from small files written here by the formats its
docstring states."""

import io
import struct

import numpy as np
import pytest
import soundfile
from recipe_scripts import recipe_module


@pytest.fixture(scope="module")
def recipe():
    return recipe_module("amazon_queen_speech")


class Payload:
    """Big-endian words and length-prefixed strings, padded from the payload's start."""

    def __init__(self) -> None:
        self.data = bytearray()

    def words(self, *values: int) -> "Payload":
        for value in values:
            self.data += struct.pack(">h", value)
        return self

    def string(self, text: str, align: int = 2) -> "Payload":
        self.data.append(len(text))
        if text:
            self.data += text.encode("latin-1")
            self.data += b"\0" * (-len(self.data) % align)
        return self

    def put_word(self, at: int, value: int) -> None:
        self.data[at : at + 2] = struct.pack(">H", value)


def ambk(payload: bytes) -> bytes:
    """An AmBk header (bank 15, flags 1, the length with its top flag bits 8) and the payload."""
    return b"AmBk" + struct.pack(">HHI", 15, 1, 0x80000000 | (len(payload) + 8)) + b"Datas   " + payload


def bundle_bytes(files: dict[str, bytes], compression: int = 1) -> bytes:
    """A QTBL bundle holding `files`, their data after the table in order."""
    table = b"QTBL" + b"CEM10\0" + b"\0\0" + bytes([compression]) + struct.pack(">H", len(files))
    offset = len(table) + 21 * len(files)
    entries, blobs = b"", b""
    for name, data in files.items():
        entries += name.encode().ljust(12, b"\0") + struct.pack(">BII", 1, offset + len(blobs), len(data))
        blobs += data
    return table + entries + blobs


def dialogue(talk_key: int, joe: list[tuple[int, str]], person: list[tuple[int, str]], again: tuple[str, str]) -> bytes:
    """A .DOG payload with two levels in its (empty) tree, its line tables and second-visit strings."""
    levels = 2
    dog = Payload().words(-levels, 77, talk_key, len(joe), len(person), *([0] * 6), 0, 0, 0, 0, 0)
    assert len(dog.data) == 32
    dog.data += b"\0" * (96 * levels)
    for line_id, text in joe:
        dog.words(0, line_id).string(text, 4)
    dog.put_word(22, len(dog.data))
    for line_id, text in person:
        dog.words(0, line_id).string(text, 4)
    dog.put_word(26, len(dog.data))
    dog.string(again[0]).string(again[1])
    dog.put_word(24, len(dog.data))
    dog.words(0, 0).string("")  # the cutaway block: game state, value, no file
    return bytes(dog.data)


# QUEEN.JAS: 1 room, 2 names, 4 objects, 3 descriptions; object 3 is a person ("Trader Bob"), object
# 4 the (hidden) door, not a person.
NAMES = ["door", "Trader Bob"]
DESCRIPTIONS = ["It's a ^_Door@@.", "c2c.CUT", "Two lines.*FFSecond*GDgrab"]
JOE_RESPONSES = ["(sigh) I can't <gulp> do  that."] + [f"Response {number}" for number in range(2, 40)] + ["Yes/No"]


def game_text_files() -> tuple[bytes, bytes]:
    objects = [(0,) * 8, (0,) * 8, (2, 10, 20, 0, 0, 1, 0, -3), (-1, 0, 0, 1, 0, 1, 0, 0)]
    jas = Payload().words(1, len(NAMES), len(objects), len(DESCRIPTIONS))
    for record in objects:
        jas.words(*record)
    jas.words(99, 99)  # the rest of QUEEN.JAS, not read
    lines = DESCRIPTIONS + NAMES + ["Room"] + [f"verb{number}" for number in range(12)] + JOE_RESPONSES + ["more"]
    return ambk(bytes(jas.data)), "\r\n".join(lines).encode("latin-1")


def cutaway(objects: list[tuple[int, int, int, list[int], list[int]]], sentences: list[str], shift: int = 0) -> bytes:
    """A .CUT payload: per object (number, animation list, execute, people, animation headers), an
    entry string and `sentences`; `shift` moves the game-state offset off where the walk ends."""
    cut = Payload().words(0, -len(objects), 0, 0, 0, 0)
    for number, animations, execute, people, headers in objects:
        cut.words(number, 5, 6, 0, animations, execute, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100)
        cut.words(len(people), *people)
        for header in headers:
            cut.words(header, *range(1, 10))
        if headers:
            cut.words(-2)
    cut.words(0)  # the 2 bytes before the game-state block
    cut.put_word(6, len(cut.data) + shift)
    cut.words(0, 41, 100, 120)  # game state: none; Joe's room and position
    cut.put_word(8, len(cut.data))
    cut.string("*FL")
    for sentence in sentences:
        cut.string(sentence)
    cut.put_word(10, len(cut.data))
    cut.words(0).string("")
    return bytes(cut.data)


CUT_OBJECTS = [
    (0, 0, 0, [], []),  # Joe, talking
    (3, 0, 0, [3, 0], []),  # Trader Bob (a person in QUEEN.JAS), turning on two people
    (4, 1, 1, [], [4, 0]),  # the door, animated: two frames
    (-3, 0, 0, [], []),  # text, shown and spoken as one file
    (-4, 0, 0, [], []),  # text, shown only
    (4, 0, 0, [], []),  # the door, not a person, unanimated
]
CUT_SENTENCES = ["Look out!*GDGot it.*XY00(237,112)Done", "Hi Joe.", "*", "Meanwhile, far away", "#CREDITS", "Creak."]


def test_the_bundle_table(recipe):
    data = bundle_bytes({"A.SB": b"\xff\xe3abc", "LONGNAME.CUT": b"xy"}, compression=1)
    bundle = recipe.read_bundle(data)
    assert (bundle.version, bundle.compression) == ("CEM10", 1)
    assert bundle.entries == {"A.SB": (57, 5), "LONGNAME.CUT": (62, 2)}
    assert bundle.read("A.SB") == b"\xff\xe3abc"
    assert bundle.read("LONGNAME.CUT") == b"xy"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"QTBX" + data[4:], "no QTBL"),
        (lambda data: data[:8], "no QTBL"),
        (lambda data: data[:13] + struct.pack(">H", 9) + data[15:], "table of 9 entries runs past"),
        (lambda data: data[:-1], r"A.SB \(bytes 57 to 62\) runs past the 61 bytes"),
    ],
)
def test_a_damaged_bundle_is_refused(recipe, damage, message):
    data = bundle_bytes({"B.SB": b"", "A.SB": b"\xff\xe3abc"})
    with pytest.raises(ValueError, match=message):
        recipe.read_bundle(damage(data))


def test_the_ambk_header(recipe):
    assert recipe.ambk_payload(ambk(b"\x00\x01xyz")) == b"\x00\x01xyz"
    with pytest.raises(ValueError, match="X.DOG has no AmBk header"):
        recipe.ambk_payload(b"AmBq" + ambk(b"abc")[4:], "X.DOG")
    with pytest.raises(ValueError, match="X.DOG's AmBk header says 3 bytes, it holds 2"):
        recipe.ambk_payload(ambk(b"abc")[:-1], "X.DOG")


def test_strings_pad_from_the_payload_start_and_an_empty_one_is_its_length_byte(recipe):
    data = b"\x03abc\x00\x05hello\x00\x00\x00\x00"
    assert recipe.read_string(data, 0) == ("abc", 4)
    assert recipe.read_string(data, 4) == ("", 5)
    assert recipe.read_string(data, 5) == ("hello", 12)
    assert recipe.read_string(data, 5, 4) == ("hello", 12)
    assert recipe.read_string(data, 0, 4) == ("abc", 4)
    assert recipe.read_string(b"\x00\x02ab", 1, 4) == ("ab", 4)
    with pytest.raises(ValueError, match="a string of 5 bytes at byte 1 runs past the 4 bytes"):
        recipe.read_string(b"\x05abc", 0)
    with pytest.raises(ValueError, match="a string at byte 4 runs past"):
        recipe.read_string(b"\x05abc", 4)


@pytest.mark.parametrize(
    ("sentence", "segments"),
    [
        ("Hello.", [(1, "Hello.")]),
        ("Look out!*GDGot it.*XY00(237,112)Done", [(2, "Got it."), (3, "Done")]),
        ("*FFHello*WT", [(1, ""), (2, "Hello")]),
        ("A*GMB*GMC", [(3, "C")]),
        ("a*FLb*FRc*FFd*FBe*WTf*01g*02h*03i*AOj*WTk", [(n, chr(96 + n)) for n in range(1, 12)]),
        ("", []),
    ],
)
def test_sentences_split_at_star_commands(recipe, sentence, segments):
    assert [tuple(segment) for segment in recipe.split_segments(sentence)] == segments


@pytest.mark.parametrize(
    ("prefix", "segment", "name"),
    [
        (" 2   1P", 1, "020001P1.SB"),
        (" 2  1bJ", 2, "02001BJ2.SB"),
        (" 2SSSSJ", 1, "02SSSSJ1.SB"),
        ("JOE0041", 11, "JOE0041B.SB"),
        ("C41B_03", 16, "C41B_0310.SB"),
        ("ab cdefg h", 10, "AB0CDEFG HA.SB"),  # spaces only in the first 8 characters become '0'
    ],
)
def test_the_voice_file_name_rule(recipe, prefix, segment, name):
    assert recipe.voice_file(prefix, segment) == name


def test_the_cutaway_voice_prefix(recipe):
    assert recipe.cutaway_prefix("C41B", 3) == "C41B_03"
    assert recipe.cutaway_prefix("BLUEP", 12) == "BLUEP12"
    assert recipe.cutaway_prefix("C1", 123) == "C1___12"
    assert recipe.cutaway_prefix("LONGNAME", 4) == "LONGN04"  # the engine writes the number over the 6th


def test_a_dialogues_lines(recipe):
    joe = [(0, "Hello there."), (5, "Who are you?*FLAnd why?"), (0x1A, "")]
    person = [(1, "I am Bob."), (0x1B, "Go away*XY00(237,112)now."), (2, "")]
    lines = recipe.read_dialogue(dialogue(2, joe, person, ("You again?", "Yes, me.")))
    assert [tuple(line) for line in lines] == [
        (" 2   1P", "I am Bob.", False),
        (" 2  1bP", "Go away*XY00(237,112)now.", False),
        (" 2SSSSJ", "Hello there.", True),
        (" 2   0J", "Hello there.", True),
        (" 2   5J", "Who are you?*FLAnd why?", True),
        (" 2XXXXP", "You again?", False),
        (" 2XXXXJ", "Yes, me.", True),
    ]


def test_the_opening_line_is_the_first_joe_record_only_when_its_id_is_0(recipe):
    lines = recipe.read_dialogue(dialogue(12, [(3, "Hi."), (0, "Bye.")], [], ("", "Again.")))
    assert [tuple(line) for line in lines] == [
        ("12   3J", "Hi.", True),
        ("12   0J", "Bye.", True),
        ("12XXXXJ", "Again.", True),
    ]


def test_a_truncated_dialogue_is_refused(recipe):
    dog = dialogue(2, [(0, "Hello there.")], [(1, "I am Bob.")], ("You again?", "Yes, me."))
    with pytest.raises(ValueError, match="runs past"):
        recipe.read_dialogue(dog[:140])
    with pytest.raises(ValueError, match="a word at byte 22 runs past the 20 bytes"):
        recipe.read_dialogue(dog[:20])


def test_the_game_text(recipe):
    jas, jas2 = game_text_files()
    text = recipe.read_game_text(recipe.ambk_payload(jas), jas2)
    assert text.descriptions == DESCRIPTIONS
    assert text.names == NAMES
    assert text.joe_responses == JOE_RESPONSES
    assert text.objects[3] == (2, 10, 20, 0, 0, 1, 0, -3)
    assert [text.object_name(number) for number in range(6)] == [None, None, None, "Trader Bob", "door", None]


def test_damaged_game_text_is_refused(recipe):
    jas, jas2 = game_text_files()
    payload = recipe.ambk_payload(jas)
    with pytest.raises(ValueError, match="QUEEN2.JAS has 57 lines, QUEEN.JAS's counts need 58"):
        recipe.read_game_text(payload, b"\r\n".join(jas2.split(b"\r\n")[:57]))
    with pytest.raises(ValueError, match="QUEEN.JAS: 4 objects run past its 60 bytes"):
        recipe.read_game_text(payload[:60], jas2)


def test_a_cutaways_sentences_and_roles(recipe):
    jas, jas2 = game_text_files()
    text = recipe.read_game_text(recipe.ambk_payload(jas), jas2)
    cut = cutaway(CUT_OBJECTS, CUT_SENTENCES)
    assert recipe.read_cutaway_sentences(cut) == CUT_SENTENCES
    roles = recipe.cutaway_roles(cut, text)
    assert roles.speakers == {1: "JOE", 2: "Trader Bob"}
    assert roles.texts == {4}
    assert [tuple(line) for line in recipe.cutaway_lines("C9.CUT", cut, text)] == [
        ("C9___01", "Look out!*GDGot it.*XY00(237,112)Done", "JOE", "C9.CUT", False),
        ("C9___02", "Hi Joe.", "Trader Bob", "C9.CUT", False),
        ("C9___04", "Meanwhile, far away", "NARRATOR", "C9.CUT", True),
        ("C9___06", "Creak.", "", "C9.CUT", False),
    ]


def test_a_cutaway_walk_that_loses_its_way_leaves_the_speaker_empty(recipe):
    jas, jas2 = game_text_files()
    text = recipe.read_game_text(recipe.ambk_payload(jas), jas2)
    cut = cutaway(CUT_OBJECTS, CUT_SENTENCES, shift=2)
    assert recipe.cutaway_roles(cut, text) is None
    assert [tuple(line) for line in recipe.cutaway_lines("C9.CUT", cut, text)] == [
        ("C9___01", "Look out!*GDGot it.*XY00(237,112)Done", "", "C9.CUT", False),
        ("C9___02", "Hi Joe.", "", "C9.CUT", False),
        ("C9___04", "Meanwhile, far away", "", "C9.CUT", False),
        ("C9___06", "Creak.", "", "C9.CUT", False),
    ]
    unknown_object = [(9, 0, 0, [], [])] + CUT_OBJECTS[1:]
    assert recipe.cutaway_roles(cutaway(unknown_object, CUT_SENTENCES), text) is None
    too_many_people = [(0, 0, 0, list(range(51)), [])]
    assert recipe.cutaway_roles(cutaway(too_many_people, ["Hi."]), text) is None
    bad_header = [(4, 1, 1, [], [1001])]
    assert recipe.cutaway_roles(cutaway(bad_header, ["Hi."]), text) is None


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("It's a ^_Door@@.", "It's a Door."),
        ("(sigh) I can't <gulp> do  that.", "I can't do that."),
        ("I have 3 of them.", None),
        ("Yes/No", None),
        ("You &#$ idiot!", None),
        ("(laughs) <gulp>", None),
        ("...", None),
    ],
)
def test_the_cleaning_rules(recipe, raw, cleaned):
    assert recipe.transcript(raw) == cleaned


def test_each_voice_file_gets_the_one_line_that_reaches_it(recipe):
    jas, jas2 = game_text_files()
    voices = [
        "JOE00011.SB",  # Joe's first stock response, cleaned
        "JOE00401.SB",  # "Yes/No": no transcript
        "JOE00411.SB",  # description 1
        "JOE00421.SB",  # description 2 names a cutaway: not spoken
        "JOE00431.SB",
        "JOE00432.SB",  # the text before *GD plays no file
        "JOE00433.SB",
        "020001P1.SB",  # ONE.DOG and TWO.DOG say different things: left out
        "02SSSSJ1.SB",
        "020000J1.SB",
        "020005J1.SB",
        "020005J2.SB",
        "02XXXXP1.SB",
        "C9___012.SB",
        "C9___013.SB",
        "C9___021.SB",
        "C9___041.SB",
        "C9___061.SB",
        "99SSSSSS.SB",  # a sound effect no line reaches
    ]
    files = {"QUEEN.JAS": jas, "QUEEN2.JAS": jas2}
    files["ONE.DOG"] = ambk(dialogue(2, [(0, "Hello there."), (5, "Who?*FLWhy?")], [(1, "I am Bob.")], ("Again?", "")))
    files["TWO.DOG"] = ambk(dialogue(2, [], [(1, "I am Tom.")], ("", "")))
    files["C9.CUT"] = ambk(cutaway(CUT_OBJECTS, CUT_SENTENCES))
    files.update({voice: b"\xff\xe3" + voice.encode() for voice in voices})
    pairing = recipe.pair_voices(recipe.read_bundle(bundle_bytes(files)))
    assert [(row["voice"], row["file"], row["transcript"], row["speaker"], row["source"]) for row in pairing.rows] == [
        ("020000J1.SB", "020000J1.wav", "Hello there.", "JOE", "ONE.DOG"),
        ("020005J1.SB", "020005J1.wav", "Who?", "JOE", "ONE.DOG"),
        ("020005J2.SB", "020005J2.wav", "Why?", "JOE", "ONE.DOG"),
        ("02SSSSJ1.SB", "02SSSSJ1.wav", "Hello there.", "JOE", "ONE.DOG"),
        ("02XXXXP1.SB", "02XXXXP1.wav", "Again?", "ONE:person", "ONE.DOG"),
        ("C9___012.SB", "C9___012.wav", "Got it.", "JOE", "C9.CUT"),
        ("C9___013.SB", "C9___013.wav", "Done", "JOE", "C9.CUT"),
        ("C9___021.SB", "C9___021.wav", "Hi Joe.", "Trader Bob", "C9.CUT"),
        ("C9___041.SB", "C9___041.wav", "Meanwhile, far away", "NARRATOR", "C9.CUT"),
        ("C9___061.SB", "C9___061.wav", "Creak.", "", "C9.CUT"),
        ("JOE00011.SB", "JOE00011.wav", "I can't do that.", "JOE", "joe_response:1"),
        ("JOE00411.SB", "JOE00411.wav", "It's a Door.", "JOE", "description:1"),
        ("JOE00431.SB", "JOE00431.wav", "Two lines.", "JOE", "description:3"),
        ("JOE00433.SB", "JOE00433.wav", "grab", "JOE", "description:3"),
    ]
    assert (pairing.reached, pairing.ambiguous, pairing.unusable) == (16, 1, 1)


def test_decoding_an_mp3_to_16_khz(recipe):
    time = np.arange(11025) / 11025
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.5 * np.sin(2 * np.pi * 440 * time), 11025, format="MP3", subtype="MPEG_LAYER_III")
    samples = recipe.decode_voice(buffer.getvalue())
    assert samples.shape == (16000,)
    assert samples.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins: a one-second tone
    assert 0.4 < np.abs(samples).max() <= 1.0
