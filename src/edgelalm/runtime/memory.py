"""The process's peak memory, for the runtime's results and the benchmarks' workers. Imports
nothing heavy: the PyTorch reference worker measures itself with it, and must not load
onnxruntime or llama.cpp to do so (they would inflate the peak it reports)."""

from __future__ import annotations

import resource
from pathlib import Path


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
