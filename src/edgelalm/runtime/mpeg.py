"""An MP3's length, counted from its frame headers. Torch-free.

libsndfile reads an MP3 only as far as the length it works out when it opens the file, and
stops there silently: a Xing/Info/VBRI header's count, else the file's size over the first
frame's bitrate. A VBR file without such a header, or MP3 files joined with `cat` (the first one's
header counts itself alone), then loses everything past that guess; a low first bitrate makes
the guess too long instead. Walking the frame headers gives the real length (each header says
its frame's size), so the reader can say what libsndfile leaves out and not warn of a cut file
where only the guess was wrong.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

# Bitrates in kbit/s by (MPEG-1, layer) and (MPEG-2 or 2.5, layer); index 0 (free format) and 15
# are no bitrate a frame can be walked by.
_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# Sampling rates by the header's version bits: 0 MPEG-2.5, 2 MPEG-2, 3 MPEG-1 (1 is reserved).
_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}
# Where a frame's tag names itself: Xing/Info after the side information, VBRI at 36.
_LENGTH_TAGS = (b"Xing", b"Info", b"VBRI")
_TAG_SEARCH_BYTES = 48


@dataclass(frozen=True)
class MpegLength:
    frames: int  # samples per channel in the audio frames walked (a Xing/Info frame is no audio)
    has_length_tag: bool  # whether the first frame is a Xing, Info or VBRI header counting the file
    # Bytes in the frames walked, and in the file past its leading ID3v2 tags: a file that is no
    # MP3 (a program named .mp3) holds a few chance frames, which libsndfile decodes to silence.
    frame_bytes: int = 0
    untagged_bytes: int = 0


def _frame(header: bytes) -> tuple[int, int, int] | None:
    """(bytes, samples, sampling rate) of the frame whose 4-byte header this is, or None where it
    is no frame header."""
    if header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer_bits = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    rate = _RATES[version][rate_index]
    layer, mpeg1 = 4 - layer_bits, version == 3
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4, 384, rate
    per_frame = 1152 if layer == 2 or mpeg1 else 576
    return per_frame // 8 * bitrate // rate + padding, per_frame, rate


def id3v2_bytes(header: bytes) -> int:
    """The size of the ID3v2 tag whose 10-byte header this is (a footer's 10 included); 0 where it
    is none."""
    if len(header) < 10 or header[:3] != b"ID3":
        return 0
    size = 0
    for byte in header[6:10]:  # syncsafe: 7 bits a byte
        size = size << 7 | (byte & 0x7F)
    return 10 + size + (10 if header[5] & 0x10 else 0)


def mpeg_length(path: Path, sampling_rate: int) -> MpegLength | None:
    """The length of the MP3 at `path` (libsndfile said it is one, at `sampling_rate`) by its
    frame headers, skipping ID3v2 tags and junk between frames, in samples at `sampling_rate`
    (MP3s of other rates joined after it count by their duration); None where no frame is found."""
    if path.stat().st_size == 0:  # mmap refuses an empty file
        return None
    with path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        size, position = len(data), 0
        while tag_bytes := id3v2_bytes(data[position : position + 10]):
            position += tag_bytes
        untagged_bytes = size - position
        frames, frame_bytes_walked, found, has_length_tag, in_step = 0, 0, False, False, False
        while position + 4 <= size:
            frame = _frame(data[position : position + 4])
            if frame is not None and not in_step:
                # Found by searching (the first frame, or past junk): a frame only where the next
                # one of its rate follows it, as decoders resync; audio data holds chance headers.
                following = position + frame[0]
                after = _frame(data[following : following + 4]) if following + 4 <= size else None
                in_step = following + 4 > size or (after is not None and after[2] == frame[2])
                frame = frame if in_step else None
            if frame is None:  # junk, a damaged stretch or an ID3v1 tag: the next possible header
                in_step = False
                following = data.find(b"\xff", position + 1)
                if following < 0:
                    break
                position = following
                continue
            frame_bytes, samples, rate = frame
            if position + frame_bytes > size:  # cut inside its last frame, which no decoder gives
                break
            frame_bytes_walked += frame_bytes
            if not found:
                found = True
                has_length_tag = any(tag in data[position + 4 : position + _TAG_SEARCH_BYTES] for tag in _LENGTH_TAGS)
                if has_length_tag:  # a frame of silence holding the count: decoders skip it
                    position += frame_bytes
                    continue
            frames += samples if rate == sampling_rate else samples * sampling_rate // rate
            position += frame_bytes
    return MpegLength(frames, has_length_tag, frame_bytes_walked, untagged_bytes) if found else None
