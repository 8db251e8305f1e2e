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
    # onnxruntime's CPU arena, kept for the life of the session, holds a long window's activations
    # grown in rounded-up chunks (about 300 MB more at 30 s: benchmarks/cpu_arena.py); the encoder
    # uses it released after each run (AudioEncoder).
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


# The encoder's activations come from onnxruntime's arena, handed back at the end of each run. The
# export's graph has no intermediate shapes, so onnxruntime frees each activation after its last
# reader instead of holding a planned buffer per symbolic size for the whole run
# (edgelalm.export.encoder). Freed and allocated again hundreds of times a window, they fragment
# glibc's heap (a 29 s window of `small` peaked 100-280 MB above the session); the arena reuses
# them in place: about 43 MB (int8 encoder) against 113 MB before (README, "Encoder speed and memory").
_ARENA_RELEASED_AFTER_RUN = onnxruntime.RunOptions()
_ARENA_RELEASED_AFTER_RUN.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


class AudioEncoder:
    def __init__(self, path: Path, providers: list[str], threads: int | None = None, cpu_arena: bool = False) -> None:
        """`cpu_arena`: keep the arena's memory for the session's life, not only for each run."""
        self.session = onnx_session(path, providers, threads, cpu_arena=True)
        self.run_options = None if cpu_arena else _ARENA_RELEASED_AFTER_RUN

    def __call__(self, features: WindowFeatures) -> np.ndarray:
        """Encoder frames [L, D] at 25 per second."""
        inputs = {ENCODER_INPUT: features.mel, ENCODER_RIGHT_CONTEXT_INPUT: features.right_context}
        frames = self.session.run(None, inputs, self.run_options)[0]
        release_freed_heap()
        return frames
