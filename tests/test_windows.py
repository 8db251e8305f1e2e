"""Cutting long audio into encoder windows (edgelalm.runtime.features): fixed 30 s windows for a
joined prompt, and windows ended at a pause for `--windows each`, where each window is answered
on its own and a word cut in two would be lost from both answers. Numpy only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgelalm.runtime.features import FeatureSettings, speech_span, split_windows, stream_windows

RATE = 16000
SETTINGS = FeatureSettings(RATE, 400, 160, 10 * RATE, np.zeros((201, 80), np.float32))


def speech_with_gaps(seconds: float, gaps: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    """Loud noise (no quiet moment of its own) with true silence over each (start, end) in seconds."""
    samples = np.random.default_rng(seed).uniform(0.3, 0.6, round(seconds * RATE)).astype(np.float32)
    samples *= np.where(np.arange(len(samples)) % 2, 1, -1).astype(np.float32)
    for start, end in gaps:
        samples[round(start * RATE) : round(end * RATE)] = 0
    return samples


def chunked(samples: np.ndarray, seed: int) -> list[np.ndarray]:
    """`samples` as a stream of chunks of random sizes, as a file is read."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(samples)), size=40, replace=False))
    return np.split(samples, cuts)


def test_each_cut_falls_in_the_pause_before_the_window_ends():
    gaps = [(7.0, 7.25), (16.1, 16.4)]  # in the last 5 s of the first window and of the second
    samples = speech_with_gaps(23.0, gaps)
    windows = split_windows(samples, SETTINGS, cut_at_pauses=True)
    ends = np.cumsum([len(window) for window in windows])
    assert len(windows) == 3
    for end, (start, stop) in zip(ends[:2], gaps, strict=True):
        assert start * RATE < end < stop * RATE
    np.testing.assert_array_equal(np.concatenate(windows), samples)


def test_without_a_pause_a_window_is_cut_no_earlier_than_5_s_before_its_end():
    samples = speech_with_gaps(25.0, [])
    windows = split_windows(samples, SETTINGS, cut_at_pauses=True)
    assert all(5 * RATE <= len(window) <= 10 * RATE for window in windows[:-1])
    np.testing.assert_array_equal(np.concatenate(windows), samples)


@pytest.mark.parametrize("seconds", [9.0, 10.0])
def test_a_clip_within_one_window_is_never_cut(seconds):
    samples = speech_with_gaps(seconds, [(6.0, 6.5)])
    (window,) = split_windows(samples, SETTINGS, cut_at_pauses=True)
    assert len(window) == len(samples)
    assert len(list(stream_windows(chunked(samples, 1), SETTINGS, cut_at_pauses=True))) == 1


@pytest.mark.parametrize("cut_at_pauses", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_stream_is_cut_where_the_whole_clip_is(cut_at_pauses, seed):
    samples = speech_with_gaps(37.3, [(8.0, 8.2), (12.5, 12.6), (26.0, 26.3)], seed)
    whole = split_windows(samples, SETTINGS, cut_at_pauses)
    streamed = list(stream_windows(chunked(samples, seed), SETTINGS, cut_at_pauses))
    assert [len(window) for window in streamed] == [len(window) for window in whole]
    for got, expected in zip(streamed, whole, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_fixed_windows_are_exactly_the_window_length():
    samples = speech_with_gaps(25.0, [(7.0, 7.5)])
    assert [len(window) for window in split_windows(samples, SETTINGS)] == [10 * RATE, 10 * RATE, 5 * RATE]


def test_a_shorter_window_is_cut_at_a_pause_in_its_second_half():
    """`--window-seconds 4`: windows of 2-4 s, each ended at the pause within its second half."""
    shorter = dataclasses.replace(SETTINGS, window_samples=4 * RATE)
    gaps = [(3.0, 3.2), (5.5, 5.7)]
    samples = speech_with_gaps(9.0, gaps)
    windows = split_windows(samples, shorter, cut_at_pauses=True)
    ends = np.cumsum([len(window) for window in windows])
    for end, (start, stop) in zip(ends[:2], gaps, strict=True):
        assert start * RATE < end < stop * RATE
    assert all(2 * RATE <= len(window) <= 4 * RATE for window in windows[:-1])


def test_speech_span_is_where_the_sound_stands_out_of_its_silence_or_noise():
    """Where a subtitle cue shows: the first to the last 20 ms louder than the window's quiet,
    padded by 0.2 s; the whole window where its quiet is itself loud; None where nothing stands out
    of a low quiet (the cue is then the whole window)."""
    rng = np.random.default_rng(0)
    floor = 1e-3 * rng.standard_normal(8 * RATE).astype(np.float32)  # -60 dBFS of noise
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(2 * RATE) / RATE).astype(np.float32)
    window = floor.copy()
    window[3 * RATE : 5 * RATE] += tone
    start, end = speech_span(window, SETTINGS)
    assert (start, end) == (round(2.8 * RATE), round(5.2 * RATE))
    assert speech_span(floor, SETTINGS) is None  # steady noise alone
    assert speech_span(np.zeros(RATE, np.float32), SETTINGS) is None  # digital silence
    assert speech_span(tone, SETTINGS) == (0, len(tone))  # sound throughout (speech over music): all of it
    assert speech_span(tone + 1e-3 * rng.standard_normal(len(tone)).astype(np.float32), SETTINGS) == (0, len(tone))
    speech_first = np.concatenate([tone[: RATE // 2], floor[: 2 * RATE]])
    assert speech_span(speech_first, SETTINGS) == (0, round(0.7 * RATE))  # the padding clipped at the start
