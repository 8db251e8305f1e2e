"""A speech-like clip made from numbers: what the decode canary and the benchmarks feed a model
whose answer does not matter (random weights, or a check that llama.cpp decodes at all). Torch-free."""

from __future__ import annotations

import numpy as np

from edgelalm.constants import SAMPLING_RATE

_CLIP_BLOCK = 2**18  # samples (16 s): a few MB of float64 at a time


def synthetic_clip(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like 16 kHz audio (harmonics with a gliding pitch under a syllable-rate envelope,
    plus noise): random-weights models give the same cost for any audio, and unseg sees a
    realistic amount of change between frames. Made a block at a time: float64 arrays of the
    whole clip took 0.5 GB at 600 s, counted in the peak RSS of the runtime measured beside it."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLING_RATE))
    clip = np.empty(n, np.float32)
    phase_sum = 0.0  # the running sum of the pitch, carried from block to block
    for start in range(0, n, _CLIP_BLOCK):
        times = np.arange(start, min(start + _CLIP_BLOCK, n)) / SAMPLING_RATE
        pitch = 140 + 40 * np.sin(2 * np.pi * 0.3 * times)
        sums = phase_sum + np.cumsum(pitch)
        phase_sum = float(sums[-1])
        phase = 2 * np.pi * sums / SAMPLING_RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * times) ** 2
        clip[start : start + len(times)] = 0.2 * envelope * voiced + 0.01 * rng.standard_normal(len(times))
    return clip
