"""recipes/default_model/steel_sky_speech.py: RNC ProPack method 1 and the sky.dnr/sky.dsk index, on
files packed here by the format its docstring states (a writer of its own below, not the recipe's
reader run backwards), and CRC-16 against the standard check value."""

import struct

import numpy as np
import pytest
from recipe_scripts import recipe_module


@pytest.fixture(scope="module")
def recipe():
    return recipe_module("steel_sky_speech")


class BitWriter:
    """The stream as the docstring states it: bits least significant first into little-endian 16-bit
    words, a word taking its place in the stream when its first bit is written, and literal runs
    placed where the next word would start."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.word_at = -1  # where the word being filled lies in `out`
        self.free = 0  # its bits not written yet

    def bits(self, value: int, count: int) -> None:
        for bit in range(count):
            if not self.free:
                self.word_at, self.free = len(self.out), 16
                self.out += b"\0\0"
            word = int.from_bytes(self.out[self.word_at : self.word_at + 2], "little")
            word |= ((value >> bit) & 1) << (16 - self.free)
            self.out[self.word_at : self.word_at + 2] = word.to_bytes(2, "little")
            self.free -= 1

    def raw(self, data: bytes) -> None:
        self.out += data


def canonical_codes(lengths: list[int]) -> dict[int, tuple[int, int]]:
    """{symbol: (code, length)}: shorter codes first, then by symbol."""
    codes, code, previous = {}, 0, 0
    for length, symbol in sorted((length, symbol) for symbol, length in enumerate(lengths) if length):
        code <<= length - previous
        codes[symbol], code, previous = (code, length), code + 1, length
    return codes


def write_value(writer: BitWriter, codes: dict[int, tuple[int, int]], value: int) -> None:
    """A value as its symbol's code (its first bit the code's highest) and the extra bits."""
    symbol = value if value < 2 else value.bit_length()
    code, length = codes[symbol]
    writer.bits(int(format(code, f"0{length}b")[::-1], 2), length)
    if symbol >= 2:
        writer.bits(value - (1 << (symbol - 1)), symbol - 1)


# Each table's code length per symbol (0: none): symbols 0-3 of runs, 0-4 of distances, and of
# match lengths 1-3, 6 and 13 (the long matches of a speech file below).
RAW_LENGTHS, DISTANCE_LENGTHS = [2, 2, 2, 2], [2, 2, 2, 3, 3]
MATCH_LENGTHS = [0, 2, 2, 3, 0, 0, 3] + [0] * 6 + [2]


def rnc_pack(recipe, subchunks: list[tuple[bytes, int, int]], last: bytes) -> tuple[bytes, bytes]:
    """(an RNC method 1 block of one chunk, the data it holds): each sub-chunk a literal run then a
    match (distance back, length), `last` a literal run alone."""
    writer = BitWriter()
    writer.bits(0, 2)  # the two flag bits
    tables = [RAW_LENGTHS, DISTANCE_LENGTHS, MATCH_LENGTHS]
    for lengths in tables:
        writer.bits(len(lengths), 5)
        for length in lengths:
            writer.bits(length, 4)
    raw, distance, match = (canonical_codes(lengths) for lengths in tables)
    writer.bits(len(subchunks) + 1, 16)
    data = bytearray()
    for literal, back, length in subchunks:
        write_value(writer, raw, len(literal))
        writer.raw(literal)
        data += literal
        write_value(writer, distance, back - 1)
        write_value(writer, match, length - 2)
        for _ in range(length):
            data.append(data[-back])
    write_value(writer, raw, len(last))
    writer.raw(last)
    data += last
    body = bytes(writer.out)
    header = recipe.RNC_HEADER.pack(
        recipe.RNC_MAGIC, len(data), len(body), recipe.crc16(data), recipe.crc16(body), 0, 1
    )
    return header + body, bytes(data)


def test_crc16_is_crc16_arc(recipe):
    assert recipe.crc16(b"123456789") == 0xBB3D  # CRC-16/ARC's check value
    assert recipe.crc16(b"") == 0


def test_rnc_unpacks_literal_runs_and_matches_with_both_crcs_checked(recipe):
    # a run of 0 bytes, runs read mid-word, a match that overlaps itself and one that does not
    packed, data = rnc_pack(recipe, [(b"ab", 2, 7), (b"", 9, 3), (b"xyz", 1, 5)], b"tail!")
    assert data == b"ab" + b"abababa" + b"aba" + b"xyz" + b"zzzzz" + b"tail!"
    assert recipe.rnc_unpack(packed) == data
    damaged = bytearray(packed)
    damaged[-3] ^= 0x40
    with pytest.raises(recipe.RncError, match="packed data's CRC"):
        recipe.rnc_unpack(bytes(damaged))
    # a right packed CRC over a stream that unpacks otherwise than the unpacked CRC says
    wrong = bytearray(packed)
    wrong[12:14] = struct.pack(">H", recipe.crc16(data) ^ 1)
    with pytest.raises(recipe.RncError, match="unpacked data's CRC"):
        recipe.rnc_unpack(bytes(wrong))
    with pytest.raises(recipe.RncError, match="no RNC method 1 header"):
        recipe.rnc_unpack(b"RNC\x02" + packed[4:])


def speech_file(recipe, pcm: bytes, pack: bool) -> bytes:
    """A speech file as sky.dsk stores it: the 22-byte header (its size the unpacked file's, header
    included), then the PCM, RNC-packed when `pack`."""
    size = recipe.FILE_HEADER.size + len(pcm)
    flags = (size >> 16) << 8 | (recipe.RNC_PACKED_FLAG if pack else 0)
    header = recipe.FILE_HEADER.pack(flags, 0, 0, 0, 0, 0, size & 0xFFFF, 0, 0, 0, 0)
    if not pack:
        return header + pcm
    packed, data = rnc_pack(recipe, [(pcm[:1], 1, 49), (pcm[50:53], 3, len(pcm) - 93), (pcm[-40:-39], 1, 39)], b"")
    assert data == pcm
    return header + packed


def dnr_entry(number: int, offset: int, size: int, flags: int = 0) -> bytes:
    return struct.pack("<H", number) + offset.to_bytes(3, "little") + (size | flags).to_bytes(3, "little")


def test_the_index_finds_speech_files_and_they_play_their_pcm(recipe):
    pcm = bytes([128] * 50) + bytes([200, 60, 180]) * 2001 + bytes([129] * 40)  # silence, a tone, a step off it
    speech = speech_file(recipe, pcm, pack=True)
    plain = speech_file(recipe, pcm[:100], pack=False)
    disk = speech + bytes(-len(speech) % 16) + plain
    plain_at = len(speech) + (-len(speech) % 16)
    dnr = struct.pack("<I", 4) + b"".join(
        [
            dnr_entry(50007, 0, len(speech)),
            dnr_entry(51000, (plain_at // 16) | recipe.OFFSET_SCALED, len(plain)),  # offset counted in 16s
            dnr_entry(59500, 0, len(speech), recipe.HEADERLESS),  # an intro screen: no header kept
            dnr_entry(60001, 0, len(speech)),  # not speech
        ]
    )
    files = recipe.read_index(dnr, len(disk))
    assert files[51000].offset == plain_at and not files[50007].stored
    assert recipe.voice_files(files) == [(50007, "game"), (51000, "game")]
    samples = recipe.speech_samples(recipe.unpack_file(disk, files[50007]))
    np.testing.assert_array_equal(samples, np.frombuffer(pcm, np.uint8).astype(np.int16) - 128)
    kept = recipe.sounding(samples)
    assert len(kept) == len(pcm) - 50 - 40  # the resting level and a step off it cut at both ends
    plain_samples = recipe.speech_samples(recipe.unpack_file(disk, files[51000]))
    assert len(plain_samples) == 100
    with pytest.raises(ValueError, match="runs past sky.dsk"):
        recipe.read_index(dnr, len(disk) - 1)
    with pytest.raises(ValueError, match="entries need"):
        recipe.read_index(dnr + b"\0", len(disk))
