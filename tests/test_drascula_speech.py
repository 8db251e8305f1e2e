"""recipes/default_model/drascula_speech.py: the game's voice files paired with the lines its text
tables hold, read from a drascula.dat written here by the format its docstring states."""

import struct

import numpy as np
import pytest
from recipe_scripts import recipe_module


@pytest.fixture(scope="module")
def recipe():
    return recipe_module("drascula_speech")


def text_block(strings: list[bytes]) -> bytes:
    """One language's block: 2 bytes, then per string its record length, the string, NUL, padding."""
    block = b"\0\0"
    for string in strings:
        body = string + b"\0"
        body += b"\0" * (-(len(body) + 2) % 4)
        block += struct.pack(">H", len(body) + 2) + body
    return block


def drascula_dat(recipe, texts: dict[str, list[list[bytes]]]) -> bytes:
    """A drascula.dat: two characters in the map, one record in each of the twelve tables, and the
    text tables (`texts`: table -> its strings per language; the other tables one empty line)."""
    languages = len(next(iter(texts.values())))
    dat = b"DRASCULA" + bytes([6]) + struct.pack(">H", 2) + b"\x41\x00\x01\x00" * 2
    for words in recipe.RECORD_WORDS:
        dat += struct.pack(">H", 1) + b"\x00\x07" * words
    dat += struct.pack(">H", languages)
    for table in recipe.TEXT_TABLES:
        per_language = texts.get(table, [[b""]] * languages)
        dat += struct.pack(">H", len(per_language[0]))
        for strings in per_language:
            block = text_block(strings)
            dat += struct.pack(">H", len(block)) + block
    return dat


def voice(seconds: float, frequency: float = 220.0) -> bytes:
    """Unsigned 8-bit samples at 11025 Hz."""
    time = np.arange(int(seconds * 11025)) / 11025
    return (128 + 60 * np.sin(2 * np.pi * frequency * time)).astype(np.uint8).tobytes()


def test_each_voice_file_gets_the_english_line_of_its_speakers_table(recipe, tmp_path):
    texts = {
        "text": [[b"", b"THAT'S A DOOR", b"", b"A TOUP\x90 ON HIM"], [b"", b"ES UNA PUERTA", b"HOLA", b"X"]],
        "textd": [[b"", b"", b"I AM  DRASCULA!"], [b"", b"", b"SOY DRASCULA"]],
        "textvb": [[b"", b"GOOD MORNING"], [b"", b"BUENOS DIAS"]],
    }
    (tmp_path / "drascula.dat").write_bytes(drascula_dat(recipe, texts))
    files = {
        "1.ALS": voice(1.0),  # the hero's line 1
        "2.ALS": voice(0.5),  # line 2 is empty in English (a Spanish leftover): left out
        "3.als": voice(0.4),  # any case; not the trimmed 3.ALS (another size)
        "D2.ALS": voice(2.0),
        "VB1.ALS": voice(0.25),
        "D9.ALS": voice(0.5),  # past the table's lines
        "S1.ALS": voice(0.5),  # a sound effect
        "X1.ALS": voice(0.5),  # no such speaker
        "122.ALS": voice(0.5),  # recorded otherwise than its text (past this table anyway)
    }
    for name, samples in files.items():
        (tmp_path / name).write_bytes(samples)
    rows = recipe.spoken_lines(tmp_path)
    assert [(row["file"], row["transcript"], row["speaker"], row["seconds"]) for row in rows] == [
        ("1.wav", "THAT'S A DOOR", "hero", "1.00"),
        ("3.wav", "A TOUPE ON HIM", "hero", "0.40"),
        ("D2.wav", "I AM DRASCULA!", "drascula", "2.00"),
        ("VB1.wav", "GOOD MORNING", "von-braun", "0.25"),
    ]
    first = rows[0]["samples"]
    assert abs(len(first) - 16000) <= 1  # one second, resampled to 16 kHz
    assert 0.35 < np.abs(first).max() < 0.55  # 60 of 128 steps


def test_the_engines_trim_of_the_english_3_als(recipe, tmp_path):
    size, start, dropped = recipe.TRIMMED["3"]
    raw = bytes([128]) * start + voice(1.0) + bytes([128]) * (size - start - 11025)
    (tmp_path / "3.ALS").write_bytes(raw[:size])
    samples = recipe.read_voice(tmp_path / "3.ALS")
    assert len(samples) == size - start - dropped
    spoken = (np.frombuffer(voice(1.0), np.uint8).astype(np.float32) - 128) / 128
    np.testing.assert_array_equal(samples[:11025], spoken)  # the silence before the line is cut
    assert not samples[11025:].any()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda dat: b"DRASCULB" + dat[8:], "not a version 6"),
        (lambda dat: dat[:8] + bytes([5]) + dat[9:], "not a version 6"),
        (lambda dat: dat + b"\0\0", "2 bytes left"),
    ],
)
def test_a_damaged_dat_is_refused(recipe, damage, message):
    dat = drascula_dat(recipe, {"text": [[b"", b"HELLO"]]})
    assert recipe.read_texts(dat)["text"] == [[b"", b"HELLO"]]
    with pytest.raises(ValueError, match=message):
        recipe.read_texts(damage(dat))


def test_a_truncated_dat_is_refused(recipe):
    dat = drascula_dat(recipe, {"text": [[b"", b"HELLO"]]})
    with pytest.raises((ValueError, struct.error)):
        recipe.read_texts(dat[:-9])
