"""The process's peak memory, for the runtime's results and the benchmarks' workers. Imports
nothing heavy: the PyTorch reference worker measures itself with it, and must not load
onnxruntime or llama.cpp to do so (they would inflate the peak it reports)."""

from __future__ import annotations

import contextlib
import resource
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process's own address
    space; ru_maxrss would carry over a parent's peak across fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def nvml_device(index: int = 0) -> Iterator[tuple[Any, Any] | None]:
    """NVML (the nvidia-ml-py package, imported as pynvml) and its handle of GPU `index`, shut down
    after the block; None where there is no NVML, no driver or no such GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        yield None
        return
    try:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:
            yield None
            return
        yield pynvml, handle
    finally:
        pynvml.nvmlShutdown()


def gpu_name(index: int = 0) -> str | None:
    """NVML's name for GPU `index`, or None where there is none to ask."""
    with nvml_device(index) as device:
        if device is None:
            return None
        nvml, handle = device
        name = nvml.nvmlDeviceGetName(handle)
    return name.decode() if isinstance(name, bytes) else str(name)


class GpuMemoryPeak:
    """The peak GPU memory in use on `device_index` while the block runs, above what was in use
    when it began, sampled by NVML in a thread every `interval_s`. Device-wide: on a GPU that runs
    nothing else (a benchmark's machine) it is this process's CUDA context, weights, caches and
    activations, which no allocator's own count covers for llama.cpp, onnxruntime and torch alike.
    `peak_mb` is None where NVML is missing."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.005) -> None:
        self.device_index = device_index
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml_open = contextlib.ExitStack()

    def __enter__(self) -> GpuMemoryPeak:
        device = self._nvml_open.enter_context(nvml_device(self.device_index))
        if device is None:
            return self
        self._nvml, self._handle = device
        self._baseline = self._used()
        self._highest = self._baseline
        self._thread = threading.Thread(target=self._sample, name="gpu-memory-peak", daemon=True)
        self._thread.start()
        return self

    def _used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._highest = max(self._highest, self._used())

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._highest = max(self._highest, self._used())
            self.peak_mb = (self._highest - self._baseline) / 2**20
        self._nvml_open.close()
