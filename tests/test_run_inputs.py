"""`edgelalm run` on bad and unusual input, through the console entry point.

Every case ends in a correct result (exit 0, the answer on stdout, with --json a last line of
JSON) or in exactly one `edgelalm: error: ...` line on stderr and a non-zero exit: never a
traceback, never a hang. The audio is synthesised here (numpy + soundfile).
"""

import dataclasses
import html
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import srt
import webvtt

pytest.importorskip("torch")  # the tiny_bundles fixture exports with torch

from edgelalm.constants import MANIFEST_FILE, SUBTITLE_FORMATS
from edgelalm.runtime.subtitles import TimedText

RATE = 16_000
MAX_TOKENS = 4
TIMEOUT_S = 180
TIMING_FIELDS = {"features", "encoder", "compressor", "prefill", "decode", "time_to_first_token", "total"}
RESULT_FIELDS = {
    "text": str,
    "audio_seconds": float,
    "audio_tokens": int,
    "audio_tokens_per_second": float,
    "windows": int,
    "timings_ms": dict,
    "decode_tokens_per_second": float,
    "peak_rss_mb": float,
    "generated_tokens": int,
    "warnings": list,
    "window_mode": str,
    "timed_text": list,
}
_ENV = {**os.environ, "PYTHONIOENCODING": "utf-8"}


# -- helpers ------------------------------------------------------------------------------


def edgelalm(*args, cwd=None, python_args=("-m", "edgelalm.cli"), stdin=subprocess.DEVNULL, env=None):
    """Run the CLI as a user would; returns (exit code, stdout, stderr). `stdin`: bytes piped in, or
    a file descriptor."""
    piped = isinstance(stdin, bytes)
    result = subprocess.run(
        [sys.executable, *python_args, *map(str, args)],
        capture_output=True,
        cwd=cwd,
        env=env or _ENV,
        timeout=TIMEOUT_S,
        input=stdin if piped else None,
        stdin=None if piped else stdin,
    )
    decode = lambda data: data.decode("utf-8", errors="replace")  # noqa: E731
    return result.returncode, decode(result.stdout), decode(result.stderr)


def run(bundle, audio, *extra, cwd=None, python_args=("-m", "edgelalm.cli"), **options):
    bundle_args = () if bundle is None else ("--bundle", bundle)
    return edgelalm(
        "run", audio, *bundle_args, "--max-tokens", MAX_TOKENS, "--json", *extra, cwd=cwd, python_args=python_args,
        **options,
    )  # fmt: skip


def assert_one_line_error(code, stderr, *fragments):
    """Exit != 0, no traceback, exactly one line on stderr: `edgelalm: error: ...`."""
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("edgelalm: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_result(code, stdout, stderr):
    """Exit 0, and stdout one line of JSON with every field (--json)."""
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert stdout.endswith("\n"), stdout
    json_line = stdout[:-1].rsplit("\n", 1)[-1]
    result = json.loads(json_line)
    for name, kind in RESULT_FIELDS.items():
        assert isinstance(result[name], kind) or (kind is float and isinstance(result[name], int)), (name, result)
    assert set(result["timings_ms"]) >= TIMING_FIELDS, result["timings_ms"]
    assert all(value >= 0 for value in result["timings_ms"].values())
    assert result["audio_tokens"] >= 1 and result["windows"] >= 1
    assert result["peak_rss_mb"] > 0
    # The decode rate counts the tokens after the first (of each window answered apart), over the
    # time after it (timings are rounded).
    first_tokens = result["windows"] if result["window_mode"] == "each" else 1
    if result["generated_tokens"] > first_tokens and result["timings_ms"]["decode"] > 1:
        after_first = result["decode_tokens_per_second"] * result["timings_ms"]["decode"] / 1000
        assert after_first == pytest.approx(result["generated_tokens"] - first_tokens, rel=0.05)
    # The JSON line alone (JSON Lines: the answer is in it, not streamed beside it).
    assert stdout == json_line + "\n"
    assert_timed_text(result)
    return result


def assert_timed_text(result):
    """Each answer's span: one for the whole clip when joined; with each, one per window answered,
    end to end from 0 (a tail too short for the encoder, under 30 ms, is not answered), their
    answers joined the text."""
    timed = result["timed_text"]
    for span in timed:  # where its speech is, within it (None: nothing stood out)
        speech = (span["speech_start_seconds"], span["speech_end_seconds"])
        assert speech == (None, None) or span["start_seconds"] <= speech[0] < speech[1] <= span["end_seconds"], span
    if result["window_mode"] == "joined":
        spans = [(span["start_seconds"], span["end_seconds"], span["text"]) for span in timed]
        assert spans == [(0.0, result["audio_seconds"], result["text"].strip())]
        return
    assert len(timed) == result["windows"] and timed[0]["start_seconds"] == 0.0, timed
    assert all(earlier["end_seconds"] == later["start_seconds"] for earlier, later in itertools.pairwise(timed))
    assert all(span["end_seconds"] > span["start_seconds"] for span in timed)
    assert 0 <= result["audio_seconds"] - timed[-1]["end_seconds"] < 0.03, (timed, result["audio_seconds"])
    assert " ".join(span["text"] for span in timed if span["text"]) == result["text"]


def assert_result_or_error(code, stdout, stderr):
    if code == 0:
        return assert_result(code, stdout, stderr)
    return assert_one_line_error(code, stderr)


def speechlike(seconds, rate=RATE, channels=1, seed=0):
    """Voiced harmonics with a gliding pitch and a syllable-rate envelope, plus breath noise:
    [frames] or [frames, channels] float32 in [-1, 1]."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 3.0 * t))
    signal = envelope * (0.25 * voiced + 0.05 * rng.standard_normal(n))
    signal = np.clip(signal, -1, 1).astype(np.float32)
    if channels == 1:
        return signal
    return np.stack([signal * (1 - 0.1 * c) for c in range(channels)], axis=1)


def write_wav(path, samples, rate=RATE, subtype="PCM_16"):
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


def copy_bundle(bundle, dest):
    shutil.copytree(bundle, dest)
    return dest


def audio_tokens_for(bundle, audio):
    return assert_result(*run(bundle, audio))["audio_tokens"]


@pytest.fixture(scope="module")
def avg2(tiny_bundles):
    return tiny_bundles("avg", 2)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 3 s speechlike clip, 16 kHz mono."""
    return write_wav(tmp_path_factory.mktemp("clip") / "clip.wav", speechlike(3.0))


@pytest.fixture(scope="module")
def clip_tokens(avg2, clip):
    """The 16 kHz mono clip's audio tokens with avg K=2."""
    return audio_tokens_for(avg2, clip)


# -- unreadable files ---------------------------------------------------------------------


def test_missing_audio_file(avg2, tmp_path):
    code, _, stderr = run(avg2, tmp_path / "nope.wav")
    assert_one_line_error(code, stderr, "audio file not found", "nope.wav")


def test_audio_path_is_a_folder(avg2, tmp_path):
    code, _, stderr = run(avg2, tmp_path)
    assert_one_line_error(code, stderr, "not an audio file")


def test_empty_audio_file(avg2, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    code, _, stderr = run(avg2, empty)
    assert_one_line_error(code, stderr, "empty.wav is empty")


def test_a_file_name_that_is_not_utf8(avg2, clip, tmp_path):
    """A latin-1 name (kept by Python as surrogates) could not be opened: soundfile encodes a str
    strictly. Its bytes are passed as they are."""
    latin1 = tmp_path / os.fsdecode(b"caf\xe9.wav")
    shutil.copy(clip, latin1)
    result = assert_result(*run(avg2, latin1))
    assert result["text"] == assert_result(*run(avg2, clip))["text"]
    # the name as given: JSON's \\udce9 escape reads back to it, and os.fsencode to its bytes
    assert os.fsencode(result["file"]) == os.fsencode(latin1)


def test_a_backslash_in_a_name_is_shown_apart_from_an_escaped_character(avg2, clip, tmp_path):
    """`a\\nb.wav` (a backslash and an n) and `a<line break>b.wav` were both shown `a\\nb.wav`."""
    backslash, line_break = shutil.copy(clip, tmp_path / "a\\nb.wav"), shutil.copy(clip, tmp_path / "a\nb.wav")
    code, stdout, stderr = edgelalm(
        "run", backslash, line_break, "--bundle", avg2, "--max-tokens", MAX_TOKENS, "--json"
    )
    assert code == 0, stderr
    files = [json.loads(line)["file"] for line in stdout.splitlines()]
    assert files == [str(backslash), str(line_break)]  # JSON escapes each as it must


def test_a_run_writes_nothing_in_the_home_folder(avg2, clip, tmp_path):
    """onnxruntime wrote a telemetry id under ~/.cache on every run (and warned in colour on a
    read-only home)."""
    home = tmp_path / "home"
    home.mkdir()
    command = [sys.executable, "-m", "edgelalm.cli", "run", str(clip), "--bundle", str(avg2), "--max-tokens", "2"]
    result = subprocess.run(command, capture_output=True, env={**_ENV, "HOME": str(home)}, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert list(home.rglob("*")) == []


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_refused(avg2, clip, prompt):
    """`--prompt "$UNSET"` was used as it was and changed the answer."""
    code, _, stderr = run(avg2, clip, "--prompt", prompt)
    assert_one_line_error(code, stderr, "--prompt is empty; leave it out for the bundle's transcription prompt")


def test_several_files_in_one_run(avg2, clip, tmp_path):
    """The bundle loads once for several files; a bad one among them is its own error line and the
    others are still answered (exit 1 at the end); each JSON line names its file, a bad one's with
    its error. A bad file prints no "name: " on stdout (it read as a silent clip's empty answer)."""
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    alone = assert_result(*run(avg2, clip))["text"]
    code, stdout, stderr = run(avg2, clip, bad, clip)
    assert code == 1 and "Traceback" not in stderr
    lines = stdout.splitlines()  # JSON Lines: nothing else on stdout
    message = f"cannot read audio from {bad}: Format not recognised."
    assert len(lines) == 3, stdout
    assert json.loads(lines[0])["file"] == str(clip) and json.loads(lines[2])["text"] == alone
    assert json.loads(lines[1]) == {"file": str(bad), "error": message}
    assert stderr.strip().splitlines() == [f"edgelalm: error: {message}"], stderr
    code, stdout, _ = edgelalm("run", clip, bad, "--bundle", avg2, "--max-tokens", MAX_TOKENS)
    assert code == 1 and stdout.splitlines() == [f"{clip}: {alone}"], stdout


def test_a_loud_lossy_file_is_not_warned_about(avg2, tmp_path):
    """An MP3 decoder overshoots full scale on loud audio (1.1 here): no mistake of the file's,
    so only float files are held to full scale."""
    samples = speechlike(1.0)
    path = write_wav(
        tmp_path / "loud.mp3", samples / np.abs(samples).max() * np.float32(0.999), subtype="MPEG_LAYER_III"
    )
    assert np.abs(soundfile.read(str(path), dtype="float32")[0]).max() > 1.0
    code, stdout, stderr = run(avg2, path)
    assert_result(code, stdout, stderr)
    assert "past full scale" not in stderr, stderr


def test_a_name_too_long_and_a_loop_of_links_in_a_batch(avg2, clip, tmp_path):
    """Checking whether a clip was a bundle folder raised on a name past the file system's limit:
    the whole batch stopped, blaming "<name>/manifest.json". A loop of links was "not found"."""
    too_long = tmp_path / ("x" * 300 + ".wav")
    loop = tmp_path / "loop.wav"
    loop.symlink_to(tmp_path / "back.wav")
    (tmp_path / "back.wav").symlink_to(loop)
    alone = assert_result(*run(avg2, clip))["text"]
    code, stdout, stderr = run(avg2, too_long, clip, loop)
    assert code == 1 and "Traceback" not in stderr
    assert [json.loads(line).get("text") for line in stdout.splitlines()] == [None, alone, None]
    assert stderr.strip().splitlines() == [
        f"edgelalm: error: cannot read audio from {too_long}: File name too long",
        f"edgelalm: error: {loop} is a loop of symbolic links",
    ], stderr


def test_a_bundle_given_as_the_clip(avg2):
    code, _, stderr = run(avg2, avg2)
    assert_one_line_error(code, stderr, "is a bundle folder, not audio: pass it as --bundle")


def test_text_file_named_wav(avg2, tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("this is not audio, only text pretending to be a wav file\n" * 20)
    code, _, stderr = run(avg2, fake)
    assert_one_line_error(code, stderr, "cannot read audio from", "notes.wav")


def test_an_onnxruntime_that_cannot_load_is_one_line(avg2, clip, tmp_path):
    """A wheel for another CPU or glibc, or an address-space limit (`failed to map segment`): the
    runtime's encoder imported onnxruntime directly, and `run` printed 50 lines of traceback."""
    fake = tmp_path / "fake" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libonnxruntime.so.1: cannot open shared object file")\n')
    env = {**_ENV, "PYTHONPATH": os.pathsep.join([str(fake.parent), _ENV.get("PYTHONPATH", "")])}
    code, stdout, stderr = run(avg2, clip, env=env)
    assert_one_line_error(code, stderr, "onnxruntime cannot be loaded: libonnxruntime.so.1: cannot open shared object")
    assert stdout == ""


def test_a_phone_s_voice_memo_is_named_with_the_way_to_convert_it(avg2, tmp_path):
    """An M4A (an iPhone's voice memo), from a file and from standard input: libsndfile's "Format not
    recognised" left the user to guess; the other formats are in test_audio_containers."""
    memo = tmp_path / "memo.m4a"
    memo.write_bytes(b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(range(256)) * (1 << 13))
    expected = (
        "it is an MP4 file (M4A, 3GP, MOV: AAC, ALAC or AMR audio), which libsndfile does not read; convert it first"
    )
    code, _, stderr = run(avg2, memo)
    assert_one_line_error(code, stderr, f"cannot read audio from {memo}: {expected} (`ffmpeg -i in.m4a out.flac`)")
    with memo.open("rb") as stdin:  # past the 1 MiB at which a stream is judged as it arrives
        code, _, stderr = run(avg2, "-", stdin=stdin)
    assert_one_line_error(code, stderr, f"cannot read audio from standard input: {expected}")


@pytest.mark.parametrize("keep", ["half", "inside_header"])
def test_truncated_wav(avg2, tmp_path, keep):
    whole = write_wav(tmp_path / "whole.wav", speechlike(2.0)).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: len(whole) // 2] if keep == "half" else whole[:20])
    code, stdout, stderr = run(avg2, cut)
    if keep == "inside_header":
        assert_one_line_error(code, stderr)  # no samples at all: cannot be a result
        return
    # What is there is transcribed, and the user is told the file is shorter than its header says.
    assert code == 0, stderr
    warning = stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("edgelalm: warning: "), stderr
    assert "declares 2.00 s" in warning[0] and "truncated" in warning[0]
    outcome = json.loads(stdout.strip().splitlines()[-1])
    assert 0.9 <= outcome["audio_seconds"] <= 1.0
    assert outcome["warnings"] == [warning[0].removeprefix("edgelalm: warning: ")]


def test_mp3(avg2, tmp_path):
    """libsndfile reads mp3 (1.1 and later), as the help says."""
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no mp3")
    path = tmp_path / "clip.mp3"
    soundfile.write(path, speechlike(2.0), RATE, format="MP3")
    assert 1.9 <= assert_result(*run(avg2, path))["audio_seconds"] <= 2.2


def _flac_of_unknown_length(path, samples):
    """A FLAC whose STREAMINFO gives no total (0): what sox and ffmpeg write into a pipe."""
    soundfile.write(path, samples, RATE, format="FLAC")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    # Its 36-bit total of samples ends the 8 bytes after the block and frame sizes (bytes 18-25).
    packed = int.from_bytes(data[18:26], "big")
    data[18:26] = (packed & ~((1 << 36) - 1)).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def test_a_flac_of_unknown_length_is_answered_as_the_whole_file(avg2, tmp_path):
    """libsndfile counts 2**63 - 1 frames for it: the run built a list of windows that long
    (MemoryError, the batch stopped), and soundfile's own reads failed on it."""
    samples = speechlike(12.0)
    whole = tmp_path / "whole.flac"
    soundfile.write(whole, samples, RATE, format="FLAC")
    unknown = _flac_of_unknown_length(tmp_path / "piped.flac", samples)
    assert soundfile.info(unknown).frames == 2**63 - 1  # what the fix is for
    from edgelalm.runtime.audio import open_audio, read_audio

    assert open_audio(unknown).frames == len(samples)
    assert np.array_equal(read_audio(unknown, RATE), read_audio(whole, RATE))
    expected = assert_result(*run(avg2, whole))
    for extra in ((), ("--windows", "joined")):
        got = assert_result(*run(avg2, unknown, *extra))
        assert got["audio_seconds"] == 12.0 and got["warnings"] == []
        if not extra:
            assert got["text"] == expected["text"] and got["timed_text"] == expected["timed_text"]
    code, stdout, stderr = edgelalm(
        "run", "-", "--bundle", avg2, "--max-tokens", MAX_TOKENS, "--json", stdin=unknown.read_bytes()
    )
    assert json.loads(stdout.strip().splitlines()[-1])["text"] == expected["text"], stderr


@pytest.mark.parametrize("kept_bytes", ["half", 1000])
def test_an_mp3_cut_short_of_its_header_is_said(avg2, tmp_path, kept_bytes):
    """An MP3's Xing header counts the whole length; a cut file decodes to less. Half: the rest
    was answered without a word; nearly nothing: `need at least one array to concatenate` (joined),
    or an empty answer and exit 0 (each)."""
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no mp3")
    whole = tmp_path / "whole.mp3"
    soundfile.write(whole, speechlike(10.0), RATE, format="MP3")
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2] if kept_bytes == "half" else data[:kept_bytes])
    assert soundfile.info(cut).frames == soundfile.info(whole).frames  # the header's count
    for windows in ("each", "joined"):
        code, stdout, stderr = run(avg2, cut, "--windows", windows)
        ours = [line for line in stderr.splitlines() if line.startswith("edgelalm")]  # not libmpg123's own
        assert "Traceback" not in stderr, stderr
        if kept_bytes != "half":
            assert code == 1 and len(ours) == 1, stderr
            assert ours[0].startswith("edgelalm: error: the clip is too short (") and "could be decoded" in ours[0]
            continue
        result = json.loads(stdout.strip().splitlines()[-1])
        assert code == 0 and 4.0 < result["audio_seconds"] < 6.0, stderr
        assert ours == [f"edgelalm: warning: {warning}" for warning in result["warnings"]], stderr
        assert result["warnings"] == [
            f"{cut}: the header declares 10.00 s of audio but only {result['audio_seconds']:.2f} s could be "
            "decoded (truncated?); using what is there"
        ]


def test_an_mp3_cut_after_its_first_frame_is_one_line_that_does_not_say_it_is_missing(avg2, tmp_path):
    """libsndfile said "File does not exist or is not a regular file (possibly a pipe?)"."""
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no mp3")
    whole = tmp_path / "whole.mp3"
    soundfile.write(whole, speechlike(10.0), RATE, format="MP3")
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(whole.read_bytes()[:200])
    code, _, stderr = run(avg2, cut)
    ours = [line for line in stderr.splitlines() if line.startswith("edgelalm")]  # not libmpg123's own
    assert code == 1 and ours == [
        f"edgelalm: error: cannot read audio from {cut}: its decoder found no audio it could read "
        "(a damaged or cut file?)"
    ], stderr


@pytest.mark.parametrize("subtype", ["IMA_ADPCM", "MS_ADPCM", "GSM610"])
def test_block_coded_wavs_get_the_header_warnings_pcm_gets(avg2, tmp_path, subtype):
    """The header's data size was read as bytes a frame; in ADPCM and GSM 6.10 a block holds
    hundreds of frames: a WAV cut in half, or one whose header counts half its data, said nothing."""
    import struct

    rate = 8000 if subtype == "GSM610" else RATE
    whole = tmp_path / "whole.wav"
    soundfile.write(whole, speechlike(4.0, rate=rate), rate, subtype=subtype)
    data = whole.read_bytes()
    start = data.index(b"data") + 8
    size = struct.unpack("<I", data[start - 4 : start])[0]
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: start + size // 2])
    code, stdout, stderr = run(avg2, cut)
    assert code == 0 and "the header declares 4.0" in stderr and "(truncated?)" in stderr, stderr
    short = tmp_path / "short.wav"
    short.write_bytes(data[: start - 4] + struct.pack("<I", size // 2) + data[start:])
    code, stdout, stderr = run(avg2, short)
    assert code == 0 and "more follow it" in stderr, stderr
    code, stdout, stderr = run(avg2, whole)
    assert code == 0 and stderr == "", stderr


def test_whole_wav_has_no_warning(avg2, tmp_path):
    code, stdout, stderr = run(avg2, write_wav(tmp_path / "whole.wav", speechlike(2.0)))
    assert assert_result(code, stdout, stderr)["warnings"] == []
    assert stderr == ""


# -- unusual content ----------------------------------------------------------------------


def test_silence_gives_a_result(avg2, tmp_path):
    silence = write_wav(tmp_path / "silence.wav", np.zeros(2 * RATE, np.float32))
    result = assert_result(*run(avg2, silence))
    assert result["audio_seconds"] == 2.0
    assert result["audio_tokens"] == 25  # 50 encoder frames / K=2


def test_50_ms_clip_gives_at_least_one_token(avg2, tmp_path):
    short = write_wav(tmp_path / "short.wav", speechlike(0.05))
    result = assert_result(*run(avg2, short))
    assert result["audio_tokens"] >= 1
    assert result["audio_seconds"] == 0.05


def test_10_ms_clip_is_too_short(avg2, tmp_path):
    tiny = write_wav(tmp_path / "tiny.wav", speechlike(0.01))
    code, _, stderr = run(avg2, tiny)
    assert_one_line_error(code, stderr, "too short", "10 ms", "30 ms")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_samples(avg2, tmp_path, bad):
    samples = speechlike(1.0)
    samples[RATE // 2] = bad
    path = write_wav(tmp_path / "bad.wav", samples, subtype="FLOAT")
    assert not np.isfinite(soundfile.read(str(path), dtype="float32")[0]).all()
    code, _, stderr = run(avg2, path)
    assert_one_line_error(code, stderr, "NaN or infinite")


@pytest.mark.parametrize(("scale", "channels"), [(300.0, 1), (3e38, 6)], ids=["300", "near-float32-max-6ch"])
def test_float_files_past_full_scale_are_warned_about(avg2, tmp_path, scale, channels):
    """A float file of integer PCM values reads far too loud: answered, with the warning in-memory
    samples get. Six channels near float32's largest value overflowed the channel average, which
    printed numpy's RuntimeWarning and refused the file for "NaN or infinite samples" it did not hold."""
    samples = speechlike(1.0, channels=channels)
    samples = (samples / np.abs(samples).max() * scale).astype(np.float32)
    path = write_wav(tmp_path / "loud.wav", samples, subtype="FLOAT")
    code, stdout, stderr = run(avg2, path)
    assert_result(code, stdout, stderr)
    assert stderr.strip().splitlines() == [
        f"edgelalm: warning: {path}: samples reach {float(np.abs(samples).max()):.4g}, past full scale "
        "(float samples are read in [-1, 1]; integer PCM values stored as floats are that much too loud)"
    ], stderr


@pytest.mark.parametrize(
    ("rate", "channels"), [(8_000, 1), (48_000, 1), (RATE, 2), (RATE, 6)], ids=["8k", "48k", "stereo", "6ch"]
)
def test_other_rates_and_channel_counts_give_the_same_tokens(avg2, clip_tokens, tmp_path, rate, channels):
    """Resampling and downmix happen before the features: a 3 s clip is 3 s at any rate."""
    reference = clip_tokens
    assert reference == 38  # 3 s: 300 mel frames -> 75 encoder frames -> ceil(75 / 2)
    other = write_wav(
        tmp_path / f"clip-{rate}-{channels}ch.wav", speechlike(3.0, rate=rate, channels=channels), rate=rate
    )
    assert soundfile.info(str(other)).channels == channels
    result = assert_result(*run(avg2, other))
    assert result["audio_seconds"] == 3.0
    assert result["audio_tokens"] == reference


# -- long audio ---------------------------------------------------------------------------


def test_25_s_clip_runs_in_three_windows(avg2, tmp_path):
    samples = speechlike(25.0)
    whole = assert_result(*run(avg2, write_wav(tmp_path / "long.wav", samples)))
    assert whole["windows"] == 3
    window = 10 * RATE  # the tiny model's encoder window
    parts = [samples[start : start + window] for start in range(0, len(samples), window)]
    assert len(parts) == 3
    tokens = [audio_tokens_for(avg2, write_wav(tmp_path / f"part{i}.wav", part)) for i, part in enumerate(parts)]
    assert tokens == [125, 125, 63]
    assert whole["audio_tokens"] == sum(tokens)


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    # Tiled, not synthesised whole: 9.6 M samples of harmonics would be slow to build.
    samples = np.tile(speechlike(10.0), 60)
    return write_wav(tmp_path_factory.mktemp("ten_minutes") / "ten_minutes.wav", samples)


def test_ten_minutes_do_not_fit_uncompressed(tiny_bundles, ten_minutes):
    """600 s = 15000 encoder frames: with `none`, more than the 8192-token context."""
    code, _, stderr = run(tiny_bundles("none", 1), ten_minutes)
    line = assert_one_line_error(code, stderr, "context is 8192", "600 s", "15000 audio tokens", "factor K=")
    assert "; --windows each (window by window) or a bundle exported with avg or sample" in line
    factor = int(re.search(r"factor K=(\d+)", line).group(1))
    prompt_tokens = int(re.search(r"plus (\d+) prompt", line).group(1))
    assert factor >= 2 and math.ceil(15000 / factor) + prompt_tokens + MAX_TOKENS <= 8192


@pytest.mark.parametrize(
    "prompt_words, max_tokens, advice",
    [
        (9000, 8, "the prompt alone is over the context: a shorter prompt"),
        (10, 8180, "ask for fewer answer tokens"),
        (4000, 4180, "a shorter prompt or fewer answer tokens"),
    ],
)
def test_no_room_for_audio_names_what_takes_it(tiny_bundles, tmp_path, prompt_words, max_tokens, advice):
    """The prompt and the answer leave no room in the context for any audio: the advice names the larger."""
    clip = write_wav(tmp_path / "clip.wav", speechlike(3.0))
    prompt = " ".join(["word"] * prompt_words)
    code, _, stderr = run(tiny_bundles("none", 1), clip, "--prompt", prompt, "--max-tokens", str(max_tokens))
    line = assert_one_line_error(code, stderr, "answer tokens leave no room for audio in the decoder's context of 8192")
    assert line.endswith(f"; {advice}"), line


def test_ten_minutes_run_uncompressed_window_by_window(tiny_bundles, ten_minutes):
    """`--windows each`: every window is its own prompt, so any length fits the context."""
    result = assert_result(*run(tiny_bundles("none", 1), ten_minutes, "--windows", "each"))
    assert result["audio_seconds"] == 600.0
    # Cut at pauses, a window ends up to 5 s before the window's 10 s.
    assert 60 <= result["windows"] <= 120
    assert result["audio_tokens"] >= 15000


def test_shorter_windows_each_answered_apart(avg2, tmp_path):
    """`--window-seconds 4` with `--windows each`: a 12 s clip (the tiny model's window is 10 s)
    in windows of 2-4 s, every sample of it read."""
    result = assert_result(
        *run(avg2, write_wav(tmp_path / "clip.wav", speechlike(12.0)), "--windows", "each", "--window-seconds", 4)
    )
    assert 3 <= result["windows"] <= 6 and result["audio_seconds"] == 12.0


@pytest.mark.parametrize("subtitle_format", SUBTITLE_FORMATS)
def test_subtitles_are_the_windows_answers_at_their_times(avg2, tmp_path, subtitle_format):
    """`--subtitles` on a 12 s clip in windows of 2-4 s: read back by an independent parser (the
    `srt` package, webvtt-py), a cue for each window that answered something, at the times and with
    the answers the same run gives with --json (greedy: the same answers)."""
    clip = write_wav(tmp_path / "clip.wav", speechlike(12.0))
    windows = ("--windows", "each", "--window-seconds", 4)
    spans = assert_result(*run(avg2, clip, *windows))["timed_text"]
    code, stdout, stderr = edgelalm(
        "run", clip, "--bundle", avg2, "--max-tokens", MAX_TOKENS, *windows, "--subtitles", subtitle_format
    )
    assert code == 0 and "Traceback" not in stderr, stderr
    if subtitle_format == "srt":
        cues = [(cue.start.total_seconds(), cue.end.total_seconds(), cue.content) for cue in srt.parse(stdout)]
    else:
        cues = [
            (cue.start_time.in_milliseconds() / 1000, cue.end_time.in_milliseconds() / 1000, html.unescape(cue.text))
            for cue in webvtt.from_string(stdout)
        ]

    def cue_text(text):  # SubRip: one line, no "-->" (it has no escapes); WebVTT: the lines, unescaped
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " ".join(lines).replace("-->", "->") if subtitle_format == "srt" else "\n".join(lines)

    # a cue spans its window's speech (TimedText.cue_seconds), the window where none stood out
    expected = [(*TimedText(**span).cue_seconds, cue_text(span["text"])) for span in spans if cue_text(span["text"])]
    assert cues and len(cues) == len(expected), (stdout, spans)
    for cue, want in zip(cues, expected, strict=True):
        assert cue[:2] == pytest.approx(want[:2], abs=5e-4) and cue[2] == want[2], (cue, want)


def test_a_cue_shows_when_its_window_speaks_not_when_its_silence_starts(avg2, tmp_path):
    """5 s of near silence, 3 s of sound, 2 s of near silence, in one window: the cue ran from 0 s
    (the window's start), 5 s before anything was said."""
    rng = np.random.default_rng(3)
    quiet = lambda seconds: 1e-4 * rng.standard_normal(int(seconds * RATE)).astype(np.float32)  # noqa: E731
    clip = write_wav(tmp_path / "late.wav", np.concatenate([quiet(5.0), speechlike(3.0), quiet(2.0)]))
    code, stdout, stderr = edgelalm(
        "run", clip, "--bundle", avg2, "--max-tokens", MAX_TOKENS, "--windows", "each", "--subtitles", "srt"
    )
    assert code == 0 and "Traceback" not in stderr, stderr
    [cue] = list(srt.parse(stdout))
    # the sound's edges, padded by 0.2 s (features.SPEECH_PAD_SECONDS) and a 20 ms frame
    assert 4.78 <= cue.start.total_seconds() <= 5.0 and 8.0 <= cue.end.total_seconds() <= 8.22, stdout


def test_a_joined_cue_spans_every_window_that_speaks_or_sounds_throughout(avg2, tmp_path):
    """--windows joined: one cue for the clip, from its first window's speech to the end of a later
    window of sound throughout (speech over music; it was taken for silence and the cue ended
    with the first window)."""
    rng = np.random.default_rng(4)
    quiet = lambda seconds: 1e-4 * rng.standard_normal(int(seconds * RATE)).astype(np.float32)  # noqa: E731
    music = 0.2 * np.sin(2 * np.pi * 330 * np.arange(6 * RATE) / RATE).astype(np.float32) + speechlike(6.0)
    clip = write_wav(tmp_path / "joined.wav", np.concatenate([quiet(5.0), speechlike(3.0), quiet(2.0), music]))
    code, stdout, stderr = edgelalm(
        "run", clip, "--bundle", avg2, "--max-tokens", MAX_TOKENS, "--windows", "joined", "--subtitles", "srt"
    )
    assert code == 0 and "Traceback" not in stderr, stderr
    [cue] = list(srt.parse(stdout))
    assert 4.78 <= cue.start.total_seconds() <= 5.0 and cue.end.total_seconds() == 16.0, stdout


def test_each_cue_is_written_before_the_next_window_is_answered(avg2, tmp_path):
    """`--subtitles` writes a window's cue once it is answered: at each window's prefill, standard
    output (a file) already holds exactly the cues of the windows before it, as the same run's
    --json spans make them."""
    from edgelalm.runtime.subtitles import TimedText, to_subtitles

    clip = write_wav(tmp_path / "clip.wav", speechlike(12.0))
    windows = ("--windows", "each", "--window-seconds", 4, "--max-tokens", MAX_TOKENS)
    spans = [TimedText(**span) for span in assert_result(*run(avg2, clip, *windows))["timed_text"]]
    script = (
        "import os, sys\n"
        "from edgelalm.runtime import pipeline\n"
        "prefill = pipeline.Runtime._prefill\n"
        "def noting_prefill(self, *args):\n"
        "    print(os.lseek(1, 0, os.SEEK_CUR), file=sys.stderr)  # bytes on standard output so far\n"
        "    return prefill(self, *args)\n"
        "pipeline.Runtime._prefill = noting_prefill\n"
        "sys.argv = ['edgelalm'] + sys.argv[1:]\n"
        "from edgelalm.cli import main; main()\n"
    )
    with (tmp_path / "cues.srt").open("wb") as stdout:
        args = ["run", clip, "--bundle", avg2, *windows, "--subtitles", "srt"]
        result = subprocess.run(
            [sys.executable, "-c", script, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, env=_ENV,
            timeout=TIMEOUT_S,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written_at_prefill = [int(line) for line in result.stderr.decode().split()]
    assert len(written_at_prefill) == len(spans) >= 3
    assert written_at_prefill == [len(to_subtitles(spans[:index], "srt").encode()) for index in range(len(spans))]
    assert (tmp_path / "cues.srt").read_text() == to_subtitles(spans, "srt")


def test_out_dir_writes_each_clips_subtitles_to_a_file_of_its_own(avg2, tmp_path):
    """`--subtitles --out-dir`: several clips (standard input among them), a file each named after
    its clip, equal to what the clip alone prints on standard output; the paths on stdout; a clip
    that fails among them leaves no file, not even a hidden half one, and the others are written."""
    short = write_wav(tmp_path / "short.wav", speechlike(3.0))
    long = write_wav(tmp_path / "long.flac", speechlike(12.0, seed=1))
    piped = write_wav(tmp_path / "piped.wav", speechlike(2.0, seed=2))
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    options = ("--bundle", avg2, "--max-tokens", MAX_TOKENS, "--window-seconds", 4, "--subtitles", "vtt")
    alone = {}
    for clip in (short, long, piped):
        code, stdout, stderr = edgelalm("run", clip, *options)
        assert code == 0, stderr
        alone[clip] = stdout
    out = tmp_path / "subtitles"
    code, stdout, stderr = edgelalm(
        "run", short, bad, "-", long, *options, "--out-dir", out, stdin=piped.read_bytes()
    )  # fmt: skip
    assert code == 1 and stderr.strip().splitlines() == [
        f"edgelalm: error: cannot read audio from {bad}: Format not recognised."
    ], stderr
    written = [out / "short.vtt", out / "standard-input.vtt", out / "long.vtt"]
    assert stdout.splitlines() == [str(path) for path in written]
    assert sorted(out.iterdir()) == sorted(written)
    for path, clip in zip(written, (short, piped, long), strict=True):
        assert path.read_bytes() == alone[clip].encode()
        assert len(webvtt.from_string(path.read_text(), strict=True)) >= 1


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--temperature", "nan"), "temperature must be a finite number >= 0 (0: greedy), got nan"),
        (("--top-p", "0", "--temperature", "0.5"), "top_p must be a number above 0 and at most 1, got 0.0"),
        (("--prompt", "bad \udcff"), "the prompt is not valid Unicode text"),
    ],
)
def test_options_are_refused_once_before_the_bundle_loads(clip, tmp_path, option, message):
    """They were refused file by file, after the bundle loaded, each blaming a file
    (`{"file": "a.wav", "error": "a.wav: temperature must be ..."}` once per file)."""
    args = ["run", clip, clip, "--bundle", tmp_path / "no-bundle", "--json", *option]
    if "\udcff" in option[-1]:  # a command line's undecodable byte, as Python hands it over
        code, stdout, stderr = edgelalm(*args[:-1], os.fsdecode(b"bad \xff"))
    else:
        code, stdout, stderr = edgelalm(*args)
    assert_one_line_error(code, stderr, message)
    assert stdout == ""


def test_a_prompt_that_leaves_no_room_is_refused_once(avg2, clip):
    code, stdout, stderr = edgelalm("run", clip, clip, "--bundle", avg2, "--max-tokens", 8190, "--json")
    assert_one_line_error(code, stderr, "answer tokens leave no room for audio in the decoder's context")
    assert stdout == ""


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no --subtitles", "--out-dir writes subtitle files: give --subtitles srt or vtt"),
        ("one name in two folders", "would both be written to"),
        ("one name but its case", "would both be written to"),
        ("standard input and its file name", "would both be written to"),
        ("a file there", "clip.srt exists already; remove it, or give another --out-dir"),
        ("a link to nothing there", "clip.srt exists already; remove it, or give another --out-dir"),
        ("out-dir is a file", "is a file, not a folder"),
        ("out-dir under a file", "is a file, not a folder"),
        ("out-dir a link to nothing", "is a link to nothing"),
        ("a clip with no name", "has no name to call its subtitle file by"),
        # it said "has no name": its subtitle file would be hidden (and take a scratch file's form)
        ("a hidden clip", "its subtitle file would be a hidden file; rename the clip"),
        # an unset shell variable: the subtitle files were written into the working folder
        ("an empty out-dir", "--out-dir is empty; give the folder for the subtitle files"),
        # it said "a link to nothing"
        ("out-dir a link to a file", "is a file, not a folder"),
        ("several to stdout", "--subtitles writes one clip's subtitles to standard output; got 2 files"),
        # the bundle then refused to run: "sunset.srt: not listed in manifest.json"
        ("out-dir a bundle", "is in the bundle"),
        ("out-dir inside a bundle", "is in the bundle"),
        ("out-dir a link into a bundle", "is in the bundle"),
        # a traceback: Path.resolve raises RuntimeError on a loop (Python 3.11)
        ("out-dir a loop of links", "is a link to nothing"),
    ],
)
def test_out_dir_refusals_come_before_the_bundle_loads(clip, tmp_path, case, message):
    """Each is refused in one line before the bundle loads (the bundle named does not exist, and
    its error would come first otherwise), nothing made or replaced."""
    out = tmp_path / "out"
    extra: tuple = ("--subtitles", "srt", "--out-dir", out)
    clips: tuple = (clip,)
    if case == "no --subtitles":
        extra = ("--out-dir", out)
    elif case == "one name in two folders":
        (tmp_path / "elsewhere").mkdir()
        clips = (clip, shutil.copy(clip, tmp_path / "elsewhere" / clip.name))
    elif case == "one name but its case":
        clips = (clip, shutil.copy(clip, tmp_path / "CLIP.flac"))
    elif case == "standard input and its file name":
        clips = ("-", shutil.copy(clip, tmp_path / "standard-input.wav"))
    elif case in ("a file there", "a link to nothing there"):
        out.mkdir()
        if case == "a file there":
            (out / "clip.srt").write_text("the user's own\n")
        else:
            (out / "clip.srt").symlink_to(tmp_path / "nothing")
    elif case == "out-dir is a file":
        out.write_text("")
    elif case == "out-dir under a file":
        extra = ("--subtitles", "srt", "--out-dir", clip / "out")
    elif case == "out-dir a link to nothing":
        out.symlink_to(tmp_path / "nothing")
    elif case == "a clip with no name":
        clips = (shutil.copy(clip, tmp_path / ".wav"),)
    elif case == "a hidden clip":
        clips = (shutil.copy(clip, tmp_path / ".take1.wav"),)
    elif case == "an empty out-dir":
        extra = ("--subtitles", "srt", "--out-dir", "")
    elif case in ("out-dir a bundle", "out-dir inside a bundle", "out-dir a link into a bundle"):
        out.mkdir()
        (out / MANIFEST_FILE).write_text(json.dumps({"format_version": 3, "files": {}}))
        (out / "subtitles").mkdir()
        given = {"out-dir a bundle": out, "out-dir inside a bundle": out / "subtitles"}.get(case, tmp_path / "link")
        if case == "out-dir a link into a bundle":
            given.symlink_to(out / "subtitles")
        extra = ("--subtitles", "srt", "--out-dir", given)
    elif case == "out-dir a loop of links":
        out.symlink_to(out)
    elif case == "out-dir a link to a file":
        (tmp_path / "a-file").write_text("")
        out.symlink_to(tmp_path / "a-file")
    else:
        clips, extra = (clip, clip), ("--subtitles", "srt")
    before = sorted(tmp_path.rglob("*"))
    code, stdout, stderr = edgelalm("run", *clips, "--bundle", tmp_path / "no-bundle", *extra, stdin=clip.read_bytes())
    assert_one_line_error(code, stderr, message)
    assert stdout == "" and sorted(tmp_path.rglob("*")) == before
    if case == "a file there":
        assert (out / "clip.srt").read_text() == "the user's own\n"


def test_out_dir_refuses_a_subtitle_name_longer_than_the_file_system_allows_and_no_other(clip, tmp_path):
    """A name is refused only where the subtitle file's own name would not fit: its hidden scratch
    name is cut to fit (files._kept_name), where the check measured the whole scratch name and
    refused names within ~20 bytes of the limit, or of 85 CJK characters (255 bytes)."""
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    fits = [
        shutil.copy(clip, tmp_path / ("a" * (name_max - 4) + ".wav")),
        shutil.copy(clip, tmp_path / ("語" * 83 + ".wav")),
    ]
    for long_clip in fits:  # 251 bytes for `.srt`: past this bundle's missing folder, the next check
        code, stdout, stderr = edgelalm(
            "run", long_clip, "--bundle", tmp_path / "no-bundle", "--subtitles", "srt", "--out-dir", tmp_path / "out"
        )
        assert_one_line_error(code, stderr, "no-bundle")
        assert "too long" not in stderr
    too_long = shutil.copy(clip, tmp_path / ("b" * (name_max - 2) + ".w"))  # its stem + `.srt`: 2 bytes past the limit
    code, stdout, stderr = edgelalm(
        "run", too_long, "--bundle", tmp_path / "no-bundle", "--subtitles", "srt", "--out-dir", tmp_path / "out"
    )
    assert_one_line_error(code, stderr, "its subtitle file's name is too long for")
    assert not (tmp_path / "out").exists()


def test_a_subtitle_file_is_published_only_where_none_appeared(tmp_path):
    """files.new_file: the scratch becomes the file when the block ends; a file that appeared
    meanwhile is kept (FileExistsError) and the scratch removed; a block that fails leaves nothing."""
    from edgelalm.files import new_file

    target = tmp_path / "talk.srt"
    with new_file(target) as scratch:
        scratch.write_text("ours")
    assert target.read_text() == "ours" and [path.name for path in tmp_path.iterdir()] == ["talk.srt"]
    other = tmp_path / "other.srt"
    with pytest.raises(FileExistsError), new_file(other) as scratch:
        scratch.write_text("ours")
        other.write_text("the user's own")
    assert other.read_text() == "the user's own" and sorted(path.name for path in tmp_path.iterdir()) == [
        "other.srt", "talk.srt"
    ]  # fmt: skip
    with pytest.raises(RuntimeError), new_file(tmp_path / "failed.srt") as scratch:
        scratch.write_text("half")
        raise RuntimeError("the clip failed")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.srt", "talk.srt"]


def test_subtitles_without_windows_cut_the_clip_at_pauses(avg2, tmp_path):
    """`--subtitles` alone implies --windows each (a bundle that advises nothing is answered joined,
    one cue for the whole clip); --windows joined keeps one cue."""
    clip = write_wav(tmp_path / "clip.wav", speechlike(25.0))
    code, stdout, stderr = edgelalm("run", clip, "--bundle", avg2, "--max-tokens", MAX_TOKENS, "--subtitles", "srt")
    assert code == 0, stderr
    starts = [cue.start.total_seconds() for cue in srt.parse(stdout)]
    assert starts[0] == 0 and len(starts) >= 3, stdout  # the tiny model's 10 s window: at least three
    code, stdout, stderr = edgelalm(
        "run", clip, "--bundle", avg2, "--max-tokens", MAX_TOKENS, "--subtitles", "srt", "--windows", "joined"
    )
    assert code == 0, stderr
    assert [(cue.start.total_seconds(), cue.end.total_seconds()) for cue in srt.parse(stdout)] == [(0, 25)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--json",), "--subtitles and --json: choose one"),
        (
            ("SECOND",),
            "--subtitles writes one clip's subtitles to standard output; got 2 files: give one, or --out-dir",
        ),
    ],
)
def test_subtitles_for_one_clip_alone(avg2, clip, extra, message):
    extra = tuple(clip if arg == "SECOND" else arg for arg in extra)
    code, _, stderr = edgelalm("run", clip, "--bundle", avg2, "--subtitles", "vtt", *extra)
    assert_one_line_error(code, stderr, message)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--window-seconds", 4), "--window-seconds applies to --windows each"),
        (("--windows", "each", "--window-seconds", 0.5), "from 1 s to the encoder's window of 10 s"),
        (("--windows", "each", "--window-seconds", 11), "got 11"),
        # A window's tokens must fit what the context leaves after the answer (--max-tokens is per window).
        (
            ("--windows", "each", "--max-tokens", 8100),
            "a window of 3 s gives up to 38 audio tokens with avg2, over the 27",
        ),
    ],
)
def test_a_window_length_out_of_place_is_one_line(avg2, tmp_path, extra, message):
    code, _, stderr = run(avg2, write_wav(tmp_path / "clip.wav", speechlike(3.0)), *extra)
    assert_one_line_error(code, stderr, message)


@pytest.fixture(scope="module")
def advising(avg2, tmp_path_factory):
    """The avg2 bundle advising 4 s windows answered each on its own (the manifest's `windows`, as
    export writes it from a checkpoint's edgelalm_windows.json)."""
    from edgelalm.manifest import WindowsInfo, read_manifest, write_manifest

    folder = tmp_path_factory.mktemp("advising") / "bundle"
    shutil.copytree(avg2, folder)
    write_manifest(folder, dataclasses.replace(read_manifest(folder), windows=WindowsInfo("each", 4.0)))
    return folder


@pytest.mark.parametrize(
    ("extra", "mode", "windows"),
    [
        ((), "each", (3, 6)),  # the advice: 4 s windows of the 12 s clip
        (("--windows", "each"), "each", (3, 6)),  # the advice's length
        (("--windows", "each", "--window-seconds", 10), "each", (2, 2)),  # the caller's length
        (("--windows", "joined"), "joined", (2, 2)),  # the encoder's 10 s windows in one prompt
    ],
)
def test_the_bundle_advises_the_windows_and_the_caller_overrides(advising, tmp_path, extra, mode, windows):
    result = assert_result(*run(advising, write_wav(tmp_path / "clip.wav", speechlike(12.0)), *extra))
    assert result["window_mode"] == mode and windows[0] <= result["windows"] <= windows[1]
    code, stdout, _ = edgelalm("inspect", advising)
    assert code == 0 and "windows       each, 4 s windows (the checkpoint's advice" in stdout


def test_ten_minutes_fit_compressed(tiny_bundles, ten_minutes):
    """The factor the error suggests fits: with avg K=2 (7500 tokens) the clip runs."""
    code, _, stderr = run(tiny_bundles("none", 1), ten_minutes)
    factor = int(re.search(r"factor K=(\d+)", stderr).group(1))
    result = assert_result(*run(tiny_bundles("avg", factor), ten_minutes))
    assert result["windows"] == 60
    assert result["audio_seconds"] == 600.0
    assert result["audio_tokens"] == math.ceil(15000 / factor)


# -- bundle problems ----------------------------------------------------------------------


def test_bundle_folder_missing(clip, tmp_path):
    code, _, stderr = run(tmp_path / "no-such-bundle", clip)
    assert_one_line_error(code, stderr, "bundle folder not found", "no-such-bundle")


def test_bundle_given_as_its_manifest_file(avg2, clip):
    code, _, stderr = run(avg2 / MANIFEST_FILE, clip)
    assert_one_line_error(code, stderr, "is a file", "the folder that holds manifest.json")


def test_bundle_given_as_a_device_or_with_a_manifest_folder(clip, tmp_path):
    """/dev/null exists (it was "not found"); a manifest.json that is a folder is one (it was "has
    no manifest.json")."""
    code, _, stderr = run(Path("/dev/null"), clip)
    assert_one_line_error(code, stderr, "/dev/null is not a folder; a bundle is the folder that holds manifest.json")
    (tmp_path / "odd" / MANIFEST_FILE).mkdir(parents=True)
    code, _, stderr = run(tmp_path / "odd", clip)
    assert_one_line_error(code, stderr, f"{tmp_path / 'odd' / MANIFEST_FILE} is not a file")


@pytest.fixture(scope="module")
def bundle_files(avg2):
    return sorted(json.loads((avg2 / MANIFEST_FILE).read_text())["files"])


def test_bundle_lists_the_files_checked_below(bundle_files):
    assert set(bundle_files) >= {"encoder.onnx", "compressor.onnx", "decoder.gguf", "mel_filters.npy"}


@pytest.mark.parametrize(
    "name", ["encoder.onnx", "encoder.onnx.data", "compressor.onnx", "decoder.gguf", "mel_filters.npy"]
)
def test_bundle_with_a_file_removed(avg2, clip, tmp_path, bundle_files, name):
    assert name in bundle_files
    broken = copy_bundle(avg2, tmp_path / "broken")
    (broken / name).unlink()
    code, _, stderr = run(broken, clip)
    assert_one_line_error(code, stderr, f"missing {name}")


def test_bundle_without_manifest(avg2, clip, tmp_path):
    broken = copy_bundle(avg2, tmp_path / "broken")
    (broken / MANIFEST_FILE).unlink()
    code, _, stderr = run(broken, clip)
    assert_one_line_error(code, stderr, "not an edgelalm bundle", MANIFEST_FILE)


@pytest.mark.parametrize(
    "name", ["encoder.onnx", "encoder.onnx.data", "compressor.onnx", "decoder.gguf", "mel_filters.npy"]
)
def test_bundle_with_a_file_altered(avg2, clip, tmp_path, name):
    broken = copy_bundle(avg2, tmp_path / "broken")
    with (broken / name).open("ab") as stream:
        stream.write(b"\0")
    code, _, stderr = run(broken, clip)
    assert_one_line_error(code, stderr, f"{name} does not match the checksums")


def test_bundle_from_a_newer_format(avg2, clip, tmp_path):
    newer = copy_bundle(avg2, tmp_path / "newer")
    manifest = json.loads((newer / MANIFEST_FILE).read_text())
    manifest["format_version"] = 99
    (newer / MANIFEST_FILE).write_text(json.dumps(manifest))
    code, _, stderr = run(newer, clip)
    assert_one_line_error(code, stderr, "version 99", "Upgrade edgelalm")


def test_no_bundle_and_no_export_folder(clip, tmp_path):
    code, _, stderr = run(None, clip, cwd=tmp_path)
    assert_one_line_error(code, stderr, "no bundle under export/", "edgelalm export")


def test_no_bundle_picks_the_most_recently_written(avg2, tiny_bundles, clip, tmp_path):
    """Two bundles under ./export/: the one whose manifest was written last is used, whatever
    the folder names' order."""
    a = copy_bundle(avg2, tmp_path / "export" / "a-avg2")
    b = copy_bundle(tiny_bundles("none", 1), tmp_path / "export" / "b-none")
    now = time.time()
    expected_tokens = {"a-avg2": 38, "b-none": 75}  # 3 s = 75 encoder frames
    for newer, older in ((a, b), (b, a)):
        os.utime(older / MANIFEST_FILE, (now - 3600, now - 3600))
        os.utime(newer / MANIFEST_FILE, (now, now))
        code, stdout, stderr = run(None, clip, cwd=tmp_path)
        # Which bundle served is said on stderr, since the user did not name one.
        assert (
            stderr.strip() == f"edgelalm: bundle export/{newer.name} (the newest under export/; --bundle picks another)"
        )
        assert assert_result(code, stdout, "")["audio_tokens"] == expected_tokens[newer.name]


# -- options ------------------------------------------------------------------------------


def test_max_tokens_zero(avg2, clip):
    code, _, stderr = edgelalm("run", clip, "--bundle", avg2, "--max-tokens", 0)
    assert_one_line_error(code, stderr, "--max-tokens", "greater than or equal to 1")


def test_device_cuda(avg2, clip):
    import llama_cpp
    import onnxruntime

    code, stdout, stderr = run(avg2, clip, "--device", "cuda")
    has_cuda = (
        "CUDAExecutionProvider" in onnxruntime.get_available_providers() and llama_cpp.llama_supports_gpu_offload()
    )
    if has_cuda:
        assert_result(code, stdout, stderr)
    else:
        line = assert_one_line_error(code, stderr, "device cuda: ")
        assert "install" in line


# -- the run path is torch-free -----------------------------------------------------------

_WITHOUT_TORCH = (
    "import sys; "
    "[sys.modules.__setitem__(m, None) for m in ('torch', 'transformers', 'peft', 'onnx', 'onnxscript')]; "
    "sys.argv = ['edgelalm'] + sys.argv[1:]; "
    "from edgelalm.cli import main; main()"
)


def test_run_needs_no_torch(avg2, clip):
    normal = assert_result(*run(avg2, clip))
    code, stdout, stderr = run(avg2, clip, python_args=("-c", _WITHOUT_TORCH))
    without = assert_result(code, stdout, stderr)
    assert without["text"] == normal["text"]
    assert without["audio_tokens"] == normal["audio_tokens"]


# -- audio that is odd or lies (issue 18) ----------------------------------------------------


@pytest.mark.parametrize(
    ("case", "rate", "subtype", "channels", "seconds"),
    [
        ("1 kHz float", 1000, "FLOAT", 1, 2.0),
        ("384 kHz 24-bit", 384000, "PCM_24", 1, 2.0),
        ("8-bit unsigned", RATE, "PCM_U8", 1, 2.0),
        ("float64", RATE, "DOUBLE", 1, 2.0),
        ("64 channels", RATE, "PCM_16", 64, 1.0),
    ],
)
def test_unusual_formats_give_a_result(avg2, tmp_path, case, rate, subtype, channels, seconds):
    samples = speechlike(seconds, rate=rate, channels=channels)
    path = write_wav(tmp_path / "clip.wav", samples.astype(np.float32), rate=rate, subtype=subtype)
    result = assert_result(*run(avg2, path))
    assert result["audio_seconds"] == pytest.approx(seconds, abs=0.01)


# WAV headers as writers that cannot seek back leave them in a pipe: RIFF and data sizes of
# 0xFFFFFFFF (ffmpeg's WAV muxer), 0x7FFFF000 (sox), 0 (a placeholder never filled in).
STREAMED_SIZES = {"streamed wav ffffffff": 0xFFFFFFFF, "streamed wav 7ffff000": 0x7FFFF000, "streamed wav 0": 0}


@pytest.mark.parametrize("kind", ["wav", "flac", "ogg", *STREAMED_SIZES])
def test_standard_input_is_answered_as_the_same_file(avg2, tmp_path, kind):
    """`-` reads a clip piped in (saved to a private temporary file first, which goes away), and
    answers it as the file itself, without a warning, also where the WAV's sizes are a streaming
    writer's placeholders; among other files it is named `-`, as the user typed it."""
    suffix = ".wav" if "wav" in kind else f".{kind}"
    clip = write_wav(tmp_path / f"clip{suffix}", speechlike(3.0), subtype="VORBIS" if kind == "ogg" else "PCM_16")
    piped_bytes = bytearray(clip.read_bytes())
    if kind in STREAMED_SIZES:
        data_chunk = piped_bytes.index(b"data")
        size = STREAMED_SIZES[kind].to_bytes(4, "little")
        piped_bytes[4:8] = piped_bytes[data_chunk + 4 : data_chunk + 8] = size
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**_ENV, "TMPDIR": str(temporary)}
    from_file = assert_result(*run(avg2, clip))
    code, stdout, stderr = run(avg2, "-", stdin=bytes(piped_bytes), env=env)
    piped = assert_result(code, stdout, stderr)
    assert stderr == ""
    assert (piped["text"], piped["audio_tokens"], piped["audio_seconds"]) == (
        from_file["text"], from_file["audio_tokens"], from_file["audio_seconds"]
    )  # fmt: skip
    code, stdout, stderr = run(avg2, clip, "-", stdin=bytes(piped_bytes), env=env)
    assert code == 0, stderr
    assert [json.loads(line)["file"] for line in stdout.splitlines() if line.startswith("{")] == [str(clip), "-"]
    assert list(temporary.iterdir()) == []


@pytest.mark.parametrize(
    "header",
    [*STREAMED_SIZES.values(), "short of what follows", "odd placeholder", "list chunk after the data", "flac"],
)
def test_a_streamed_header_is_finished_as_libsndfile_reads_it(tmp_path, header):
    """finish_streamed_wav_header on a pipe's bytes: the RIFF size becomes the file's less 8, the
    data size what follows the header in whole frames (an odd byte at the end, half a frame, left
    out), and libsndfile then reads every sample the writer sent, without the header warnings a
    file gets. "short of what follows": a placeholder on a stream longer than it (sox's 0x7FFFF000
    past 2 GiB); "odd placeholder": sox's 24-bit 0x7FFFEFFF, past the end. 0xFFFFFFFF libsndfile
    reads to the end itself; a whole WAV with a LIST chunk after its data, or a FLAC, stays byte for
    byte."""
    from edgelalm.runtime.audio import finish_streamed_wav_header, header_warning, open_audio

    samples = speechlike(1.0, channels=2)
    original = write_wav(tmp_path / ("clip.flac" if header == "flac" else "clip.wav"), samples)
    expected, _ = soundfile.read(original, dtype="int16")
    piped = bytearray(original.read_bytes())
    data_size_at = piped.find(b"data") + 4
    placeholder = {"short of what follows": 4000, "odd placeholder": 0x7FFFEFFF}.get(header, header)
    if isinstance(placeholder, int):
        piped[4:8] = piped[data_size_at : data_size_at + 4] = placeholder.to_bytes(4, "little")
        piped += b"\x01"
    elif header == "list chunk after the data":
        piped += b"LIST" + (4).to_bytes(4, "little") + b"INFO"
        piped[4:8] = (len(piped) - 8).to_bytes(4, "little")
    saved = tmp_path / "audio"
    saved.write_bytes(piped)
    changed = finish_streamed_wav_header(saved, "standard input")
    assert changed == (isinstance(placeholder, int) and placeholder != 0xFFFFFFFF)
    if changed:
        finished = saved.read_bytes()
        following = len(piped) - (data_size_at + 4)
        assert int.from_bytes(finished[4:8], "little") == len(piped) - 8
        assert int.from_bytes(finished[data_size_at : data_size_at + 4], "little") == following - following % 4
        assert (
            finished[8:data_size_at] == piped[8:data_size_at]
            and finished[data_size_at + 4 :] == piped[data_size_at + 4 :]
        )
    else:
        assert saved.read_bytes() == piped
    read, rate = soundfile.read(saved, dtype="int16")
    assert rate == RATE and np.array_equal(read, expected)
    if header != "flac":
        assert header_warning(open_audio(saved)) is None


def test_a_streamed_wav_past_4_gib_is_refused(tmp_path):
    """A WAV stream longer than a RIFF size can count: refused in one line, not cut at 4 GiB (a
    sparse file: nothing is written but the header)."""
    from edgelalm.errors import EdgelalmError
    from edgelalm.runtime.audio import finish_streamed_wav_header

    saved = tmp_path / "audio"
    saved.write_bytes(write_wav(tmp_path / "clip.wav", speechlike(0.1)).read_bytes()[:44])
    with saved.open("r+b") as stream:
        stream.truncate(2**32 + 100)
    with pytest.raises(EdgelalmError, match=r"standard input holds more than 4\.0 GiB of WAV, more than a WAV header"):
        finish_streamed_wav_header(saved, "standard input")


def test_a_wav_stream_past_what_a_header_counts_is_refused_as_it_arrives(avg2, tmp_path):
    """It was refused only once saved whole: `- < /dev/zero` behind a WAV header filled $TMPDIR
    (RAM, on a tmpfs) first. The limit is lowered to 1 MiB here, the stream endless."""
    header = write_wav(tmp_path / "clip.wav", speechlike(0.1)).read_bytes()[:44]
    (tmp_path / "header").write_bytes(header)
    script = (
        "import sys\n"
        "from edgelalm.runtime import audio\n"
        "audio._MAX_RIFF_BYTES = 2**20\n"
        "sys.argv = ['edgelalm', 'run', '-', '--bundle', sys.argv[1]]\n"
        "from edgelalm.cli import main; main()\n"
    )
    command = f'cat {tmp_path / "header"} /dev/zero | {sys.executable} -c "$SCRIPT" {avg2}'
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, env={**_ENV, "SCRIPT": script, "TMPDIR": str(tmp_path)},
        timeout=TIMEOUT_S,
    )  # fmt: skip
    assert_one_line_error(result.returncode, result.stderr.decode(), "standard input holds more than 0.0 GiB of WAV")


def test_dash_alone_is_standard_input_and_dot_slash_dash_a_file(avg2, tmp_path):
    """`./-` is the file named - (libsndfile reads a bare `-` from standard input: it is opened as
    ./-); `-` is standard input; each named as typed, and standard input failing among several
    files is its own line naming it."""
    soundfile.write(tmp_path / "-", speechlike(3.0), RATE, format="WAV", subtype="PCM_16")
    piped = write_wav(tmp_path / "piped.wav", speechlike(2.0)).read_bytes()
    code, stdout, stderr = run(avg2, "./-", "-", stdin=piped, cwd=tmp_path)
    assert code == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [(record["file"], record["audio_seconds"]) for record in records] == [("./-", 3.0), ("-", 2.0)]
    code, stdout, stderr = run(avg2, "-", "./-", stdin=b"not audio", cwd=tmp_path)
    assert code == 1 and "Traceback" not in stderr
    message = "cannot read audio from standard input: Format not recognised."
    assert stderr.strip().splitlines() == [f"edgelalm: error: {message}"]
    assert json.loads(stdout.splitlines()[0]) == {"file": "-", "error": message}
    (tmp_path / "-").unlink()
    code, _, stderr = run(avg2, "./-", cwd=tmp_path)
    assert_one_line_error(code, stderr, "audio file not found: ./- (a file named -)")


def test_the_bundle_is_checked_before_standard_input_is_read(tmp_path):
    """A pipe whose writer has not finished (a recording still running) does not hold up a
    mistake in the command: a missing bundle is said at once, standard input left unread."""
    process = subprocess.Popen(
        [sys.executable, "-m", "edgelalm.cli", "run", "-", "--bundle", str(tmp_path / "missing")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_ENV,
    )  # fmt: skip
    try:
        process.wait(timeout=TIMEOUT_S)  # standard input stays open: reading it first would hang
        stderr = process.stderr.read().decode()
    finally:
        process.kill()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()
    assert_one_line_error(process.returncode, stderr, "bundle folder not found")


def test_standard_input_is_named_in_warnings(avg2, tmp_path):
    loud = write_wav(tmp_path / "loud.wav", speechlike(2.0) * 300, subtype="FLOAT").read_bytes()
    code, stdout, stderr = run(avg2, "-", stdin=loud)
    assert code == 0, stderr
    assert stderr.startswith("edgelalm: warning: standard input: samples reach"), stderr
    assert json.loads(stdout.splitlines()[-1])["warnings"] == [stderr.strip().removeprefix("edgelalm: warning: ")]


def test_a_killed_run_s_copy_of_standard_input_is_removed_by_the_next(avg2, clip, tmp_path):
    """An OOM kill or a native exit (OpenBLAS, libgomp under a pids limit) left the user's audio in
    $TMPDIR/edgelalm-stdin-* for good, and later runs left it there. A dead process's copy on this
    host goes; a live process's, another host's and an unrecognised name stay."""
    from edgelalm.files import host_tag

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    names = {
        "dead": f"edgelalm-stdin-{host_tag()}-{dead}-abc123",
        "alive": f"edgelalm-stdin-{host_tag()}-{os.getpid()}-def456",
        "other host": f"edgelalm-stdin-elsewhere.example-{dead}-ghi789",
        "unrecognised": "edgelalm-stdin-x1y2",
    }
    scratch = tmp_path / "tmp"
    for name in names.values():
        (scratch / name).mkdir(parents=True)
        (scratch / name / "audio").write_bytes(b"someone's audio")
    code, stdout, stderr = run(avg2, "-", stdin=Path(clip).read_bytes(), env={**_ENV, "TMPDIR": str(scratch)})
    assert_result(code, stdout, stderr)
    assert {path.name for path in scratch.iterdir()} == set(names.values()) - {names["dead"]}


@pytest.mark.parametrize(
    ("stdin", "extra", "message"),
    [
        (b"", (), "standard input is empty"),
        (b"not audio", (), "cannot read audio from standard input: Format not recognised."),
        (b"", ("-",), "- (standard input) is named more than once; it can be read once"),
        ("terminal", (), "- reads audio from standard input, which is a terminal: pipe audio in"),
        ("closed", (), "- reads audio from standard input, which is closed"),
    ],
)
def test_standard_input_that_holds_no_audio_is_one_line(avg2, tmp_path, stdin, extra, message):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**_ENV, "TMPDIR": str(temporary)}
    if stdin == "terminal":
        import pty

        parent, child = pty.openpty()
        try:
            code, _, stderr = run(avg2, "-", *extra, stdin=child, env=env)
        finally:
            os.close(parent)
            os.close(child)
    elif stdin == "closed":
        command = [sys.executable, "-m", "edgelalm.cli", "run", "-", "--bundle", str(avg2)]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=TIMEOUT_S,
            preexec_fn=lambda: os.close(0),
        )
        code, stderr = result.returncode, result.stderr.decode()
    else:
        code, _, stderr = run(avg2, "-", *extra, stdin=stdin, env=env)
    assert_one_line_error(code, stderr, message)
    assert list(temporary.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_stream_is_refused_in_one_line(avg2, tmp_path, kind):
    """A pipe by name (`run <(sox ...)`) is pointed to `-`, which reads one."""
    path = tmp_path / "fifo.wav"
    if kind == "fifo":
        os.mkfifo(path)
        assert_one_line_error(*run(avg2, path)[::2], "fifo.wav is a pipe; give it as - to read it")
    else:
        assert_one_line_error(*run(avg2, "/dev/zero")[::2], "not an audio file")


def test_standard_input_that_is_no_audio_is_refused_as_it_arrives(avg2, tmp_path):
    """`run - < /dev/zero` saved the endless stream in $TMPDIR (269 MB in 7 s) and would have
    filled it before libsndfile said "Format not recognised"."""
    with open("/dev/zero", "rb") as zeros:
        code, stdout, stderr = run(avg2, "-", stdin=zeros, env={**_ENV, "TMPDIR": str(tmp_path)})
    assert_one_line_error(code, stderr, "cannot read audio from standard input: Format not recognised")
    assert list(tmp_path.iterdir()) == []


def _damaged(path, share=0.3, count=2000):
    """`path` with `count` random bytes written over it at `share` of its length."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * share)
    data[at : at + count] = np.random.default_rng(1).integers(0, 256, count, dtype=np.uint8).tobytes()
    damaged = path.with_name("damaged-" + path.name)
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.mark.parametrize("container", ["MP3", "FLAC"])
def test_a_damaged_stretch_keeps_what_decodes(avg2, tmp_path, container):
    """A read that failed raised, and every frame decoded before it was lost: a FLAC with a damaged
    stretch at 30% was refused whole ("flac decoder lost sync"), an MP3 too, though its decoder
    finds the stream again after the damage and decodes the rest."""
    if container not in soundfile.available_formats():
        pytest.skip(f"this libsndfile has no {container}")
    whole = tmp_path / f"whole.{container.lower()}"
    soundfile.write(whole, speechlike(60.0), RATE, format=container)
    code, stdout, stderr = run(avg2, _damaged(whole))
    result = assert_result(code, stdout, stderr)
    (warning,) = result["warnings"]
    # Its one line, not also the decoder's own (libmpg123: "Note: Illegal Audio-MPEG-Header ...").
    assert stderr.splitlines() == [f"edgelalm: warning: {warning}"], stderr
    worded = r".*damaged-whole\.\w+: damaged from (\d+\.\d\d) s \(.+\); using the [\d.]+ s that could be decoded"
    assert re.fullmatch(worded, warning), warning
    damaged_at = float(re.fullmatch(worded, warning).group(1))
    assert 15 < damaged_at < 20 and result["audio_seconds"] >= damaged_at
    if container == "MP3":  # found again past the damage
        assert result["audio_seconds"] > 55


def test_mp3_files_joined_say_what_libsndfile_leaves_out(avg2, tmp_path):
    """`cat a.mp3 b.mp3`: libsndfile reads as far as the first file's length header counts and
    stops, silently; the frames themselves say how long the whole is."""
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no mp3")
    part = tmp_path / "part.mp3"
    soundfile.write(part, speechlike(5.0), RATE, format="MP3")
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(part.read_bytes() * 3)
    result = assert_result(*run(avg2, joined))
    assert 4.9 < result["audio_seconds"] < 5.1
    (warning,) = result["warnings"]
    assert re.search(
        r"only the first 5\.00 s of its 15\.\d\d s can be read .*ffmpeg -i in\.mp3 out\.flac. reads it all", warning
    )
    assert assert_result(*run(avg2, part))["warnings"] == []


def test_an_mp3_s_frames_count_it_whatever_its_length_header_says(avg2, tmp_path):
    """mpeg_length against libsndfile's own decoding of a file with its Xing header (the count
    libsndfile trusts), then of the same frames without it, behind an ID3v2 tag: libsndfile then
    guesses the length from the first frame's bitrate, reads 5.5 s of this VBR file's 7 s and
    stops, silently."""
    from edgelalm.runtime.mpeg import mpeg_length

    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no mp3")
    tagged = tmp_path / "tagged.mp3"
    soundfile.write(tagged, speechlike(7.0), RATE, format="MP3")
    decoded = len(soundfile.read(tagged)[0])
    length = mpeg_length(tagged, RATE)
    # Within two frames: the encoder's delay and padding, which the decoder trims.
    assert length.has_length_tag and abs(length.frames - decoded) <= 2 * 1152, (length, decoded)
    data = tagged.read_bytes()
    first = next(at for at in range(len(data)) if _frame(data[at : at + 4], RATE))
    xing_bytes = _frame(data[first : first + 4], RATE)[0]
    tag = b"ID3\x04\x00\x00\x00\x00\x01\x00" + bytes(128)  # a 128-byte ID3v2 tag
    untagged = tmp_path / "untagged.mp3"
    untagged.write_bytes(tag + data[first + xing_bytes :])  # the Xing frame dropped
    # The same frames less the Xing one, the tag no part of the bytes the frames are a share of.
    assert mpeg_length(untagged, RATE) == dataclasses.replace(
        length,
        has_length_tag=False,
        frame_bytes=length.frame_bytes - xing_bytes,
        untagged_bytes=length.untagged_bytes - first - xing_bytes,
    )
    # Counted at the rate asked, as MP3s of another rate joined after the first are.
    assert mpeg_length(untagged, 44100).frames == pytest.approx(length.frames * 44100 / RATE, rel=1e-3)
    guessed = len(soundfile.read(untagged)[0])
    assert guessed < decoded - RATE  # what this test is about: libsndfile's guess is short
    result = assert_result(*run(avg2, untagged))
    assert result["audio_seconds"] == pytest.approx(guessed / RATE, abs=0.01)
    (warning,) = result["warnings"]
    assert f"only the first {guessed / RATE:.2f} s of its {length.frames / RATE:.2f} s can be read" in warning


def _frame(header, rate):
    from edgelalm.runtime.mpeg import _frame

    frame = _frame(header) if len(header) == 4 else None
    return frame if frame is not None and frame[2] == rate else None


def test_a_wav_s_block_align_and_a_trailing_id3_tag_are_no_truncation(avg2, tmp_path):
    """nBlockAlign written wrong (2 for 16-bit stereo: libsndfile takes channels x bytes) gave
    "declares 6.97 s ... but the file holds 3.48 s (truncated?)" on a whole file; an ID3 tag
    appended after the data (tagging tools) gave "4.63 s more follow it", advice to rewrite the
    header that would have made the tag into noise."""
    stereo = write_wav(tmp_path / "stereo.wav", speechlike(3.0, channels=2))
    data = bytearray(stereo.read_bytes())
    assert data[32:34] == (4).to_bytes(2, "little")  # nBlockAlign in the canonical 44-byte header
    data[32:34] = (2).to_bytes(2, "little")
    wrong_align = tmp_path / "wrong-align.wav"
    wrong_align.write_bytes(bytes(data))
    tagged = tmp_path / "tagged.wav"
    tagged.write_bytes(stereo.read_bytes() + b"ID3\x04\x00\x00\x00\x01\x00\x00" + bytes(128 * 100))
    for path in (wrong_align, tagged):
        result = assert_result(*run(avg2, path))
        assert result["warnings"] == [] and 2.9 < result["audio_seconds"] < 3.1, result


def test_a_header_with_a_sampling_rate_of_0_is_worded(avg2, tmp_path):
    """libsndfile's "Internal error : SF_INFO struct incomplete." said nothing a user could act on."""
    data = bytearray(write_wav(tmp_path / "clip.wav", speechlike(1.0)).read_bytes())
    data[24:28] = bytes(4)  # the fmt chunk's sampling rate
    zero_rate = tmp_path / "zero-rate.wav"
    zero_rate.write_bytes(bytes(data))
    assert_one_line_error(*run(avg2, zero_rate)[::2], "its header declares no usable format (a sampling rate")


@pytest.mark.parametrize(("samples", "windows"), [(10 * RATE, 1), (10 * RATE + 1, 1), (10 * RATE + 480, 2)])
def test_exactly_one_window_and_just_over(avg2, tmp_path, samples, windows):
    """The tiny model's window is 10 s: one sample more is too short for the encoder (30 ms) and is
    dropped; 30 ms more makes a second window."""
    clip = np.resize(speechlike(1.0), samples)
    result = assert_result(*run(avg2, write_wav(tmp_path / "w.wav", clip)))
    assert result["windows"] == windows


# -- long files are read window by window (issue 18) ----------------------------------------

_MEASURED = (
    "import atexit, sys; from edgelalm.runtime.memory import peak_rss_mb; "
    "atexit.register(lambda: print(f'PEAK {peak_rss_mb():.0f}', file=sys.stderr)); "
    "sys.argv = ['edgelalm'] + sys.argv[1:]; from edgelalm.cli import main; main()"
)


def _long_wav(path, minutes):
    """`minutes` of speech-like audio at 8 kHz, written a minute at a time."""
    minute = speechlike(60.0, rate=8000)
    with soundfile.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_16") as stream:
        for _ in range(minutes):
            stream.write(minute)
    return path


@pytest.mark.slow
def test_a_long_file_is_refused_partway_with_flat_memory(tiny_bundles, tmp_path):
    """unseg's token count is known only as it goes: a 20-minute and a 60-minute file both overflow
    the tiny model's 8192-token context partway and are refused at the same window, so their peak
    memory is the same: nothing of the file past that window is held (reading the 60-minute one
    whole would add 40 minutes of samples, 154 MB at 16 kHz; the previous reader took 542 MB for 40
    minutes). Compared with each other, not with a short file's: the allocator's slack after ~100
    windows varies by tens of MB with the machine's load, the same for both."""
    unseg = tiny_bundles("unseg", 1)
    code, _, stderr = run(unseg, _long_wav(tmp_path / "2.wav", 2), python_args=("-c", _MEASURED))
    assert code == 0, stderr
    peaks, refusals = {}, {}
    for minutes in (20, 60):
        code, stdout, stderr = run(
            unseg, _long_wav(tmp_path / f"{minutes}.wav", minutes), python_args=("-c", _MEASURED)
        )
        lines = stderr.strip().splitlines()
        peaks[minutes] = float(lines[-1].split()[1])
        assert code == 1 and "Traceback" not in stderr and len(lines) == 2, stderr
        expected = f"edgelalm: error: the clip ({minutes * 60} s) does not fit the decoder's context of 8192"
        assert lines[0].startswith(expected)
        assert "already give" in lines[0] and "s fit" in lines[0]
        refusals[minutes] = lines[0].split(":", 2)[2].split(")", 1)[1]  # all but the clip's length
    assert refusals[20] == refusals[60]  # the same window: as far into the file
    assert peaks[60] <= peaks[20] + 20, peaks


def test_a_fixed_rate_file_too_long_is_refused_from_its_header(avg2, tmp_path):
    """avg2's tokens are known from the header's duration: nothing is read or encoded."""
    code, _, stderr = run(avg2, _long_wav(tmp_path / "long.wav", 12), "--max-tokens", "4")
    line = assert_one_line_error(code, stderr, "the clip (720 s, 9000 audio tokens with avg2)", "factor K=")
    assert "context is 8192" in line


def _crafted_wav(path, channels, bits, data, declared=None, rate=RATE, after=b""):
    """A PCM WAV written byte by byte, so its header can say what the data is not (`after`: bytes
    after the data as the file holds it, beyond what `declared` covers)."""
    import struct

    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", size) + data + after
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_a_header_with_30000_channels_is_one_line(avg2, tmp_path):
    path = _crafted_wav(tmp_path / "many.wav", 30000, 8, b"\x80" * 30000 * 800)
    assert_one_line_error(*run(avg2, path)[::2], "cannot read audio from", "channels")


def test_1024_channels_give_a_result(avg2, tmp_path):
    path = _crafted_wav(tmp_path / "wide.wav", 1024, 16, b"\x01" * 1024 * 2 * 1600)
    assert assert_result(*run(avg2, path))["audio_seconds"] == pytest.approx(0.1)


def _pcm16(seconds):
    return (np.round(speechlike(seconds) * 32767).astype("<i2")).tobytes()


def test_a_header_declaring_no_data_before_audio_names_the_fix(avg2, tmp_path):
    """A recorder writes the data size when it stops: a header left at 0, the audio after it."""
    path = _crafted_wav(tmp_path / "unfinished.wav", 1, 16, _pcm16(2.0), declared=0)
    assert_one_line_error(
        *run(avg2, path)[::2], "holds no audio samples: its header declares no audio, but 64000 bytes follow it",
        "sox --ignore-length",
    )  # fmt: skip


def test_a_header_declaring_less_than_follows_warns(avg2, tmp_path):
    """The declared half second is answered; the 1.5 s after it are named, not dropped silently."""
    path = _crafted_wav(tmp_path / "short-header.wav", 1, 16, _pcm16(2.0), declared=16000)
    code, stdout, stderr = run(avg2, path)
    assert code == 0 and "declares 0.50 s of audio but about 1.50 s more follow it" in stderr, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["audio_seconds"] == 0.5


def test_chunks_after_the_data_are_no_warning(avg2, tmp_path):
    """LIST (or id3) after the audio is common and well-formed: no warning."""
    import struct

    info = b"INFO" + b"ICMT" + struct.pack("<I", 6) + b"hello\0"
    path = _crafted_wav(
        tmp_path / "tagged.wav", 1, 16, _pcm16(1.0), after=b"LIST" + struct.pack("<I", len(info)) + info
    )
    code, stdout, stderr = run(avg2, path)
    assert code == 0 and stderr == "" and json.loads(stdout.strip().splitlines()[-1])["warnings"] == []


def test_a_header_saying_1_hz_is_one_line(avg2, tmp_path):
    """130 KB at 1 Hz were 18 hours of audio to resample and answer."""
    path = _crafted_wav(tmp_path / "one-hertz.wav", 1, 16, _pcm16(4.0), rate=1)
    assert_one_line_error(*run(avg2, path)[::2], "a sampling rate of 1 Hz holds no speech")


def test_a_header_claiming_18_hours_holding_half_a_second(avg2, tmp_path):
    path = _crafted_wav(tmp_path / "claims.wav", 1, 16, b"\x01\x00" * 8000, declared=0x7FFFFFF0)
    code, stdout, stderr = run(avg2, path)
    assert code == 0 and "declares 67108.86 s of audio but the file holds 0.50 s" in stderr
    assert json.loads(stdout.strip().splitlines()[-1])["audio_seconds"] == 0.5


def _run_with_streams(args, stderr=None, close_stderr=False, close_stdout=False, env=None):
    """The CLI with its stderr sent to `stderr` (a path, e.g. /dev/full), or closed (`2>&-`), or
    its stdout closed (`>&-`); returns (exit code, stdout)."""

    def close_streams():
        if close_stderr:
            os.close(2)
        if close_stdout:
            os.close(1)

    with open(stderr or os.devnull, "w") as error_stream:
        result = subprocess.run(
            [sys.executable, "-m", "edgelalm.cli", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=error_stream,
            stdin=subprocess.DEVNULL,
            env=env or _ENV,
            timeout=TIMEOUT_S,
            preexec_fn=close_streams,
        )
    return result.returncode, result.stdout.decode("utf-8", errors="replace")


@pytest.mark.parametrize("stderr", ["full", "closed"])
def test_a_stderr_that_cannot_be_written_stops_no_answer_and_mixes_none_into_stdout(avg2, clip, tmp_path, stderr):
    """stderr on a full disk (/dev/full) or a pipe whose reader left: the first error line ended
    the batch silently (exit 1, later files never answered). Closed (`2>&-`): error lines were
    printed on stdout among the answers."""
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    args = ("run", clip, bad, clip, "--bundle", avg2, "--max-tokens", MAX_TOKENS, "--json")
    code, stdout = _run_with_streams(
        args, stderr="/dev/full" if stderr == "full" else None, close_stderr=stderr == "closed"
    )
    lines = stdout.splitlines()
    assert code == 1 and len(lines) == 3, stdout
    assert [sorted(json.loads(line)) for line in lines][1] == ["error", "file"]
    assert json.loads(lines[0])["text"] == json.loads(lines[2])["text"]


def test_a_stdout_whose_encoding_cannot_hold_a_name_or_an_answer(avg2, clip, tmp_path):
    """PYTHONIOENCODING=latin-1 (Windows' cp1252 when redirected): a Cyrillic name was a
    UnicodeEncodeError traceback that stopped the batch."""
    named = shutil.copy(clip, tmp_path / "закат.wav")
    env = {**_ENV, "PYTHONIOENCODING": "latin-1"}
    code, stdout, stderr = edgelalm("run", clip, named, "--bundle", avg2, "--max-tokens", MAX_TOKENS, env=env)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert stdout.splitlines()[1].startswith(f"{tmp_path}/\\u0437\\u0430"), stdout
    code, stdout, stderr = edgelalm("run", named, "--bundle", avg2, "--max-tokens", MAX_TOKENS, "--json", env=env)
    assert code == 0 and json.loads(stdout)["file"] == str(named), stderr


def test_a_closed_stdout_is_refused_before_a_subtitle_file_is_written(avg2, clip, tmp_path):
    """`>&-` with --out-dir: the first clip's file was written, then the run stopped."""
    out = tmp_path / "subs"
    args = (
        "run",
        clip,
        shutil.copy(clip, tmp_path / "b.wav"),
        "--bundle",
        avg2,
        "--subtitles",
        "srt",
        "--out-dir",
        out,
    )
    error = tmp_path / "stderr.txt"
    code, _ = _run_with_streams(args, stderr=error, close_stdout=True)
    assert (
        code == 1
        and error.read_text() == "edgelalm: error: standard output is closed: there is nowhere to write the result\n"
    )
    assert not out.exists()


def test_an_out_dir_made_for_clips_that_all_failed_is_not_left_behind(avg2, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    out = tmp_path / "new" / "subs"
    code, stdout, stderr = edgelalm(
        "run", bad, bad.with_name("also.wav"), "--bundle", avg2, "--subtitles", "srt", "--out-dir", out
    )
    assert code == 1 and stdout == "" and "Traceback" not in stderr, stderr
    assert not (tmp_path / "new").exists()


def test_one_file_that_fails_under_json_gets_its_json_line(avg2, tmp_path):
    """With several files a failing one had its JSON line; alone, it had only the stderr line."""
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    code, stdout, stderr = run(avg2, bad)
    line = assert_one_line_error(code, stderr, "cannot read audio")
    assert json.loads(stdout) == {"file": str(bad), "error": line.removeprefix("edgelalm: error: ")}


def test_subtitles_of_a_non_ascii_name_in_the_c_locale(avg2, clip, tmp_path):
    """Under LC_ALL=C (ASCII file names to Python) the scratch name of `kïds room.srt` was made of
    the name decoded as UTF-8, which ASCII could not write back: a traceback once the clip was
    answered. Export's staging folder is named the same way."""
    named = shutil.copy(clip, tmp_path / "kïds room.wav")
    env = {**_ENV, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONIOENCODING")
    code, stdout, stderr = edgelalm(
        "run", named, "--bundle", avg2, "--max-tokens", MAX_TOKENS, "--subtitles", "srt", "--out-dir", tmp_path / "out",
        env=env,
    )  # fmt: skip
    assert code == 0 and "Traceback" not in stderr, stderr
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["kïds room.srt"]
