"""Canaries: short real runs in a child process, so that a native crash on this machine becomes
one line naming what to try, never a dead process.

- the decoder canary loads a GGUF in llama.cpp and decodes real multi-token batches (text tokens,
  embeddings in place of audio, text tokens, then a few sampled tokens). Loading and tokenizing
  prove little: llama.cpp's AMX path loaded and tokenized fine and crashed at the first batch of
  more than one token. `export` runs it on every decoder it writes;
- the bundle canary runs a whole bundle on a few seconds of synthetic speech-like audio
  (`doctor --bundle`).

Both run through `edgelalm.isolation.run_json_job`. Torch-free.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgelalm.errors import EdgelalmError
from edgelalm.isolation import run_json_job, serve_json_job
from edgelalm.runtime.llama_backend import ExtraBuffers

# Batches of several tokens are what crashed; one-token decodes never did.
CANARY_TEXT_TOKENS = 32
CANARY_EMBEDDINGS = 16
CANARY_GENERATED_TOKENS = 4
CANARY_CLIP_SECONDS = 3.0
# Loading a 7B decoder from a cold disk takes minutes; a hang must still end.
CANARY_TIMEOUT_SECONDS = 900.0


def decode_canary(
    gguf_path: Path, threads: int | None = None, extra_buffers: ExtraBuffers = "auto", n_gpu_layers: int = 0
) -> dict[str, Any]:
    """The decoder canary in this process (the child's side); returns what it measured."""
    from edgelalm.runtime.decoder import LlamaDecoder

    started = time.perf_counter()
    with LlamaDecoder(
        gguf_path, n_ctx=256, n_threads=threads, n_gpu_layers=n_gpu_layers, extra_buffers=extra_buffers
    ) as decoder:
        loaded = time.perf_counter()
        # Any ids will do: the decode, not the text, is under test.
        token_ids = [(i * 7919 + 1) % decoder.n_vocab for i in range(CANARY_TEXT_TOKENS)]
        embeddings = 0.02 * np.random.default_rng(0).standard_normal((CANARY_EMBEDDINGS, decoder.n_embd))
        half = CANARY_TEXT_TOKENS // 2
        decoder.feed_tokens(token_ids[:half])
        decoder.feed_embeddings(embeddings.astype(np.float32))
        decoder.feed_tokens(token_ids[half:])
        prefilled = time.perf_counter()
        # One-token decodes after the batches, each of the greedy token: generate() would stop at an
        # end token, which random ids or a trained model may well pick first (0 decoded).
        for _ in range(CANARY_GENERATED_TOKENS):
            decoder.feed_tokens([int(np.argmax(decoder.last_logits()))])
        generated = CANARY_GENERATED_TOKENS
        finished = time.perf_counter()
        return {
            "n_vocab": decoder.n_vocab,
            "n_embd": decoder.n_embd,
            "threads": decoder.n_threads,
            "extra_buffers": decoder.extra_buffers.enabled,
            "weight_buffers": decoder.weight_buffers,
            "prefill_tokens": CANARY_TEXT_TOKENS + CANARY_EMBEDDINGS,
            "generated_tokens": generated,
            "load_ms": round((loaded - started) * 1000, 1),
            "prefill_ms": round((prefilled - loaded) * 1000, 1),
            "decode_ms": round((finished - prefilled) * 1000, 1),
        }


def bundle_canary(
    bundle: Path, threads: int | None = None, extra_buffers: ExtraBuffers = "auto", device: str = "cpu"
) -> dict[str, Any]:
    """The bundle canary in this process: load the bundle, answer on a synthetic clip."""
    from edgelalm.runtime.pipeline import Runtime
    from edgelalm.runtime.synthetic_audio import synthetic_clip

    started = time.perf_counter()
    with Runtime(bundle, threads=threads, device=device, llama_extra_buffers=extra_buffers) as runtime:
        load_ms = (time.perf_counter() - started) * 1000
        # Greedy whatever the bundle advises, 8 tokens whatever they are: the decode rate it reports
        # is per token (the default model ends its answer to the synthetic clip at once: 0 decoded).
        runtime.stop_at_end_of_answer = False
        clip = synthetic_clip(CANARY_CLIP_SECONDS)
        result = runtime.run(clip, max_tokens=8, beam_size=1, ctc_weight=0.0)
        # Then every compressor as `run` would answer with it (its adapter, the bundle's advised
        # decoding and CTC head): the greedy run above reaches none of those.
        decodings = {}
        for label in runtime.compressors:
            runtime.run(clip, compressor=label, max_tokens=CANARY_GENERATED_TOKENS)
            decodings[label] = runtime.decoding_for(0.0, 1.0, 0, None, None, label).describe()
        return {
            "load_ms": round(load_ms, 1),
            "weight_buffers": runtime.decoder.weight_buffers,
            "extra_buffers": runtime.decoder.extra_buffers.enabled,
            "threads": runtime.decoder.n_threads,
            "compressors_run": decodings,
            **result.to_json(),
        }


def run_canary(
    gguf_path: Path,
    threads: int | None = None,
    extra_buffers: ExtraBuffers = "auto",
    n_gpu_layers: int = 0,
    timeout: float = CANARY_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """`decode_canary` in a child process; a crash, a hang or an error raises one EdgelalmError."""
    arguments = {
        "gguf_path": str(gguf_path),
        "threads": threads,
        "extra_buffers": extra_buffers,
        "n_gpu_layers": n_gpu_layers,
    }
    return _in_child("decoder", arguments, f"llama.cpp {{failure}} decoding {gguf_path.name}", extra_buffers, timeout)


def run_bundle_canary(
    bundle: Path,
    threads: int | None = None,
    extra_buffers: ExtraBuffers = "auto",
    device: str = "cpu",
    timeout: float = CANARY_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """`bundle_canary` in a child process; a crash, a hang or an error raises one EdgelalmError."""
    arguments = {"bundle": str(bundle), "threads": threads, "extra_buffers": extra_buffers, "device": device}
    return _in_child("bundle", arguments, f"the runtime {{failure}} running bundle {bundle}", extra_buffers, timeout)


# What a child that ran out of memory left on stderr: C++'s, llama.cpp's and the C library's words.
_OUT_OF_MEMORY = ("std::bad_alloc", "mem_buffer != NULL", "Cannot allocate memory")


def _in_child(
    kind: str, arguments: dict[str, Any], what: str, extra_buffers: ExtraBuffers, timeout: float
) -> dict[str, Any]:
    """Run `_child` with `kind` and `arguments`; `what` words a crash ({failure} filled in)."""
    result = run_json_job("edgelalm.runtime.canary", {"kind": kind, **arguments}, timeout=timeout)
    if (answer := result.job_result()) is not None:
        return answer
    if result.ok:  # no crash to blame on llama.cpp or its buffers: edgelalm's own fault
        raise EdgelalmError(f"the canary's child process {result.failure()} (a bug in edgelalm: please report it)")
    if result.returncode is not None and result.returncode > 0:  # an error the child worded itself
        raise EdgelalmError(
            result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"the canary {result.failure()}"
        )
    if any(sign in result.stderr for sign in _OUT_OF_MEMORY):  # an address-space or container limit
        advice = "it ran out of memory (a memory limit? ulimit -v, a container's): free some or lift it"
    elif extra_buffers != "off":
        advice = "try --llama-extra-buffers off"
    else:
        advice = "run `edgelalm doctor` and include its output in a bug report"
    raise EdgelalmError(f"{what.format(failure=result.failure())} in a test run in a child process; {advice}")


def _child(job: dict[str, Any]) -> dict[str, Any]:
    """The canary `_in_child` asked for, in this child process."""
    if job.pop("kind") == "decoder":
        return decode_canary(Path(job.pop("gguf_path")), **job)
    return bundle_canary(Path(job.pop("bundle")), **job)


if __name__ == "__main__":
    serve_json_job(_child)
