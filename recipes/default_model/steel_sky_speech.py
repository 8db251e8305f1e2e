"""Real human voices, acted: the English speech of the CD release of Beneath a Steel Sky (Debian
main, `beneath-a-steel-sky`, version 0.0372, (c) Revolution Software, freeware: free to give away
and to modify, a modified version marked as such), about 117 minutes in 3,576 lines, without their
texts.

    python recipes/default_model/steel_sky_speech.py build/steel-sky-speech

Fetches the .deb with `apt-get download` (no install) and writes each spoken line at 16 kHz with a
`transcripts.tsv` (file, transcript, speaker, source, seconds) whose transcript column is EMPTY: the
game's texts are Huffman-coded with a tree that is not in the game files, so none is read here; a
separate labelling step fills them in. Nobody here produced these voices; the default model never
trained on them.

The formats, as ScummVM's sky engine reads them (learned from its disk, sound, intro and RNC
sources; parsed here). Numbers are little-endian unless said otherwise.

- `sky.dnr` indexes `sky.dsk`: a u32 entry count (5097 in v0.0372), then 8 bytes an entry: a u16
  file number, a 24-bit offset into sky.dsk (bit 23 set: the low 23 bits times 16), and a 24-bit
  field whose low 22 bits are the stored size, bit 22 "the unpacked file leaves the header out"
  and bit 23 "stored as is, not compressed".
- Every file starts with a 22-byte header of 11 u16 words. The first, flags: bit 7 set means the
  rest is RNC-compressed (when an RNC header follows: the engine takes a flagged file without one
  as it is), and its high byte holds bits 16-23 of the unpacked size; the seventh
  (s_tot_size) its low 16 bits. The unpacked size counts the header when the file keeps it.
- RNC ProPack method 1, after the header: b"RNC\\x01", then big-endian a u32 unpacked size, a u32
  packed size, a u16 CRC of the unpacked data and one of the packed data (CRC-16, reflected
  polynomial 0xA001, initial value 0), a leeway byte and a chunk count byte: 18 bytes. The packed
  data is a bit stream, read least significant bit first from little-endian 16-bit words, with
  runs of raw bytes between them. Two flag bits open it; then per chunk three Huffman tables
  (literal run lengths, match distances, match lengths: a 5-bit symbol count, then a 4-bit code
  length per symbol, 0 for none; canonical codes, shorter first, then by symbol, bit-reversed
  since the stream is read from the low end), a 16-bit sub-chunk count, and per sub-chunk a
  literal run and, but for the last, a match. A decoded symbol v of 0 or 1 is the value v; a larger
  one is (1 << (v - 1)) | the next v - 1 bits. The literal run is that many bytes copied from the
  byte stream where the next unread word would start; the bits left over from the word being read
  stay in use. A match copies (length value + 2) bytes from (distance value + 1) bytes back.
- Speech: the game's spoken lines are files 50000 to 59493 (numbered as their texts, by section
  of the game's text and line in it); a file keeps its header, and the engine plays its unpacked
  bytes after the header, s_tot_size - 22 of them, as unsigned 8-bit mono PCM at 11025 Hz.
- The CD intro's voice-overs (CDV_00 to CDV_87) are files 59500 to 59672 that keep their header,
  stored the same way; the files between them (screens, palettes, animations) leave it out or are
  not compressed, and 59494 to 59499 are its background sounds.

Speakers: "game" for the game's lines (the files do not say who speaks), "intro" for the
intro's. Lines shorter than MIN_SECONDS once the silence at either end is cut
(samples within SILENCE_LEVEL of the resting level 128), or silent throughout, are left out.

Measured on v0.0372: 3,579 speech files (3,491 of the game's lines, 88 of the intro), 60.9 MB
packed, 119.5 minutes unpacked; every one of the 4,764 RNC-packed files in sky.dsk, speech or
not, unpacks to its size with both CRCs right. Three lines are under MIN_SECONDS, none silent:
3,576 written, 116.6 minutes, in about 35 s.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
from debian_packages import unpacked

from edgelalm.constants import SAMPLING_RATE
from edgelalm.files import atomic_folder, write_tsv
from edgelalm.progress import Bar
from edgelalm.runtime.audio import prepare_samples

PACKAGE = "beneath-a-steel-sky"  # Debian main: the freeware CD release (v0.0372)
GAME = Path("usr/share/scummvm/beneath-a-steel-sky")
SOURCE = "beneath-a-steel-sky"
DNR_COUNT, DNR_ENTRY = struct.Struct("<I"), 8  # the entry count; each entry's bytes
OFFSET_SCALED, OFFSET_BITS, OFFSET_SCALE = 1 << 23, 0x7FFFFF, 16  # an offset with bit 23 set counts 16 bytes
SIZE_BITS, HEADERLESS, STORED = 0x3FFFFF, 1 << 22, 1 << 23  # the size field: size, and the two flags
FILE_HEADER = struct.Struct("<11H")  # flags, s_x, s_y, s_width, s_height, s_sp_size, s_tot_size, ...
RNC_PACKED_FLAG = 0x80  # the header's flag bit saying RNC-compressed
RNC_HEADER = struct.Struct(">4sIIHHBB")  # magic, unpacked size, packed size, unpacked CRC, packed CRC, leeway, chunks
RNC_MAGIC = b"RNC\x01"  # method 1
SPEECH_FIRST = 50000  # speech files from here on
SPEECH_LAST = 59493  # the game's last line; 59494 to 59499 are the intro's background sounds
INTRO_FIRST, INTRO_LAST = 59500, 59672  # the CD intro's voice-overs (those that keep their header)
SOURCE_RATE = 11025  # every line of v0.0372 (0.0368 had two at 22050: ScummVM's bug #897775)
SILENCE_LEVEL = 2  # |sample - resting level| up to this (of 128) is silence at either end
MIN_SECONDS = 0.3  # shorter lines (after the ends are cut) are left out


class RncError(ValueError):
    """A packed file that does not unpack, or unpacks to data whose CRC is wrong."""


def crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC_TABLE = crc16_table()


def crc16(data: bytes) -> int:
    """CRC-16 with the reflected polynomial 0xA001 from 0 (RNC's, as CRC-16/ARC)."""
    crc, table = 0, CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


class Huffman(NamedTuple):
    """A lookup table over the next `bits` bits of the stream: each entry's symbol and code length
    (0 where no code matches)."""

    bits: int
    symbols: list[int]
    lengths: list[int]


def huffman(code_lengths: list[int]) -> Huffman:
    """The canonical code of `code_lengths` (symbol i's length; 0: none), indexed by the stream's
    next bits, least significant first (module docstring); RncError when the lengths over-fill it."""
    bits = max(code_lengths)
    size = 1 << bits
    symbols, lengths = [0] * size, [0] * size
    code = 0  # the next code, left-aligned in 16 bits
    for length in range(1, bits + 1):
        for symbol, symbol_length in enumerate(code_lengths):
            if symbol_length != length:
                continue
            if code >> 16:
                raise RncError("a Huffman table's code lengths over-fill it")
            reversed_code = int(format(code >> (16 - length), f"0{length}b")[::-1], 2)
            step = 1 << length
            symbols[reversed_code::step] = [symbol] * (size >> length)
            lengths[reversed_code::step] = [length] * (size >> length)
            code += 1 << (16 - length)
    return Huffman(bits, symbols, lengths)


def rnc_unpack(packed: bytes) -> bytes:
    """The data of an RNC method 1 block (module docstring), both CRCs checked; RncError otherwise."""
    if len(packed) < RNC_HEADER.size or packed[: len(RNC_MAGIC)] != RNC_MAGIC:
        raise RncError("no RNC method 1 header")
    _, unpacked_size, packed_size, unpacked_crc, packed_crc, _, chunks = RNC_HEADER.unpack_from(packed)
    body = packed[RNC_HEADER.size : RNC_HEADER.size + packed_size]
    if len(body) != packed_size:
        raise RncError(f"{packed_size} packed bytes declared, {len(body)} there")
    if crc16(body) != packed_crc:
        raise RncError("the packed data's CRC is wrong")
    data = _unpack_m1(body, chunks, unpacked_size)
    if len(data) != unpacked_size:
        raise RncError(f"unpacked {len(data)} bytes where the header says {unpacked_size}")
    if crc16(data) != unpacked_crc:
        raise RncError("the unpacked data's CRC is wrong")
    return data


def _unpack_m1(body: bytes, chunks: int, unpacked_size: int) -> bytes:
    """The bit stream's decoding. `bits` holds `count` (0 to 15) bits left of the words read so far
    (and, above them, perhaps bits of the word at `pos`, which OR-ing that word in again leaves
    as they are); `pos` is where the next word, or a literal run, starts; `words[i]` is the
    little-endian word at byte i (zeros past the end, where the reader may look ahead)."""
    padded = np.frombuffer(body + bytes(4), dtype=np.uint8).astype(np.int64)
    words: list[int] = (padded[:-1] | (padded[1:] << 8)).tolist()
    bits, count, pos = 0, 0, 0

    def read(n: int) -> int:
        nonlocal bits, count, pos
        window = bits | words[pos] << count
        if n > count:
            pos += 2
            count += 16
        bits, count = window >> n, count - n
        return window & ((1 << n) - 1)

    def decode(table: Huffman | None) -> int:
        if table is None:
            raise RncError("a value read with an empty Huffman table")
        index = (bits | words[pos] << count) & ((1 << table.bits) - 1)  # the next bits, not read yet
        code_length = table.lengths[index]
        if not code_length:
            raise RncError("a bit pattern no code of the table matches")
        read(code_length)
        symbol = table.symbols[index]
        return symbol if symbol < 2 else (1 << (symbol - 1)) | read(symbol - 1)

    def read_table(previous: Huffman | None) -> Huffman | None:
        symbols = read(5)
        if not symbols:
            return previous  # the engine leaves the table as it was
        code_lengths = [read(4) for _ in range(symbols)]
        return huffman(code_lengths) if any(code_lengths) else None

    read(2)  # two flag bits
    out = bytearray()
    raw: Huffman | None = None
    distance: Huffman | None = None
    length: Huffman | None = None
    for _ in range(chunks):
        raw, distance, length = read_table(raw), read_table(distance), read_table(length)
        for subchunk in range(read(16), 0, -1):
            run = decode(raw)
            if run:
                if pos + run > len(body):
                    raise RncError("a literal run past the packed data")
                out += body[pos : pos + run]
                pos += run
                bits &= (1 << count) - 1  # the bits above `count` were the old word's
            if subchunk == 1:
                break
            offset = decode(distance) + 1
            size = decode(length) + 2
            start = len(out) - offset
            if start < 0:
                raise RncError("a match reaching back before the start")
            if offset >= size:
                out += out[start : start + size]
            else:  # overlapping: the last `offset` bytes repeat
                out += (out[start:] * (size // offset + 1))[:size]
        if len(out) > unpacked_size:
            raise RncError("more data than the header says")
    return bytes(out)


class DiskFile(NamedTuple):
    """A sky.dnr entry: where the file lies in sky.dsk, its stored size and its two flags."""

    offset: int
    size: int
    headerless: bool  # unpacked, the file leaves its header out
    stored: bool  # not compressed


def read_index(dnr: bytes, disk_size: int) -> dict[int, DiskFile]:
    """{file number: entry} of a sky.dnr (module docstring); ValueError when it is not one or an
    entry runs past sky.dsk's `disk_size` bytes."""
    if len(dnr) < DNR_COUNT.size:
        raise ValueError("sky.dnr is too short for its entry count")
    (count,) = DNR_COUNT.unpack_from(dnr)
    if len(dnr) != DNR_COUNT.size + count * DNR_ENTRY:
        raise ValueError(f"sky.dnr holds {len(dnr)} bytes; {count} entries need {DNR_COUNT.size + count * DNR_ENTRY}")
    files = {}
    for at in range(DNR_COUNT.size, len(dnr), DNR_ENTRY):
        number = int.from_bytes(dnr[at : at + 2], "little")
        offset = int.from_bytes(dnr[at + 2 : at + 5], "little")
        size_and_flags = int.from_bytes(dnr[at + 5 : at + 8], "little")
        if offset & OFFSET_SCALED:
            offset = (offset & OFFSET_BITS) * OFFSET_SCALE
        entry = DiskFile(
            offset, size_and_flags & SIZE_BITS, bool(size_and_flags & HEADERLESS), bool(size_and_flags & STORED)
        )
        if entry.offset + entry.size > disk_size:
            raise ValueError(
                f"sky.dnr: file {number} (bytes {entry.offset} to {entry.offset + entry.size}) runs past sky.dsk"
            )
        files[number] = entry
    return files


def unpack_file(disk: bytes, entry: DiskFile) -> bytes:
    """A file as the engine loads it: unpacked (both RNC CRCs checked), with its header unless it
    leaves it out; RncError when it does not unpack, ValueError when it is too short for a header."""
    data = disk[entry.offset : entry.offset + entry.size]
    if len(data) < FILE_HEADER.size:
        raise ValueError(f"{len(data)} bytes: too short for the {FILE_HEADER.size}-byte file header")
    packed = data[FILE_HEADER.size :]
    if entry.stored or not data[0] & RNC_PACKED_FLAG or packed[: len(RNC_MAGIC)] != RNC_MAGIC:
        return data  # the engine, too, takes a flagged file without an RNC header as it is
    unpacked_data = rnc_unpack(packed)
    return unpacked_data if entry.headerless else data[: FILE_HEADER.size] + unpacked_data


def speech_samples(data: bytes) -> np.ndarray:
    """The unsigned 8-bit PCM a speech file plays (after its header, as many bytes as the header
    says), centred on 0 (the resting level 128 subtracted); ValueError when the header's size is
    not the data's."""
    header = FILE_HEADER.unpack_from(data)
    size = (header[0] >> 8) << 16 | header[6]  # the flags' high byte, then s_tot_size
    if size != len(data):
        raise ValueError(f"the header says {size} bytes, the file unpacks to {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=FILE_HEADER.size).astype(np.int16) - 128


def sounding(samples: np.ndarray) -> np.ndarray:
    """`samples` with the silence at either end cut (samples within SILENCE_LEVEL of 0); empty
    when all of it is silence."""
    loud = np.flatnonzero(np.abs(samples) > SILENCE_LEVEL)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples[:0]


def speaker_of(number: int) -> str | None:
    """The speaker column of file `number`: "game" for a game line's, "intro" for the intro's range
    (module docstring); None for other file numbers."""
    if INTRO_FIRST <= number <= INTRO_LAST:
        return "intro"
    return "game" if SPEECH_FIRST <= number <= SPEECH_LAST else None


def voice_files(files: dict[int, DiskFile]) -> list[tuple[int, str]]:
    """(file number, speaker) of each speech file: a game line's or an intro voice-over (those keep
    their header and are compressed; the intro's other files are not voices)."""
    voices = []
    for number in sorted(files):
        speaker = speaker_of(number)
        entry = files[number]
        if speaker == "intro" and (entry.headerless or entry.stored):
            continue
        if speaker is not None:
            voices.append((number, speaker))
    return voices


def is_output_file(name: str) -> bool:
    """Whether a name is one this recipe writes (an earlier output holding others is not replaced)."""
    return name == "transcripts.tsv" or name.endswith(".wav")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        game = unpacked([PACKAGE], Path(scratch)) / GAME
        dnr, disk = (game / "sky.dnr").read_bytes(), (game / "sky.dsk").read_bytes()
    files = read_index(dnr, len(disk))
    voices = voice_files(files)
    started = time.perf_counter()
    rows: list[dict[str, str]] = []
    failed: dict[str, int] = {}  # why a file did not unpack: how many
    silent = short = 0
    with (
        atomic_folder(args.out, force=True, marker="transcripts.tsv", owned=is_output_file) as staging,
        Bar(len(voices), f"{PACKAGE} -> {args.out}") as bar,
    ):
        for number, speaker in voices:
            bar.update(advance=1, status=f"{len(rows)} lines")
            try:
                samples = speech_samples(unpack_file(disk, files[number]))
            except ValueError as error:  # RncError among them
                bar.note(f"file {number}: {error}")
                failed[str(error)] = failed.get(str(error), 0) + 1
                continue
            kept = sounding(samples)
            if not kept.size:
                silent += 1
                continue
            if kept.size < MIN_SECONDS * SOURCE_RATE:
                short += 1
                continue
            audio = prepare_samples(kept.astype(np.float32) / 128.0, SOURCE_RATE, SAMPLING_RATE, f"file {number}")
            name = f"{number}.wav"
            soundfile.write(staging / name, np.clip(audio, -1.0, 1.0), SAMPLING_RATE, subtype="PCM_16")
            rows.append(
                {
                    "file": name,
                    "transcript": "",
                    "speaker": speaker,
                    "source": SOURCE,
                    "seconds": f"{len(audio) / SAMPLING_RATE:.3f}",
                }
            )
        write_tsv(staging / "transcripts.tsv", rows, ("file", "transcript", "speaker", "source", "seconds"))
    minutes = sum(float(row["seconds"]) for row in rows) / 60
    reasons = "; ".join(f"{count} {reason}" for reason, count in sorted(failed.items())) or "none"
    print(
        f"{args.out}: {len(rows)} lines, {minutes:.1f} min, in {time.perf_counter() - started:.0f} s; of "
        f"{len(voices)} speech files {silent} silent, {short} under {MIN_SECONDS} s, "
        f"{sum(failed.values())} did not unpack ({reasons})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
