"""The FLAC streams a file holds one after another, from their headers. Torch-free.

FLAC files joined with `cat` are one file to libsndfile, which reads the first stream (its
STREAMINFO counts its own samples) and then fails on the second's header, as on damage. Every
stream starts with `fLaC` and its STREAMINFO block, which gives its sampling rate and length.
"""

from __future__ import annotations

import mmap
from pathlib import Path

# "fLaC", then a metadata block header of type 0 (STREAMINFO), 34 bytes long, last block or not.
_MARKER = b"fLaC"
_STREAMINFO_HEADERS = (b"\x00\x00\x00\x22", b"\x80\x00\x00\x22")
_STREAMINFO_BYTES = 34


def flac_stream_seconds(path: Path) -> list[float]:
    """Each stream's length in the FLAC file at `path`, in file order; a stream that does not say
    its length (written into a pipe) counts 0."""
    if path.stat().st_size == 0:  # mmap refuses an empty file
        return []
    seconds = []
    with path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = data.find(_MARKER)
        while position >= 0:  # one pass over the file (a marker's chance bytes in audio are skipped)
            header, info = data[position + 4 : position + 8], data[position + 8 : position + 8 + _STREAMINFO_BYTES]
            position = data.find(_MARKER, position + 4)
            if header not in _STREAMINFO_HEADERS or len(info) < _STREAMINFO_BYTES:
                continue
            # Sampling rate: 20 bits from byte 10; total samples: the low 4 bits of byte 13, then 4 bytes.
            rate = info[10] << 12 | info[11] << 4 | info[12] >> 4
            samples = (info[13] & 0x0F) << 32 | int.from_bytes(info[14:18], "big")
            if rate:
                seconds.append(samples / rate)
    return seconds
