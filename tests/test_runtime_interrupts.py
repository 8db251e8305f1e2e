"""A `Runtime` kept after a run was cut short (a notebook's interrupted cell, a server's handled
signal): the next run must answer as a fresh Runtime does. Python raises a Ctrl-C that comes
during a ctypes call right after the call returns, before the line that records what the call
did; the tests raise KeyboardInterrupt at exactly that point."""

import threading

import pytest

pytest.importorskip("torch")  # the bundle is exported with torch

from hf_reference import speechlike

from edgelalm.compression import CompressorSpec
from edgelalm.export.bundle import ExportOptions, export_bundle
from edgelalm.runtime import decoder
from edgelalm.runtime.pipeline import Runtime

GREEDY = dict(max_tokens=12, beam_size=1, ctc_weight=0.0)


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tiny_lora_adapter, tmp_path_factory):
    """none with no adapter, avg3 with the tiny LoRA: a run-time switch between them."""
    choices = ((CompressorSpec("none", 1), None), (CompressorSpec("avg", 3), tiny_lora_adapter))
    out = tmp_path_factory.mktemp("interrupts") / "bundle"
    return export_bundle(ExportOptions(tiny_checkpoint, out, choices[0][0], quant="f32", choices=choices))


def _interrupt_after(monkeypatch, name: str) -> dict[str, bool]:
    """The next call of llama.cpp's `name` runs, then KeyboardInterrupt is raised where it returns."""
    real = getattr(decoder.llama_cpp, name)
    armed = {"armed": False, "fired": False}

    def call_then_interrupt(*args):
        result = real(*args)
        if armed["armed"]:
            armed["armed"], armed["fired"] = False, True
            raise KeyboardInterrupt(f"Ctrl-C during {name}")
        return result

    monkeypatch.setattr(decoder.llama_cpp, name, call_then_interrupt)
    return armed


@pytest.mark.parametrize(
    "native_call,cut_short",
    [
        # the switch to avg3's adapter applied, the cells computed without it not yet dropped
        ("llama_set_adapters_lora", "switch"),
        # the cells cleared, the record of the cached prompt not yet: every later avg3 answer was wrong
        ("llama_memory_clear", "switch"),
        # the prompt's cached cells kept, the rest being removed
        ("llama_memory_seq_rm", "same"),
        # a context freed to make a larger one, its pointer kept: the next run read freed memory (a segfault)
        ("llama_free", "longer"),
    ],
)
def test_the_run_after_an_interrupted_one_answers_as_a_fresh_runtime(bundle, monkeypatch, native_call, cut_short):
    short, longer = speechlike(3.0, 1), speechlike(9.5, 2)
    with Runtime(bundle, kv_cache_type="f32", max_concurrent_runs=1) as runtime:
        fresh = {label: runtime.run(short, compressor=label, **GREEDY).text for label in ("none", "avg3")}
    interrupt = _interrupt_after(monkeypatch, native_call)
    with Runtime(bundle, kv_cache_type="f32", max_concurrent_runs=1) as runtime:
        runtime.run(short, compressor="none", **GREEDY)  # the prompt before the audio is cached
        interrupt["armed"] = True
        label, clip = {"switch": ("avg3", short), "same": ("none", short), "longer": ("avg3", longer)}[cut_short]
        # "longer" needs a larger context than the first run's (256 cells): the old one is freed
        tokens = 400 if cut_short == "longer" else GREEDY["max_tokens"]
        with pytest.raises(KeyboardInterrupt):
            runtime.run(clip, compressor=label, **{**GREEDY, "max_tokens": tokens})
        assert interrupt["fired"]
        results = [runtime.run(short, compressor=label, **GREEDY) for label in ("avg3", "avg3", "none", "avg3")]
        assert [result.text for result in results] == [fresh[label] for label in ("avg3", "avg3", "none", "avg3")]
        # after a run that raised, nothing its context recorded is trusted: the prompt is evaluated again
        assert results[0].reused_prompt_tokens == 0 and results[1].reused_prompt_tokens > 0
    # the adapter changes the answer: the equalities above tell the adapter's state apart
    assert fresh["none"] != fresh["avg3"]


def test_a_run_interrupted_as_it_takes_its_context_gives_it_back(bundle, monkeypatch):
    """A Ctrl-C as a run takes its context (after the taking, before the run's own code) gave the
    context to nobody: with max_concurrent_runs=1 every later run waited for ever."""
    clip = speechlike(3.0, 1)
    with Runtime(bundle, max_concurrent_runs=1) as runtime:
        runtime.run(clip, **GREEDY)
        assert runtime.run(clip, **GREEDY).reused_prompt_tokens > 0  # the prefix cache works
        take = runtime._take_context

        def take_then_interrupt(token):
            take(token)
            raise KeyboardInterrupt("Ctrl-C as the context was taken")

        monkeypatch.setattr(runtime, "_take_context", take_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            runtime.run(clip, **GREEDY)
        monkeypatch.undo()
        answers: list[str] = []
        worker = threading.Thread(target=lambda: answers.append(runtime.run(clip, **GREEDY).text))
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "the next run waited for a context that was never given back"
        assert answers == [runtime.run(clip, **GREEDY).text] and runtime.contexts_made == 1


def test_a_large_beam_search_does_not_keep_its_kv_memory_for_later_runs(bundle):
    """A context only grew: one beam search of 16 x 600 tokens kept about 10000 KV cells for
    every later greedy run (a server held its largest request's memory for ever)."""
    clip = speechlike(3.0, 1)
    with Runtime(bundle, max_concurrent_runs=1) as runtime:
        before = runtime.run(clip, **GREEDY)
        large = runtime.run(clip, max_tokens=600, beam_size=16, ctc_weight=0.0)
        after = runtime.run(clip, **GREEDY)
    assert large.context_tokens >= 16 * 600
    assert after.context_tokens == before.context_tokens
    assert after.text == before.text


def test_runtimes_loaded_from_two_threads_at_once_each_keep_their_load_report(bundle):
    """llama.cpp's log callback is one per process: two loads at once each lost the other's lines
    (which buffers hold the weights, and a failed load's reason)."""
    for _ in range(3):
        runtimes = _load_at_once(bundle, 2)
        try:
            assert len(runtimes) == 2 and all(runtime.decoder.weight_buffers for runtime in runtimes)
        finally:
            for runtime in runtimes:
                runtime.close()


def _load_at_once(bundle, count: int) -> list[Runtime]:
    runtimes: list[Runtime] = []
    start = threading.Barrier(count)

    def load() -> None:
        start.wait(timeout=60)
        runtimes.append(Runtime(bundle))

    workers = [threading.Thread(target=load) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return runtimes
