"""`Runtime.run` on samples in memory: integer PCM read as libsndfile reads the same PCM from a file,
and arrays that cannot be audio refused in one line (the Python API's side of test_run_inputs)."""

import math

import numpy as np
import pytest
import soundfile

from edgelalm.errors import EdgelalmError
from edgelalm.runtime.audio import prepare_samples, samples_in_memory

RATE = 16_000


@pytest.mark.parametrize("subtype,dtype", [("PCM_16", np.int16), ("PCM_32", np.int32), ("PCM_U8", np.uint8)])
def test_integer_pcm_is_scaled_as_libsndfile_reads_it_from_a_file(tmp_path, subtype, dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    pcm = rng.integers(info.min, info.max, size=(RATE // 4, 2), endpoint=True).astype(dtype)
    pcm[:4] = [[info.min, info.max], [info.max, info.min], [0, 0], [info.max // 2, info.min // 2]]
    # soundfile writes uint8 PCM (WAV's 8-bit) from its signed reading, then libsndfile reads it back.
    path = tmp_path / "pcm.wav"
    written = pcm.astype(np.int16) - 128 << 8 if dtype is np.uint8 else pcm
    soundfile.write(path, written, RATE, subtype=subtype)
    as_read, _ = soundfile.read(path, dtype="float32", always_2d=True)
    ours = prepare_samples(samples_in_memory(pcm), RATE, RATE)
    np.testing.assert_allclose(ours, as_read.mean(axis=1), rtol=0, atol=1e-7)
    assert ours.dtype == np.float32 and np.abs(ours).max() <= 1.0


def test_a_list_of_numbers_is_samples():
    samples = np.sin(np.arange(RATE) / 7.0).astype(np.float32)
    np.testing.assert_array_equal(prepare_samples(samples_in_memory(samples.tolist()), RATE, RATE), samples)


@pytest.mark.parametrize(
    "samples,message",
    [
        (np.zeros(RATE, np.complex64), "samples must be float or integer PCM, not complex64"),
        (np.zeros(RATE, bool), "not bool"),
        (np.array(["a", "b"]), "not <U1"),
        (["a", "b"], "samples must be numbers"),
        (np.zeros((2, RATE), np.float32), "2 frames of 16000 channels; samples go [frames, channels]"),
        (np.zeros((4, 4, 4), np.float32), "expected samples shaped [frames] or [frames, channels]"),
        (np.zeros(0, np.float32), "holds no audio samples"),
        (np.full(RATE, np.inf, np.float32), "NaN or infinite"),
        # numpy's default integer: int16 values in it read as 64-bit PCM were silence, answered "".
        (np.full(RATE, 8000, np.int64), "samples of int64 are no PCM width; integer PCM goes in int16"),
        (np.full(RATE, 8000, np.uint64), "samples of uint64 are no PCM width"),
    ],
)
def test_arrays_that_are_not_audio_are_one_line(samples, message):
    with pytest.raises(EdgelalmError, match=message.replace("[", r"\[").replace("]", r"\]")) as refused:
        prepare_samples(samples_in_memory(samples), RATE, RATE)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("rate", [0, -RATE, math.nan, math.inf, True, "16000"])
def test_a_sampling_rate_that_is_not_one_is_refused(rate):
    with pytest.raises(EdgelalmError, match="sampling rate must be a positive number"):
        prepare_samples(np.zeros(RATE, np.float32), rate, RATE)


@pytest.mark.parametrize("rate", [1e-300, 1, 999.5])
def test_a_rate_too_low_for_speech_is_refused_before_resampling(rate):
    """Resampling multiplies the samples by 16000 / rate: 1e-300 made soxr throw bad_array_new_length,
    1 Hz made 80 KB of samples into gigabytes."""
    with pytest.raises(EdgelalmError, match=f"a sampling rate of {rate:g} Hz holds no speech"):
        prepare_samples(np.zeros(20_000, np.float32), rate, RATE)
    assert len(prepare_samples(np.zeros(1000, np.float32), 1000, RATE)) == RATE


def test_numpy_rates_are_rates():
    samples = np.zeros(2 * RATE, np.float32)
    assert len(prepare_samples(samples, np.int64(2 * RATE), RATE)) == RATE
    assert len(prepare_samples(samples, np.float32(2 * RATE), RATE)) == RATE


def test_the_runtime_answers_int16_samples_as_it_answers_their_file(tiny_bundles, tmp_path):
    pytest.importorskip("torch")  # the tiny_bundles fixture exports with torch
    from hf_reference import speechlike

    from edgelalm.runtime.pipeline import Runtime

    pcm = np.round(speechlike(2.0, seed=3) * 32767).astype(np.int16)
    path = tmp_path / "clip.wav"
    soundfile.write(path, pcm, RATE, subtype="PCM_16")
    with Runtime(tiny_bundles("avg", 2, "f32")) as runtime:
        from_file = runtime.run(path, max_tokens=6)
        from_samples = runtime.run(pcm, max_tokens=6)
        from_list = runtime.run((pcm / 32768).tolist(), max_tokens=6)  # a list is float samples
        with pytest.raises(EdgelalmError, match="sampling rate must be a positive number"):
            runtime.run(pcm, sampling_rate=0)
    assert from_samples.audio_tokens == from_file.audio_tokens == from_list.audio_tokens
    assert from_samples.text == from_file.text == from_list.text


def test_a_file_name_holding_a_nul_is_one_line():
    """A finetune TSV's file column can hold a NUL byte: os.stat raised ValueError, a traceback
    after the model had loaded."""
    from pathlib import Path

    from edgelalm.errors import EdgelalmError
    from edgelalm.runtime.audio import open_audio, read_audio

    for reader in (open_audio, lambda path: read_audio(path, 16000)):
        with pytest.raises(EdgelalmError, match="a file name cannot hold a NUL character"):
            reader(Path("sun\0set.wav"))
