"""Audio files as people bring them, read by runtime.audio: formats libsndfile does not read, files
joined with `cat`, cut or damaged files, containers beside WAV, channels that cancel. Each is held
to what the file holds, measured by libsndfile on the parts it was made of (the example clips are
the speech). The command line's side of the same reader is test_run_inputs."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edgelalm.errors import EdgelalmError
from edgelalm.runtime.audio import header_warning, open_audio, prepare_samples, stream_audio

RATE = 16_000
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def speech(name: str = "kids-room.wav") -> np.ndarray:
    samples, rate = soundfile.read(EXAMPLES / name, dtype="float32")
    assert rate == RATE
    return samples


def read(path: Path) -> tuple[np.ndarray, list[str]]:
    """The file as the runtime reads it (16 kHz mono), and the warnings reading it gave."""
    info = open_audio(path)
    warnings = [note for note in [header_warning(info)] if note]
    samples = np.concatenate(list(stream_audio(info, RATE, warnings)))
    return samples, warnings


def seconds(path: Path) -> float:
    return soundfile.info(str(path)).duration


def write(path: Path, samples: np.ndarray, rate: int = RATE, **kwargs) -> Path:
    soundfile.write(path, samples, rate, **kwargs)
    return path


def joined(path: Path, *parts: Path) -> Path:
    path.write_bytes(b"".join(part.read_bytes() for part in parts))
    return path


@pytest.mark.parametrize(
    ("head", "said"),
    [
        (
            b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42isom",
            "an MP4 file (M4A, 3GP, MOV: AAC, ALAC or AMR audio)",
        ),
        (b"\x00\x00\x00\x20ftyp3gp4\x00\x00\x00\x00", "an MP4 file"),
        (bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d"), "a WebM/Matroska file"),
        (b"#!AMR\n\x3c", "an AMR voice recording"),
        (bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"), "a WMA (ASF) file"),
        (bytes.fromhex("fff15080021ffc"), "raw AAC audio (ADTS)"),
        (bytes.fromhex("0b77"), "AC-3 audio"),
    ],
    ids=["m4a", "3gp", "webm", "amr", "wma", "adts", "ac3"],
)
def test_formats_libsndfile_does_not_read_are_named_with_the_way_to_convert_them(tmp_path, head, said):
    """An iPhone's voice memo (M4A), a browser's recording (WebM): libsndfile said only "Format
    not recognised"."""
    path = tmp_path / "memo.bin"
    path.write_bytes(head + bytes(range(256)) * 8)
    with pytest.raises(EdgelalmError) as refused:
        open_audio(path)
    message = str(refused.value)
    assert message.startswith(f"cannot read audio from {path}: it is {said}")
    assert "which libsndfile does not read; convert it first (`ffmpeg -i in." in message


def test_an_ogg_file_libsndfile_cannot_open_is_not_said_to_be_behind_an_id3_tag(tmp_path):
    """Only an ID3 tag before it makes an Ogg file one "behind an ID3 tag": a cut one that
    libsndfile cannot open keeps libsndfile's words."""
    whole = write(tmp_path / "a.ogg", speech(), format="OGG").read_bytes()
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(whole[:3000])
    with pytest.raises(EdgelalmError) as refused:
        open_audio(cut)
    assert "ID3" not in str(refused.value) and "ffmpeg" not in str(refused.value)


def test_an_ogg_file_behind_an_id3_tag_is_said(tmp_path):
    """libsndfile skips an ID3v2 tag before MP3, FLAC and WAV only: "embedding not supported"."""
    ogg = write(tmp_path / "a.ogg", speech(), format="OGG")
    tagged = tmp_path / "tagged.ogg"
    tagged.write_bytes(b"ID3\x03\x00\x00\x00\x00\x01\x00" + bytes(128) + ogg.read_bytes())
    with pytest.raises(EdgelalmError, match=r"it is an Ogg file behind an ID3 tag .*ffmpeg -i in\.ogg out\.flac"):
        open_audio(tagged)


@pytest.mark.parametrize(("kind", "container"), [("WAV", "WAV"), ("AIFF", "AIFF")])
def test_wav_or_aiff_files_joined_with_cat_are_said(tmp_path, kind, container):
    """`cat a.wav b.wav`: libsndfile refused it as "No 'RIFF' chunk marker" (its first bytes are one)."""
    extension = kind.lower()
    parts = [
        write(tmp_path / f"{n}.{extension}", speech(name), format=container)
        for n, name in enumerate(["kids-room.wav", "sunset.wav", "set-a-timer.wav"])
    ]
    with pytest.raises(
        EdgelalmError,
        match=f"it is 3 {kind} files one after another .*sox a.{extension}.*which libsndfile does not read",
    ):
        open_audio(joined(tmp_path / f"joined.{extension}", *parts))


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_ogg_files_joined_say_what_libsndfile_leaves_out(tmp_path, subtype):
    """A chained Ogg (`cat a.ogg b.ogg`, which Ogg readers play through): libsndfile reads its first
    file and stopped there silently. Each part's length is libsndfile's own for that part."""
    first = write(tmp_path / "a.ogg", speech(), format="OGG", subtype=subtype)
    second = write(tmp_path / "b.ogg", speech("sunset.wav"), format="OGG", subtype=subtype)
    samples, warnings = read(joined(tmp_path / "joined.ogg", first, second))
    assert len(samples) / RATE == pytest.approx(seconds(first), abs=0.01)
    advice = "`sox in.ogg out.flac`" if subtype == "VORBIS" else "`opusdec in.opus out.wav`"
    assert warnings == [
        f"{tmp_path / 'joined.ogg'}: only the first {seconds(first):.2f} s of its "
        f"{seconds(first) + seconds(second):.2f} s can be read (it is 2 Ogg files joined, and libsndfile reads "
        f"the first; {advice} reads them all)"
    ]
    _, alone = read(first)
    assert alone == []


def test_flac_files_joined_say_what_libsndfile_leaves_out(tmp_path):
    """`cat a.flac b.flac`: libsndfile reads the first stream and fails on the second's header,
    which was said as damage ("flac decoder lost sync")."""
    first = write(tmp_path / "a.flac", speech(), format="FLAC")
    second = write(tmp_path / "b.flac", prepare_samples(speech("sunset.wav"), RATE, 44_100), 44_100, format="FLAC")
    path = joined(tmp_path / "joined.flac", first, second, second)
    samples, warnings = read(path)
    assert len(samples) == len(read(first)[0])
    assert warnings == [
        f"{path}: only the first {seconds(first):.2f} s of its {seconds(first) + 2 * seconds(second):.2f} s can be "
        "read (it is 3 FLAC files joined, and libsndfile reads the first)"
    ]
    assert read(first)[1] == []


def test_a_cut_ogg_file_is_said(tmp_path):
    """Cut inside its pages, an Ogg file reads to the cut with no word; its last page has no
    end-of-stream mark."""
    whole = write(tmp_path / "a.ogg", speech(), format="OGG").read_bytes()
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(whole[: len(whole) // 2])
    samples, warnings = read(cut)
    assert warnings == [f"{cut}: it ends inside an Ogg page (truncated?); using the {len(samples) / RATE:.2f} s read"]


def test_an_ogg_file_damaged_inside_is_not_said_to_be_cut(tmp_path):
    """Zeros over a stretch in its middle: the pages after it decode, and the file ends on a whole
    page; it was said "(truncated?)"."""
    whole = write(tmp_path / "a.ogg", np.concatenate([speech(), speech("sunset.wav")]), format="OGG").read_bytes()
    middle = len(whole) // 2
    damaged = tmp_path / "damaged.ogg"
    damaged.write_bytes(whole[:middle] + bytes(3000) + whole[middle + 3000 :])
    samples, warnings = read(damaged)
    (warning,) = warnings
    assert f"only {len(samples) / RATE:.2f} s could be decoded (damaged inside?); using what is there" in warning
    # The pages past the damage were read: more than its first half (a fifth of the file's bytes
    # lost, with the pages they break).
    assert seconds(tmp_path / "a.ogg") / 2 < len(samples) / RATE < seconds(tmp_path / "a.ogg") - 0.1


def _ogg_crc(page: bytes) -> int:
    """Ogg's page checksum: CRC-32 of polynomial 0x04C11DB7, unreflected, from 0, its field zeroed."""
    crc = 0
    for byte in page[:22] + bytes(4) + page[26:]:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1 ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def _rewritten_pages(data: bytes, change) -> bytes:
    """`data`'s Ogg pages, each passed through `change(page) -> page` and given its checksum again."""
    pages, position = [], 0
    while position < len(data):
        segments = data[position + 26]
        end = position + 27 + segments + sum(data[position + 27 : position + 27 + segments])
        page = bytearray(change(bytearray(data[position:end])))
        page[22:26] = struct.pack("<I", _ogg_crc(bytes(page)))
        pages.append(bytes(page))
        position = end
    return b"".join(pages)


def test_a_whole_ogg_file_without_an_end_of_stream_mark_is_not_called_cut(tmp_path):
    """Streaming recorders stopped between pages leave no end-of-stream mark: the file is whole."""
    whole = write(tmp_path / "a.ogg", speech(), format="OGG")

    def unmarked(page):
        page[5] &= ~0x04
        return page

    path = tmp_path / "unmarked.ogg"
    path.write_bytes(_rewritten_pages(whole.read_bytes(), unmarked))
    samples, warnings = read(path)
    assert warnings == [] and len(samples) == len(read(whole)[0])


def test_a_joined_ogg_link_whose_header_says_rate_0_is_no_traceback(tmp_path):
    """A second link whose Vorbis header gives rate 0 (libsndfile reads only the first, which is
    fine): its length divided by 0 was a ZeroDivisionError."""
    first = write(tmp_path / "a.ogg", speech(), format="OGG")

    def broken(page):
        page[14:18] = struct.pack("<I", 0x5EED)  # another serial: another link
        if page[5] & 0x02:  # the identification header's rate, at 12 in the first packet
            body = 27 + page[26]
            page[body + 12 : body + 16] = bytes(4)
        return page

    path = joined(tmp_path / "joined.ogg", first, first)
    path.write_bytes(first.read_bytes() + _rewritten_pages(first.read_bytes(), broken))
    samples, warnings = read(path)
    assert len(samples) == len(read(first)[0]) and warnings == []


def _mp3(path: Path, samples: np.ndarray, rate: int = RATE, **kwargs) -> Path:
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no mp3")
    return write(path, samples, rate, format="MP3", **kwargs)


def test_a_short_mp3_joined_after_another_is_said(tmp_path):
    """The warning waited for more than 1 s unread: a "yes" joined after a request was lost silently."""
    yes = speech("kids-room.wav")[: RATE // 2]
    first, second = _mp3(tmp_path / "a.mp3", speech()), _mp3(tmp_path / "yes.mp3", yes)
    samples, warnings = read(joined(tmp_path / "joined.mp3", first, second))
    assert len(samples) / RATE == pytest.approx(seconds(first), abs=0.01)
    (warning,) = warnings
    assert f"only the first {seconds(first):.2f} s of its" in warning and "MP3 files joined" in warning


def test_an_mp3_of_another_rate_joined_after_another_is_said(tmp_path):
    """Frames of another rate were skipped as junk: nothing counted as unread, however long."""
    other = prepare_samples(speech("sunset.wav"), RATE, 24_000)
    first, second = _mp3(tmp_path / "a.mp3", speech()), _mp3(tmp_path / "b.mp3", other, 24_000)
    _, warnings = read(joined(tmp_path / "joined.mp3", first, second))
    (warning,) = warnings
    total = seconds(first) + seconds(second)
    assert f"only the first {seconds(first):.2f} s of its" in warning
    stated_total = float(warning.split(" of its ")[1].split(" s ")[0])
    # Each part's frames also hold its encoder's delay and padding (LAME: 576 + 529 and up to a
    # frame of 1152 samples), which decoders leave out: at most 2257 samples a part.
    assert total <= stated_total <= total + 2257 / RATE + 2257 / 24_000


@pytest.mark.parametrize("rate", [8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("bitrate_mode", ["CONSTANT", "VARIABLE"])
def test_a_whole_mp3_has_no_unread_warning(tmp_path, rate, channels, bitrate_mode):
    """An MP3's frames hold the encoder's delay and padding beyond what its decoder gives: no
    audio left out, whatever the rate (the threshold that now says a short joined file)."""
    samples = np.tile(prepare_samples(speech(), RATE, rate)[:, None], (1, channels))
    path = _mp3(tmp_path / "whole.mp3", samples, rate, bitrate_mode=bitrate_mode)
    _, warnings = read(path)
    assert warnings == []


def test_a_damaged_stretch_in_an_mp3_loses_only_itself(tmp_path):
    """5000 zero bytes in the middle: read 32768 values at a time, a failed read lost the good audio
    of its block (0.74 s) and reading stopped after three (each skips 1 KB): 1.5 s lost after it.
    Inserted, the zeros take no audio away: what is lost is the frames around them."""
    whole = _mp3(tmp_path / "whole.mp3", np.concatenate([speech(), speech("sunset.wav")]), 22_050)
    data = whole.read_bytes()
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(data[: len(data) // 2] + bytes(5000) + data[len(data) // 2 :])
    samples, warnings = read(damaged)
    (warning,) = warnings
    at = float(warning.split("damaged from ")[1].split(" s")[0])
    assert seconds(whole) / 2 - 0.3 <= at <= seconds(whole) / 2
    assert len(samples) / RATE >= seconds(whole) - 0.1


def test_a_file_of_few_mpeg_frames_named_mp3_is_said_to_be_no_mp3(tmp_path):
    """libsndfile takes any file named .mp3 for one: where its decoder found nothing, the line was
    libsndfile's "Unspecified internal error."; a program named .mp3 (/bin/ls here) decoded to
    0.05 s of silence, an empty answer with no word."""
    frames = _mp3(tmp_path / "a.mp3", speech()).read_bytes()[:1000]
    path = tmp_path / "not-an.mp3"
    path.write_bytes(frames + bytes(100_000))
    with pytest.raises(EdgelalmError, match=r"only 1% of its bytes are MPEG audio frames \(is it an MP3 file\?\)"):
        read(path)


def test_a_program_named_mp3_that_decodes_to_a_moment_is_said_to_be_no_mp3(tmp_path):
    """Debian's /bin/ls holds chance MPEG frames that libsndfile decodes, without an error, to 0.05 s
    of silence: the answer was empty, with no word why."""
    path = tmp_path / "ls.mp3"
    path.write_bytes(Path(shutil.which("ls") or "/bin/ls").read_bytes())
    try:
        _, warnings = read(path)
    except EdgelalmError as error:  # another build of ls may hold no frames libsndfile decodes
        assert "is it an MP3 file?" in str(error) or "found no audio" in str(error)
        return
    (warning,) = warnings
    assert "of its bytes are MPEG audio frames (is it an MP3 file?); using the" in warning


@pytest.mark.parametrize("tags", ["none", "ID3v1", "ID3v2 of 100 KB"])
def test_whole_mp3s_are_not_said_to_be_no_mp3(tmp_path, tags):
    """A cover picture in an ID3v2 tag is no audio and counts for nothing: the share is of the
    bytes past it."""
    data = _mp3(tmp_path / "a.mp3", speech()[: RATE // 2]).read_bytes()
    if tags == "ID3v1":
        data += b"TAG" + bytes(125)
    elif tags == "ID3v2 of 100 KB":
        size = 100_000
        syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
        data = b"ID3\x03\x00\x00" + syncsafe + bytes(size) + data
    path = tmp_path / "tagged.mp3"
    path.write_bytes(data)
    assert open_audio(path).structure_note == ""
    assert read(path)[1] == []


@pytest.mark.parametrize("name", ["clip.wav", "clip.mp3", "clip.ogg", "behind-junk.mp3"])
def test_a_path_past_libsndfile_s_1024_bytes_is_read(tmp_path, name):
    """libsndfile keeps a name in 1024 bytes: "Supplied filename too long.", where Linux takes 4095.
    It knows an MP3 behind a few stray bytes by its name's extension, which the name it opens keeps."""
    deep = tmp_path.joinpath(*["p" * 100] * 10)
    deep.mkdir(parents=True)
    short = tmp_path / name
    soundfile.write(short, speech(), RATE, **({"format": "MP3"} if name.endswith("mp3") else {}))
    if name == "behind-junk.mp3":
        short.write_bytes(bytes(3) + short.read_bytes())
    long = deep / name
    long.write_bytes(short.read_bytes())
    assert len(bytes(long)) > 1024
    samples, warnings = read(long)
    assert np.array_equal(samples, read(short)[0]) and warnings == []


def test_a_long_path_is_read_where_its_absolute_form_is_past_4095_bytes_or_no_temporary_folder_is_writable(
    tmp_path, monkeypatch
):
    """The short link pointed at the absolute path (ENAMETOOLONG past 4095 bytes), and needed a
    writable temporary folder (a traceback without one)."""
    import tempfile

    source = write(tmp_path / "clip.wav", speech())
    monkeypatch.chdir(tmp_path)
    for _ in range(30):  # made step by step: the absolute form is past what one call takes
        os.mkdir("d" * 100)
        os.chdir("d" * 100)
    relative = Path(*["e" * 100] * 12, "clip.wav")
    base = Path.cwd()
    for part in relative.parent.parts:
        os.mkdir(part)
        os.chdir(part)
    Path("clip.wav").write_bytes(source.read_bytes())
    os.chdir(base)
    assert 1024 < len(bytes(relative)) and len(os.fsencode(os.getcwd())) + len(bytes(relative)) > 4096
    assert np.array_equal(read(relative)[0], read(source)[0])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    assert np.array_equal(read(relative)[0], read(source)[0])


def test_an_audio_file_that_may_not_be_read_says_so(tmp_path, unprivileged):
    """libsndfile's words were "System error."."""
    path = write(tmp_path / "private.wav", speech())
    path.chmod(0)
    code = "import sys, pathlib, edgelalm.runtime.audio as audio; audio.open_audio(pathlib.Path(sys.argv[1]))"
    done = subprocess.run(unprivileged(sys.executable, "-c", code, str(path)), capture_output=True, text=True)
    assert f"cannot read audio from {path}: Permission denied" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("path", ["/proc/self/status", "/proc/cpuinfo"])
def test_a_system_file_that_says_it_is_empty_is_no_audio(path):
    """procfs gives its files a size of 0: they were said to be empty."""
    with pytest.raises(EdgelalmError, match=f"^not an audio file: {path} "):
        open_audio(Path(path))


@pytest.mark.parametrize("container", ["AIFF", "AU", "W64", "RF64"])
def test_a_cut_file_of_another_container_is_said_as_a_cut_wav_is(tmp_path, container):
    """libsndfile reads what a cut AIFF, AU, Wave64 or RF64 file holds, silently."""
    whole = write(tmp_path / "whole", speech(), format=container, subtype="PCM_16")
    data = whole.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[: len(data) // 2])
    samples, warnings = read(cut)
    assert warnings == [
        f"{cut}: the header declares {seconds(whole):.2f} s of audio but the file holds {len(samples) / RATE:.2f} s "
        "(truncated?); using what is there"
    ]
    assert read(whole)[1] == []


@pytest.mark.parametrize("container", ["wav", "aiff"])
def test_a_file_written_into_a_pipe_is_not_called_cut(tmp_path, container):
    """sox writing a stream of unknown length into a pipe leaves its placeholder data size
    (0x7FFFF000 in a WAV, 0x7F000008 in an AIFF): the file was whole, and the warning said
    "truncated?" of 67108 s."""
    raw = tmp_path / "clip.raw"
    raw.write_bytes((speech() * 32767).astype("<i2").tobytes())
    streamed = subprocess.run(
        f"cat {raw} | sox -t raw -r {RATE} -e signed -b 16 -c 1 - -t {container} - | cat",
        shell=True,
        capture_output=True,
        check=True,
    ).stdout
    path = tmp_path / f"piped.{container}"
    path.write_bytes(streamed)
    samples, warnings = read(path)
    (warning,) = warnings
    assert "placeholder a writer leaves in a pipe" in warning and "truncated" not in warning
    assert len(samples) == len(speech())


def test_channels_that_cancel_out_are_read_from_the_loudest_one(tmp_path):
    """A mono microphone on a stereo input with one side's polarity inverted: the average was
    silence and the answer empty, with no word."""
    left = speech()
    path = write(tmp_path / "inverted.wav", np.stack([left, -left], axis=1), subtype="FLOAT")
    samples, warnings = read(path)
    np.testing.assert_array_equal(samples, left)
    assert warnings == [
        f"{path}: its channels cancel each other out when averaged to mono (one with its polarity inverted?); "
        "the loudest channel was used where they did"
    ]
    in_memory: list[str] = []
    np.testing.assert_array_equal(
        prepare_samples(np.stack([left, -left], axis=1), RATE, RATE, warnings=in_memory), left
    )
    assert len(in_memory) == 1
    # Channels that differ, or one quieter and inverted (still heard in the average), are averaged.
    for right in (speech("sunset.wav")[: len(left)], -0.5 * left):
        stereo = np.stack([left, np.pad(right, (0, len(left) - len(right)))], axis=1)
        samples, warnings = read(write(tmp_path / "stereo.wav", stereo, subtype="FLOAT"))
        np.testing.assert_allclose(samples, stereo.mean(axis=1), atol=1e-7)
        assert warnings == []


def test_a_float_file_a_little_past_full_scale_is_heard_as_it_is(tmp_path):
    """An editor's float mix peaking at 1.12 was warned about as integer PCM stored as floats."""
    loud = speech() / np.abs(speech()).max() * np.float32(1.12)
    _, warnings = read(write(tmp_path / "mix.wav", loud, subtype="FLOAT"))
    assert warnings == []
    _, warnings = read(write(tmp_path / "pcm.wav", loud * 300, subtype="FLOAT"))
    assert len(warnings) == 1 and "past full scale" in warnings[0]


def test_joined_wav_files_are_counted_by_each_one_s_own_size(tmp_path):
    """The count of joined files follows each RIFF size to the next header, with or without the pad
    byte an odd size asks for (writers that write an odd RIFF size leave it out; libsndfile then
    reads the first file, and read it silently)."""
    odd = write(tmp_path / "odd.wav", speech()[: RATE + 1], subtype="PCM_U8").read_bytes()
    unpadded = odd[:4] + struct.pack("<I", len(odd) - 9) + odd[8:-1]  # the data chunk's pad byte dropped
    assert struct.unpack("<I", unpadded[4:8])[0] % 2 == 1
    path = tmp_path / "joined.wav"
    path.write_bytes(odd * 3)
    with pytest.raises(EdgelalmError, match=r"it is 3 WAV files one after another \(joined with cat\?; `sox a.wav"):
        open_audio(path)
    path.write_bytes(unpadded * 3)
    samples, warnings = read(path)
    assert len(samples) == RATE + 1
    assert warnings == [
        f"{path}: it is 3 WAV files one after another (joined with cat?; `sox a.wav b.wav out.wav` joins them), "
        "and libsndfile reads the first; using the 1.00 s read"
    ]
