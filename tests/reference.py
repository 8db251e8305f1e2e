"""Independent numpy implementations of the paper's compressors (section IV), written from the
definitions with plain loops, to check edgelalm's PyTorch/ONNX versions against.

Conventions edgelalm documents: avg/sample keep the ragged tail (ceil(L/K) tokens; avg
averages the partial group, sample keeps its first frame); in unseg, d_t with a missing
neighbour (the first and the last) is never a peak.
"""

import math

import numpy as np


def average_pool(frames: np.ndarray, factor: int) -> np.ndarray:
    groups = [frames[start : start + factor] for start in range(0, len(frames), factor)]
    return np.stack([group.mean(axis=0) for group in groups])


def uniform_sample(frames: np.ndarray, factor: int) -> np.ndarray:
    return np.stack([frames[index] for index in range(len(frames)) if index % factor == 0])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b) / max(float(np.linalg.norm(a)) * float(np.linalg.norm(b)), 1e-8)


def segment_boundaries(frames: np.ndarray) -> list[int]:
    """Indices t (0-based) where d_t is a peak: a boundary between frames t and t+1."""
    d = [1.0 - cosine(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]
    return [t for t in range(1, len(d) - 1) if d[t] > d[t - 1] and d[t] > d[t + 1]]


def unsupervised_segmentation(frames: np.ndarray) -> np.ndarray:
    starts = [0] + [t + 1 for t in segment_boundaries(frames)]
    ends = starts[1:] + [len(frames)]
    return np.stack([frames[start:end].mean(axis=0) for start, end in zip(starts, ends, strict=True)])


def compress(name: str, factor: int, frames: np.ndarray) -> np.ndarray:
    if name == "none":
        return frames
    if name == "avg":
        return average_pool(frames, factor)
    if name == "sample":
        return uniform_sample(frames, factor)
    if name == "unseg":
        return unsupervised_segmentation(frames)
    if name == "mean":
        return frames.mean(axis=0, keepdims=True)
    if name == "max":
        return frames.max(axis=0, keepdims=True)
    raise ValueError(name)


def expected_tokens(name: str, factor: int, num_frames: int) -> int | None:
    if name in ("avg", "sample"):
        return math.ceil(num_frames / factor)
    if name in ("mean", "max"):
        return 1
    if name == "none":
        return num_frames
    return None
