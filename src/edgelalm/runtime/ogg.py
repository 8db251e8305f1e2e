"""An Ogg file's links and their lengths, from its page headers. Torch-free.

libsndfile reads an Ogg file's first link (its first group of logical streams) and stops there,
silently: Ogg files joined with `cat` (a "chained" Ogg, which every Ogg reader is meant to play
through) lose everything past the first file. Each page's header says its stream, whether it
begins that stream, the stream's position in samples (the granule position) and its size, so
walking the pages gives every link's length, and whether the file ends inside a page (cut).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

_CAPTURE = b"OggS"
_HEADER_BYTES = 27  # up to the segment count; the lacing values follow
_BEGINS = 0x02  # the header type flag of a stream's first page
_NO_POSITION = 2**64 - 1  # a page on which no packet ends


@dataclass
class _Stream:
    rate: int  # granule positions count samples at this rate
    skipped: int  # samples at the start that are no audio (Opus's pre-skip)
    position: int = 0

    def seconds(self) -> float:
        return max(0, self.position - self.skipped) / self.rate


@dataclass(frozen=True)
class OggLinks:
    seconds: tuple[float, ...]  # each link's length (its first audio stream's), in file order
    cut: bool  # whether the file ends inside a page (cut; a recorder stopped between pages is not)
    codec: str  # the first link's: "vorbis", "opus", "flac" or "speex"


def _audio_stream(packet: bytes) -> tuple[str, _Stream] | None:
    """The codec and rate of the stream whose first packet this is; None for any other stream
    (a skeleton, video)."""
    if packet[:7] == b"\x01vorbis" and len(packet) >= 16:
        found = "vorbis", _Stream(struct.unpack("<I", packet[12:16])[0], 0)
    elif packet[:8] == b"OpusHead" and len(packet) >= 12:  # positions at 48 kHz whatever the input's rate
        found = "opus", _Stream(48000, struct.unpack("<H", packet[10:12])[0])
    elif packet[:5] == b"\x7fFLAC" and len(packet) >= 30:  # STREAMINFO from byte 17: a 20-bit rate at 27
        found = "flac", _Stream(packet[27] << 12 | packet[28] << 4 | packet[29] >> 4, 0)
    elif packet[:8] == b"Speex   " and len(packet) >= 40:
        found = "speex", _Stream(struct.unpack("<I", packet[36:40])[0], 0)
    else:
        return None
    return found if found[1].rate > 0 else None  # a header of rate 0 counts no time


def ogg_links(path: Path) -> OggLinks | None:
    """The links of the Ogg file at `path`, walked by its pages (junk between pages skipped to the
    next capture pattern); None where no audio stream is found."""
    if path.stat().st_size == 0:  # mmap refuses an empty file
        return None
    links: list[_Stream] = []
    codec = ""
    with path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        size, position = len(data), data.find(_CAPTURE)
        serial_of_audio: int | None = None
        link_has_data = cut = False
        while 0 <= position:
            if position + _HEADER_BYTES > size:  # cut inside a page's header
                cut = True
                break
            flags, granule, serial = data[position + 5], *struct.unpack("<QI", data[position + 6 : position + 18])
            segments = data[position + 26]
            body = position + _HEADER_BYTES + segments
            end = body + sum(data[position + _HEADER_BYTES : body])
            if data[position + 4] != 0 or end > size:  # no page of Ogg's version 0, or cut inside it
                cut = end > size and data[position + 4] == 0
                position = data.find(_CAPTURE, position + 1)
                continue
            if flags & _BEGINS:
                if link_has_data:  # a stream begins after the link's data: the next link
                    serial_of_audio, link_has_data = None, False
                found = _audio_stream(data[body:end]) if serial_of_audio is None else None
                if found is not None:
                    serial_of_audio = serial
                    codec = codec or found[0]
                    links.append(found[1])
            else:
                link_has_data = True
            if serial == serial_of_audio and links and granule != _NO_POSITION:
                links[-1].position = granule
            cut = False
            position = data.find(_CAPTURE, end)
    if not links:
        return None
    return OggLinks(tuple(link.seconds() for link in links), cut, codec)
