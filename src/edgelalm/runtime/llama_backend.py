"""llama.cpp's CPU backend on this machine: what it was built with, what the CPU has, and which
weight buffer types edgelalm lets it use. Torch-free; read by the decoder, `doctor` and `bench`.

Why: llama.cpp puts quantized weights (q8_0, q4_0, q4_k_m) in "extra" buffer types when it can:
the CPU repack buffer (q4 weights interleaved for AVX2/NEON kernels) and, where llama.cpp was
built with AMX and the CPU has it (Intel Sapphire Rapids and later), the AMX buffer. On such
machines (llama-cpp-python 0.3.36 built there), any `llama_decode` of more than one token on an
AMX-held weight segfaults in `ggml_backend_amx_mul_mat` (llama.cpp issue 20824, closed without a
fix). `llama_model_params.use_extra_bufts = False` avoids it. llama.cpp offers no switch for the
AMX buffer alone, and a tensor override to the repack buffer skips the loader's support check
(llama-model-loader.cpp), so keeping repack without AMX would mean predicting, per llama.cpp
version, which tensors it repacks. "auto" therefore turns the extra buffers off only where the AMX
buffer would be used, and keeps llama.cpp's stock setting everywhere else. On x86 the repack
buffer holds only 4-bit types (q4_0, q4_k_m), so q8_0 loses nothing (measured in the README).

llama_cpp is imported where it is used (the CLI reads the choices from here without loading it),
always through `import_llama_cpp`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from edgelalm import interrupts
from edgelalm.checks import check_choice, is_whole_number
from edgelalm.constants import EXTRA_BUFFER_CHOICES, ExtraBuffers
from edgelalm.errors import EdgelalmError, error_gist
from edgelalm.runtime.onnx_backend import import_onnxruntime

if TYPE_CHECKING:
    import llama_cpp

# The CPU flags (as Linux's /proc/cpuinfo spells them) that llama.cpp's AMX kernels need.
AMX_CPU_FLAGS = frozenset({"amx_tile", "amx_int8"})
_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class ExtraBuffersDecision:
    enabled: bool
    reason: str


def import_llama_cpp() -> ModuleType:
    """llama_cpp, imported after onnxruntime. With llama-cpp-python built for CUDA beside
    onnxruntime-gpu 1.31 (an H200 machine, CUDA 13), importing llama_cpp first and onnxruntime
    second segfaulted the process; the other order worked (runtimes/cuda). Either failing to load
    (a wheel built for another CPU or CUDA, a shared library missing) is one line naming it."""
    import_onnxruntime()
    try:
        import llama_cpp
    except Exception as error:  # llama_cpp raises RuntimeError("Failed to load shared library ...")
        interrupts.raise_if_interrupted()
        raise EdgelalmError(f"llama-cpp-python cannot be loaded: {error_gist(error)}") from None
    check_llama_cpp_api(llama_cpp)
    return llama_cpp


# The oldest llama-cpp-python edgelalm runs on (pyproject.toml's floor; tests/test_llama_backend.py
# holds the two equal): its runtime tests and the example clips pass on it, Python 3.10 and 3.11.
LLAMA_CPP_PYTHON_FLOOR = "0.3.17"
# What edgelalm calls that older releases lack: llama.cpp's memory API (0.3.10), the extra
# buffers switch (0.3.15), the flash-attention type and the adapters' setter (0.3.17).
_NEWEST_API = ("llama_memory_clear", "llama_set_adapters_lora", "LLAMA_FLASH_ATTN_TYPE_DISABLED")


def check_llama_cpp_api(module: ModuleType) -> None:
    """One line where the installed llama-cpp-python predates what edgelalm calls (an environment
    installed without the floor: an AttributeError in the middle of a run before)."""
    absent = [name for name in _NEWEST_API if not hasattr(module, name)]
    if absent or not any(name == "use_extra_bufts" for name, *_ in module.llama_model_params._fields_):
        version = getattr(module, "__version__", "of unknown version")
        raise EdgelalmError(
            f"llama-cpp-python {version} is older than edgelalm needs ({LLAMA_CPP_PYTHON_FLOOR} or newer): "
            f"pip install -U 'llama-cpp-python>={LLAMA_CPP_PYTHON_FLOOR}'"
        )


def llama_system_info() -> str:
    """llama.cpp's own line of backend features ("CPU : SSE3 = 1 | AVX2 = 1 | ... |")."""
    llama_cpp = import_llama_cpp()
    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (or the given text); None where unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def cpu_name(cpuinfo: str | None = None) -> str:
    try:
        cpuinfo = _CPUINFO.read_text() if cpuinfo is None else cpuinfo
    except OSError:
        cpuinfo = ""
    # x86 names the CPU in "model name"; arm64 boards have none, and a Raspberry Pi names the
    # board in "Model" (others, "Hardware"); past those, the architecture.
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware"):
        if fields.get(key):
            return fields[key]
    import platform

    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads: int | None) -> int:
    """`threads`, or the usable cores where it is None. More threads than the machine has logical
    CPUs only slow the work down and cost memory (100000 asked for held 16 GB in thread stacks
    before the first token), so they are refused."""
    if threads is None:
        return usable_cores()
    cpus = os.cpu_count() or 1
    if not is_whole_number(threads) or not 1 <= threads <= cpus:
        raise EdgelalmError(f"threads must be from 1 to this machine's {cpus} logical CPUs, got {threads!r}")
    return threads


def llama_built_with_amx(system_info: str) -> bool:
    return "AMX_INT8 = 1" in system_info


def decide_extra_buffers(
    choice: ExtraBuffers, system_info: str | None = None, flags: frozenset[str] | None | Literal["read"] = "read"
) -> ExtraBuffersDecision:
    """Whether llama.cpp may place weights in its extra buffer types; `system_info` and `flags`
    default to this machine's (tests pass fakes to cover every CPU on any CPU)."""
    check_choice("llama_extra_buffers", choice, EXTRA_BUFFER_CHOICES)
    if choice == "on":
        return ExtraBuffersDecision(True, "on as asked (llama.cpp's stock setting)")
    if choice == "off":
        return ExtraBuffersDecision(False, "off as asked")
    system_info = llama_system_info() if system_info is None else system_info
    flags = cpu_flags() if flags == "read" else flags
    if not llama_built_with_amx(system_info):
        return ExtraBuffersDecision(True, "on: llama.cpp was built without AMX (stock setting)")
    if flags is not None and not AMX_CPU_FLAGS <= flags:
        return ExtraBuffersDecision(True, "on: llama.cpp has AMX kernels but this CPU has no AMX (stock setting)")
    return ExtraBuffersDecision(
        False,
        "off: llama.cpp's AMX buffer crashes multi-token decodes (llama.cpp issue 20824); --llama-extra-buffers "
        "on restores it",
    )


def model_params(extra_buffers: bool, n_gpu_layers: int = 0) -> llama_cpp.llama_model_params:
    """llama.cpp's default model parameters with edgelalm's buffer choice and GPU layers."""
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_extra_bufts = extra_buffers
    return params
