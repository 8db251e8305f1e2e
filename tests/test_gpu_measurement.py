"""The GPU side of the benchmark, checked without a GPU: the GPU memory sampler against a stand-in
NVML, the report's GPU column, and onnxruntime's silent fall-back to the CPU turned into a refusal."""

import sys
import threading
import types

import numpy as np
import pytest

from edgelalm.bench.report import summary_markdown
from edgelalm.errors import EdgelalmError
from edgelalm.runtime.memory import GpuMemoryPeak

MB = 2**20


def fake_nvml(readings: list[int], reached: threading.Event) -> types.ModuleType:
    """An NVML whose device-wide 'used' memory walks through `readings`, then stays on the last;
    `reached` is set once the sampler has read them all."""
    module = types.ModuleType("pynvml")
    state = {"index": 0, "open": 0}

    def used() -> types.SimpleNamespace:
        value = readings[min(state["index"], len(readings) - 1)]
        state["index"] += 1
        if state["index"] >= len(readings):
            reached.set()
        return types.SimpleNamespace(used=value, total=readings[-1] * 10)

    module.nvmlInit = lambda: state.__setitem__("open", state["open"] + 1)
    module.nvmlShutdown = lambda: state.__setitem__("open", state["open"] - 1)
    module.nvmlDeviceGetHandleByIndex = lambda index: ("gpu", index)
    module.nvmlDeviceGetMemoryInfo = lambda handle: used()
    module.state = state
    return module


def test_the_peak_is_the_highest_reading_above_the_first(monkeypatch):
    reached = threading.Event()
    # 500 MB in use before (another process's), a 2 GB peak while running, 800 MB at the end.
    nvml = fake_nvml([500 * MB, 900 * MB, 2500 * MB, 1200 * MB, 800 * MB], reached)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with GpuMemoryPeak(interval_s=0.001) as sampler:
        assert reached.wait(5)
    assert sampler.peak_mb == pytest.approx(2000)
    assert nvml.state["open"] == 0  # NVML shut down again


def test_without_nvml_nothing_is_measured_and_nothing_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with GpuMemoryPeak() as sampler:
        pass
    assert sampler.peak_mb is None


def test_the_summary_gains_a_gpu_column_only_on_a_gpu_target():
    row = {
        "runtime": "edgelalm",
        "compressor": "none",
        "seconds": 5.0,
        "audio_tokens": 125,
        "timings_ms": {
            stage: {"median": 10.0, "min": 9.0, "max": 11.0} for stage in ("encoder", "prefill", "time_to_first_token")
        },
        "decode_tokens_per_second": {"median": 100.0},
        "kv_cache_mb": 1.0,
        "peak_rss_mb": 900.0,
    }
    cpu = summary_markdown({"rows": [row]}).splitlines()
    assert "GPU" not in cpu[0] and cpu[2].endswith("| 900 |")
    gpu = summary_markdown({"rows": [dict(row, peak_gpu_mb=1234.4), {**row, "runtime": "pytorch"}]}).splitlines()
    assert gpu[0].endswith("| peak GPU MB |") and gpu[1].count("---") == 11
    assert gpu[2].endswith("| 900 | 1234 |") and gpu[3].endswith("| 900 | - |")


def test_a_cuda_session_that_falls_back_to_the_cpu_is_refused(tmp_path):
    """onnxruntime without a working CUDA provider runs the graph on the CPU with only a log line;
    asked for the GPU, the runtime says so in one line instead."""
    onnx = pytest.importorskip("onnx")
    import onnxruntime

    from edgelalm.runtime.onnx_backend import onnx_session

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=10), path)
    assert onnx_session(path, ["CPUExecutionProvider"], 1).run(None, {"x": np.ones((1, 4), np.float32)})
    with pytest.raises(EdgelalmError, match=r"could not start CUDAExecutionProvider for identity\.onnx"):
        onnx_session(path, ["CUDAExecutionProvider", "CPUExecutionProvider"], 1)
