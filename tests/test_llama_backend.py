"""llama.cpp's extra buffer types on every CPU: the choice, faked for machines this one is not,
and llama.cpp's own load log showing that the choice is what it did.

The machines are described by files in tests/data/cpus (an AMD EPYC without AMX, an Intel Xeon
with AMX), so the AMX branch runs on an EPYC and the EPYC branch on a Xeon. The multi-token
decodes that crashed on the AMX machine run here for every quant type, in child processes.
"""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the GGUFs are written from the tiny checkpoint
llama_cpp = pytest.importorskip("llama_cpp")

from edgelalm.errors import EdgelalmError  # noqa: E402
from edgelalm.export.checkpoint import open_checkpoint  # noqa: E402
from edgelalm.export.decoder import QUANT_TYPES, write_decoder  # noqa: E402
from edgelalm.isolation import ChildResult  # noqa: E402
from edgelalm.runtime import canary, llama_backend, onnx_backend  # noqa: E402
from edgelalm.runtime.decoder import LlamaDecoder  # noqa: E402
from edgelalm.runtime.llama_backend import cpu_flags, decide_extra_buffers  # noqa: E402

CPUS = Path(__file__).parent / "data" / "cpus"
MACHINES = ("amd-epyc", "intel-xeon-amx")
# What llama.cpp calls the buffers that are not extra: the mapped file and plain host memory.
PLAIN_BUFFERS = {"CPU", "CPU_Mapped"}


def machine(name):
    return (CPUS / f"{name}.system_info").read_text().strip(), cpu_flags((CPUS / f"{name}.cpuinfo").read_text())


@pytest.fixture
def fake_machine(monkeypatch):
    """Make this process see `name`'s CPU flags and llama.cpp build."""

    def fake(name):
        system_info, flags = machine(name)
        monkeypatch.setattr(llama_backend, "llama_system_info", lambda: system_info)
        monkeypatch.setattr(llama_backend, "cpu_flags", lambda cpuinfo=None: flags)

    return fake


@pytest.fixture(scope="module")
def ggufs(tiny_checkpoint, tmp_path_factory):
    checkpoint = open_checkpoint(tiny_checkpoint)
    folder = tmp_path_factory.mktemp("ggufs")
    paths = {}
    for quant in QUANT_TYPES:
        paths[quant] = folder / f"decoder-{quant}.gguf"
        write_decoder(checkpoint, paths[quant], quant, None)
    return paths


# -- the choice ----------------------------------------------------------------------------


def test_cpu_flags_are_read_from_cpuinfo():
    epyc, xeon = (cpu_flags((CPUS / f"{name}.cpuinfo").read_text()) for name in MACHINES)
    assert {"avx2", "avx512f"} <= epyc and not {"amx_tile", "amx_int8"} & epyc
    assert {"avx2", "avx512f", "amx_tile", "amx_int8"} <= xeon
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n") == {"fp", "asimd", "evtstrm", "aes"}
    assert cpu_flags("no flags here\n") is None


def test_the_cpu_is_named_on_x86_and_on_arm_boards():
    from edgelalm.runtime.llama_backend import cpu_name

    assert cpu_name((CPUS / "intel-xeon-amx.cpuinfo").read_text()).startswith("Intel(R) Xeon(R)")
    # An arm64 board's /proc/cpuinfo has no "model name": a Raspberry Pi names the board at the end.
    pi = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd crc32 cpuid\nCPU part\t: 0xd08\n\n"
    pi += "Revision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    assert cpu_name(pi) == "Raspberry Pi 4 Model B Rev 1.4"
    assert cpu_name("processor\t: 0\nHardware\t: Jetson-AGX\n") == "Jetson-AGX"
    assert cpu_name("processor\t: 0\nFeatures\t: fp asimd\n")  # the architecture, never empty


def test_auto_keeps_extra_buffers_without_amx():
    decision = decide_extra_buffers("auto", *machine("amd-epyc"))
    assert decision.enabled and "without AMX" in decision.reason


def test_auto_turns_extra_buffers_off_where_the_amx_buffer_would_be_used():
    decision = decide_extra_buffers("auto", *machine("intel-xeon-amx"))
    assert not decision.enabled
    assert "20824" in decision.reason and "--llama-extra-buffers on" in decision.reason


def test_auto_keeps_extra_buffers_for_an_amx_build_on_a_cpu_without_amx():
    amx_build, _ = machine("intel-xeon-amx")
    _, epyc_flags = machine("amd-epyc")
    assert decide_extra_buffers("auto", amx_build, epyc_flags).enabled


def test_auto_is_safe_where_the_cpu_flags_cannot_be_read():
    amx_build, _ = machine("intel-xeon-amx")
    assert not decide_extra_buffers("auto", amx_build, None).enabled


@pytest.mark.parametrize("name", MACHINES)
def test_on_and_off_are_obeyed_on_every_machine(name):
    assert decide_extra_buffers("on", *machine(name)).enabled
    assert not decide_extra_buffers("off", *machine(name)).enabled


def test_an_unknown_choice_is_refused():
    with pytest.raises(EdgelalmError, match="llama_extra_buffers must be one of auto, on, off"):
        decide_extra_buffers("maybe")  # type: ignore[arg-type]


# -- what llama.cpp did with it (its own load log) -------------------------------------------


def test_on_the_amx_machine_llama_cpp_uses_no_extra_buffer(ggufs, fake_machine):
    fake_machine("intel-xeon-amx")
    with LlamaDecoder(ggufs["q4_0"], n_ctx=64) as decoder:
        assert not decoder.extra_buffers.enabled
        assert decoder.weight_buffers and set(decoder.weight_buffers) <= PLAIN_BUFFERS


def test_without_amx_llama_cpp_keeps_its_extra_buffers(ggufs, fake_machine):
    """q4_0 at width 64 is what llama.cpp repacks (CPU_REPACK) on any AVX2 or NEON machine."""
    fake_machine("amd-epyc")
    real_info = llama_cpp.llama_print_system_info().decode()
    with LlamaDecoder(ggufs["q4_0"], n_ctx=64) as decoder:
        assert decoder.extra_buffers.enabled
        if "REPACK = 1" in real_info or "AMX_INT8 = 1" in real_info:
            assert set(decoder.weight_buffers) - PLAIN_BUFFERS, decoder.weight_buffers


def test_both_settings_give_the_same_logits(ggufs):
    """Turning the extra buffers off changes where the weights live, not the model: q4_0 logits
    with and without llama.cpp's repacked kernels agree (bit for bit on the EPYC; the bound
    leaves room for kernels that sum in another order)."""
    if not decide_extra_buffers("auto").enabled:
        pytest.skip("on this machine llama.cpp's extra buffers crash multi-token decodes (the AMX buffer)")
    logits = {}
    for setting in ("on", "off"):
        with LlamaDecoder(ggufs["q4_0"], n_ctx=64, extra_buffers=setting) as decoder:
            decoder.feed_tokens(list(range(1, 40)))
            logits[setting] = decoder.last_logits()
    scale = np.abs(logits["off"]).max()
    assert np.abs(logits["on"] - logits["off"]).max() <= 1e-3 * scale


# -- the decode canary -----------------------------------------------------------------------


@pytest.mark.parametrize("quant", QUANT_TYPES)
def test_every_quant_type_decodes_multi_token_batches_in_a_child(ggufs, quant):
    result = canary.run_canary(ggufs[quant])
    assert result["prefill_tokens"] == canary.CANARY_TEXT_TOKENS + canary.CANARY_EMBEDDINGS
    assert result["n_vocab"] == 606 and result["n_embd"] == 64
    assert result["extra_buffers"] == decide_extra_buffers("auto").enabled
    assert result["weight_buffers"]


@pytest.mark.parametrize(
    ("setting", "advice"),
    [("auto", "try --llama-extra-buffers off"), ("off", "edgelalm doctor")],
)
def test_a_crashed_canary_is_one_line_naming_what_to_try(ggufs, monkeypatch, setting, advice):
    monkeypatch.setattr(canary, "run_json_job", lambda module, job, timeout=None: ChildResult(-11, "", ""))
    with pytest.raises(EdgelalmError) as caught:
        canary.run_canary(ggufs["q8_0"], extra_buffers=setting)
    message = str(caught.value)
    assert message.startswith("llama.cpp crashed (SIGSEGV) decoding decoder-q8_0.gguf")
    assert advice in message and "\n" not in message


def test_a_canary_without_a_result_blames_no_buffers(ggufs, monkeypatch):
    """A child that ends well without its result line: not llama.cpp's crash, so no advice about
    its extra buffers (an IndexError traceback before the result line was marked)."""
    monkeypatch.setattr(canary, "run_json_job", lambda module, job, timeout=None: ChildResult(0, "a line\n", ""))
    with pytest.raises(EdgelalmError) as caught:
        canary.run_canary(ggufs["q8_0"])
    assert (
        str(caught.value)
        == "the canary's child process gave no result: no output (a bug in edgelalm: please report it)"
    )


def test_a_hung_canary_is_reported(ggufs, monkeypatch):
    monkeypatch.setattr(canary, "run_json_job", lambda module, job, timeout=None: ChildResult(None, "", ""))
    with pytest.raises(EdgelalmError, match="llama.cpp timed out decoding"):
        canary.run_canary(ggufs["q8_0"])


def test_a_file_llama_cpp_cannot_load_is_the_childs_own_error(tmp_path):
    bad = tmp_path / "decoder.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(EdgelalmError, match="llama.cpp could not load"):
        canary.run_canary(bad)


# -- the stock API with the same choice --------------------------------------------------------


def test_the_installed_llama_cpp_python_has_the_api_edgelalm_calls():
    llama_backend.check_llama_cpp_api(llama_cpp)  # passes: CI installs the pinned release


@pytest.mark.parametrize("missing", ["llama_memory_clear", "llama_set_adapters_lora", "use_extra_bufts"])
def test_an_older_llama_cpp_python_is_one_line_naming_the_floor(missing):
    """llama-cpp-python 0.3.8 (pyproject's floor before) ran the model load, then failed in the
    middle of a run: `module 'llama_cpp' has no attribute 'llama_memory_clear'`, a traceback."""
    import ctypes
    import types

    older = types.ModuleType("llama_cpp")
    older.__dict__.update({name: getattr(llama_cpp, name) for name in llama_backend._NEWEST_API})
    older.__version__ = "0.3.9"
    fields = [field for field in llama_cpp.llama_model_params._fields_ if field[0] != missing]
    older.llama_model_params = type("llama_model_params", (ctypes.Structure,), {"_fields_": fields})
    if hasattr(older, missing):
        delattr(older, missing)
    with pytest.raises(EdgelalmError) as raised:
        llama_backend.check_llama_cpp_api(older)
    floor = llama_backend.LLAMA_CPP_PYTHON_FLOOR
    assert str(raised.value) == (
        f"llama-cpp-python 0.3.9 is older than edgelalm needs ({floor} or newer): "
        f"pip install -U 'llama-cpp-python>={floor}'"
    )


def test_pyprojects_floors_are_the_ones_checked():
    """The floor pip enforces is the one the runtime names, and llama-cpp-python's own __version__
    is at least it. typer >= 0.28: the CLI imports typer.exceptions, which older typer lacks."""
    import re

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"llama-cpp-python>={llama_backend.LLAMA_CPP_PYTHON_FLOOR}"' in pyproject
    assert '"typer>=0.28"' in pyproject

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])

    assert version(llama_cpp.__version__) >= version(llama_backend.LLAMA_CPP_PYTHON_FLOOR)


def test_model_params_carry_the_choice():
    for enabled in (True, False):
        params = llama_backend.model_params(enabled, n_gpu_layers=0)
        assert params.use_extra_bufts is enabled and params.n_gpu_layers == 0


def test_ctrl_c_that_llama_cpp_s_log_callback_drops_is_raised_after_the_call(ggufs, monkeypatch):
    """A signal during a native llama.cpp call runs the CLI's handler at the log callback's first
    instruction, and ctypes printed and dropped that KeyboardInterrupt (an export interrupted in its
    decoder check finished with exit 0). The CLI's unraisable hook keeps it; it is raised once the
    call has returned, and at the end of a deferred block."""
    import ctypes
    import sys
    from types import SimpleNamespace

    from edgelalm import interrupts
    from edgelalm.runtime.decoder import llama_cpp, silence_llama_logs

    @llama_cpp.llama_log_callback
    def interrupted_at_entry(level, text, user_data):
        raise KeyboardInterrupt  # where the handler raises: before any line of the callback

    monkeypatch.setattr(interrupts, "_signals_seen", 1)  # as the handler counts it
    monkeypatch.setattr(sys, "unraisablehook", interrupts._keep_dropped_interrupt)  # as install() sets it
    llama_cpp.llama_log_set(interrupted_at_entry, ctypes.c_void_p())
    try:
        model = llama_cpp.llama_model_load_from_file(str(ggufs["f32"]).encode(), llama_backend.model_params(True))
    finally:
        silence_llama_logs()
    assert model  # the call itself finished: ctypes dropped the interrupt
    llama_cpp.llama_model_free(model)
    with pytest.raises(KeyboardInterrupt):
        interrupts.deliver_swallowed()
    interrupts.deliver_swallowed()  # raised once, not again
    # Inside a deferred block (torch's tracing), it waits for the block's end.
    dropped = SimpleNamespace(exc_type=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        interrupts._keep_dropped_interrupt(dropped)
        interrupts.deliver_swallowed()  # held
    # Without a signal, a dropped exception goes to the hook that was there before.
    monkeypatch.setattr(interrupts, "_signals_seen", 0)
    seen = []
    monkeypatch.setattr(interrupts, "_previous_unraisablehook", seen.append)
    interrupts._keep_dropped_interrupt(dropped)
    assert seen == [dropped]
    interrupts.deliver_swallowed()


def test_an_interrupt_during_a_native_import_is_the_interrupt_not_a_library_that_cannot_load(monkeypatch):
    """Ctrl-C while onnxruntime's native initialisation imports numpy comes out as its ImportError
    ("import numpy failed"): doctor reported onnxruntime unloadable, went on, then said interrupted."""
    import builtins
    import sys

    from edgelalm import interrupts

    real_import = builtins.__import__

    def failing_import(name, *arguments, **keywords):
        if name == "onnxruntime":
            raise ImportError("import numpy failed")
        return real_import(name, *arguments, **keywords)

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(EdgelalmError, match="onnxruntime cannot be loaded: import numpy failed"):
        onnx_backend.import_onnxruntime()  # no signal: a library that cannot load
    monkeypatch.setattr(interrupts, "_signals_seen", 1)
    with pytest.raises(KeyboardInterrupt):
        onnx_backend.import_onnxruntime()
