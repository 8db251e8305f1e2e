"""The encoder stage at run time: encoder.onnx on one window's own mel frames. Torch-free.

Reads what `edgelalm.export.encoder` writes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from edgelalm.constants import ENCODER_INPUT, ENCODER_RIGHT_CONTEXT_INPUT
from edgelalm.errors import EdgelalmError
from edgelalm.runtime.features import WindowFeatures


def onnx_session(
    path: Path,
    providers: list[str],
    threads: int | None,
    cpu_arena: bool = False,
    config_entries: dict[str, str] | None = None,
) -> onnxruntime.InferenceSession:
    """`config_entries`: onnxruntime session config keys (benchmarks/memory_components.py tries them)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    # onnxruntime's CPU arena keeps a long window's activations, grown in rounded-up chunks, for the
    # life of the session; without it a 30 s clip peaks about 300 MB lower at the same encoder
    # time (benchmarks/cpu_arena.py).
    options.enable_cpu_mem_arena = cpu_arena
    if threads:
        options.intra_op_num_threads = threads
    for key, value in (config_entries or {}).items():
        options.add_session_config_entry(key, value)
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
        # onnxruntime refuses, among others, external weights whose path leaves the bundle folder.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EdgelalmError(f"onnxruntime cannot load {path}: {reason}") from None


def _heap_release() -> Callable[[], None]:
    """glibc's malloc_trim(0); nothing where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


# Hands freed heap pages back to the system. With the arena off, a window's activations are
# freed after the run, but glibc keeps blocks under its (self-raising) mmap threshold in the heap:
# the decoder's buffers then come on top of the encoder's peak (30 s on `small`: 1261 MB against
# 1214 MB with this, benchmarks/memory_components.py).
release_freed_heap = _heap_release()


class AudioEncoder:
    def __init__(self, path: Path, providers: list[str], threads: int | None = None, cpu_arena: bool = False) -> None:
        self.session = onnx_session(path, providers, threads, cpu_arena)

    def __call__(self, features: WindowFeatures) -> np.ndarray:
        """Encoder frames [L, D] at 25 per second."""
        inputs = {ENCODER_INPUT: features.mel, ENCODER_RIGHT_CONTEXT_INPUT: features.right_context}
        frames = self.session.run(None, inputs)[0]
        release_freed_heap()
        return frames
