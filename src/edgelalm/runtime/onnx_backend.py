"""onnxruntime for every graph a bundle runs (encoder, compressor, CTC head): loading it, a
session with the runtime's settings, a run that a signal can stop, and the heap handed back
after it. Torch-free.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from edgelalm import interrupts
from edgelalm.errors import EdgelalmError, error_gist
from edgelalm.files import has_utf8_name, not_utf8_reason

if TYPE_CHECKING:
    import onnxruntime


def import_onnxruntime() -> ModuleType:
    """onnxruntime, or one line where it cannot be loaded (a wheel for another CPU or CUDA)."""
    try:
        import onnxruntime
    except Exception as error:  # ImportError, or an OSError from a missing shared library
        interrupts.raise_if_interrupted()  # onnxruntime imports numpy natively: "import numpy failed"
        raise EdgelalmError(f"onnxruntime cannot be loaded: {error_gist(error)}") from None
    return onnxruntime


def onnx_session(
    path: Path,
    providers: list[str],
    threads: int | None,
    cpu_arena: bool = False,
    config_entries: dict[str, str] | None = None,
    inputs: tuple[str, ...] | None = None,
    output: str | None = None,
) -> onnxruntime.InferenceSession:
    """`config_entries`: onnxruntime session config keys (benchmarks/memory_components.py tries them).
    `inputs`, `output`: the graph's I/O names, as the export writes them (checked at load, so
    that a graph of another kind is refused in one line, not at its first run)."""
    if not has_utf8_name(path):
        raise EdgelalmError(f"onnxruntime cannot open {not_utf8_reason(path)}")
    onnxruntime = import_onnxruntime()
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
        # onnxruntime's Python side prints its provider fallback's banner ("EP Error", where a
        # thread cannot be started) on stdout, which carries answers and --json lines; its reason
        # is the error raised (or the provider missing from the session), said below in one line.
        with contextlib.redirect_stdout(io.StringIO()):
            session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
        # onnxruntime refuses, among others, external weights whose path leaves the bundle folder.
        raise EdgelalmError(f"onnxruntime cannot load {path}: {error_gist(error, last_line=False)}") from None
    # onnxruntime falls back to the CPU, with only a log line, where its CUDA provider cannot start
    # (a missing libcublas or cuDNN): asked for the GPU, say so instead of running slowly.
    if providers[0] not in session.get_providers():
        raise EdgelalmError(
            f"onnxruntime could not start {providers[0]} for {path.name} (its CUDA libraries: see runtimes/cuda)"
        )
    found_inputs = tuple(sorted(node.name for node in session.get_inputs()))
    found_outputs = [node.name for node in session.get_outputs()]
    if inputs is not None and found_inputs != tuple(sorted(inputs)):
        raise EdgelalmError(f"{path} reads {', '.join(found_inputs)}; this stage feeds {', '.join(sorted(inputs))}")
    if output is not None and found_outputs[:1] != [output]:
        raise EdgelalmError(f"{path} gives {', '.join(found_outputs)}; this stage reads {output}")
    return session


def run_graph(
    session: onnxruntime.InferenceSession, feeds: dict[str, np.ndarray], path: Path, shrink_arena: bool = False
) -> np.ndarray:
    """The graph's first output for `feeds`: a finite [rows, width] array, or one line saying why
    not. A signal stops the run part-way (interrupts.stoppable), where Python's own handler would
    wait for it to end. `shrink_arena`: hand the run's activations back to onnxruntime's arena."""
    run_options = import_onnxruntime().RunOptions()
    run_options.log_severity_level = 4  # a failed run is raised, and said once, below
    if shrink_arena:
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def stop() -> None:
        run_options.terminate = True

    try:
        with interrupts.stoppable(stop):
            result = session.run(None, feeds, run_options)[0]
    except Exception as error:  # onnxruntime's Fail, RuntimeException (bad_alloc), ValueError, ...
        raise EdgelalmError(f"onnxruntime failed running {path}: {error_gist(error, last_line=False)}") from None
    if not isinstance(result, np.ndarray) or result.ndim != 2:
        raise EdgelalmError(f"{path} gave an output of shape {np.shape(result)}; expected [rows, width]")
    if result.dtype.kind != "f":
        raise EdgelalmError(f"{path} gave an output of {result.dtype} values; expected floating-point numbers")
    if not np.isfinite(result).all():
        raise EdgelalmError(f"{path} gave values that are not finite (NaN or infinity) for this audio")
    return result


@functools.cache
def _heap_release() -> Callable[[], None]:
    """glibc's malloc_trim(0); nothing where the C library has none (musl, macOS). Looked up at
    the first release, not when llama_backend (doctor, the thread check) imports this module."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def release_freed_heap() -> None:
    """Hand freed heap pages back to the system. With the arena off, a window's activations are
    freed after the run, but glibc keeps blocks under its (self-raising) mmap threshold in the
    heap: the decoder's buffers then come on top of the encoder's peak (30 s on `small`: 1261 MB
    against 1214 MB with this, benchmarks/memory_components.py)."""
    _heap_release()()
