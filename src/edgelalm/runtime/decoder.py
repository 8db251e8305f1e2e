"""The decoder stage at run time: a GGUF in llama.cpp, fed token ids and audio embeddings.

Audio embeddings enter through `llama_batch.embd` (a batch made with `llama_batch_init(n,
n_embd, 1)`), with positions continuing after the text before them, the way llama.cpp's own
multimodal code feeds image and audio embeddings. Torch-free.

Reads what `edgelalm.export.decoder` writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgelalm import interrupts
from edgelalm.checks import check_choice
from edgelalm.constants import LLAMA_MAX_LAYERS
from edgelalm.errors import EdgelalmError, error_gist
from edgelalm.runtime.llama_backend import (
    ExtraBuffers,
    decide_extra_buffers,
    import_llama_cpp,
    model_params,
    usable_cores,
)
from edgelalm.runtime.search import Advance, log_softmax

llama_cpp = import_llama_cpp()

if TYPE_CHECKING:
    from llama_cpp import llama_batch

    from edgelalm.manifest import DecoderInfo

_GGML_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}
KV_CACHE_TYPES = tuple(_GGML_TYPES)
# A context this many times larger than a run asks for, and past this many cells, is made again
# at the run's size (LlamaContext.ensure_context): beam searches of ordinary sizes keep theirs.
SHRINK_PAST_TIMES, SHRINK_FLOOR_CELLS = 4, 4096


# llama.cpp logs every load and decode to stderr; edgelalm reports for itself. While a model
# loads, the lines are kept instead: they are the only place llama.cpp says which buffer types
# (CPU_Mapped, CPU_REPACK, AMX, CUDA0, ...) hold the weights.
_load_log: list[str] | None = None
_load_log_lock = threading.Lock()
_BUFFER_LINE = re.compile(r"load_tensors:\s+(\S+) model buffer size")
_LOAD_ERROR_LINE = re.compile(r"error|failed|invalid", re.IGNORECASE)


# A Ctrl-C that comes while llama.cpp runs can raise inside this callback, where ctypes drops it:
# edgelalm.interrupts keeps it, and each native call below is followed by `deliver_swallowed`.
@llama_cpp.llama_log_callback
def _keep_load_log(level, text, user_data):
    if _load_log is not None:
        _load_log.append(text.decode(errors="replace"))


def silence_llama_logs() -> None:
    llama_cpp.llama_log_set(_keep_load_log, ctypes.c_void_p())


@contextlib.contextmanager
def kept_llama_log() -> Iterator[list[str]]:
    """llama.cpp's log lines while the block runs: a load or a quantization that fails says why
    only there. One block at a time: llama.cpp's log callback is one per process, and two
    threads loading at once each lost the other's lines."""
    global _load_log
    with _load_log_lock:
        silence_llama_logs()
        _load_log = []
        try:
            yield _load_log
        finally:
            _load_log = None
    interrupts.deliver_swallowed()


def first_error_in(log: list[str]) -> str:
    """ ": <llama.cpp's first error line>", or "" where the log has none."""
    reasons = [line.strip() for line in log if _LOAD_ERROR_LINE.search(line)]
    return f": {error_gist(reasons[0])}" if reasons else ""


# -- the GGUF's header, read before llama.cpp loads it -----------------------------------------
#
# llama.cpp's loader asserts on some header values (block_count 0 or past 512, a NaN epsilon)
# and aborts the process: a bundle's file whose checksums were rewritten to fit would kill `run`.
# Its own GGUF reader (ggml's gguf_* API, no tensors loaded) reads them first, and they must be
# what the manifest says the export wrote (edgelalm.export.decoder.add_model_metadata).

_ADAPTER_ALPHA_KEY = "adapter.lora.alpha"
_GGUF_UINTS = {0: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 10: ctypes.c_uint64}
_GGUF_FLOATS = {6: ctypes.c_float, 12: ctypes.c_double}
_GGUF_STRING = 8
_GGUF_TYPE_NAMES = {1: "i8", 3: "i16", 5: "i32", 7: "bool", 9: "array", 11: "i64"}


class _GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def _gguf_api() -> Any | None:
    """ggml's gguf_* functions (in ggml-base, found through llama-cpp-python's ggml library);
    None where this build does not expose them."""
    try:
        from llama_cpp import _ggml

        library = _ggml.libggml
        library.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GgufInitParams]
    except (ImportError, AttributeError, OSError):
        return None
    library.gguf_init_from_file.restype = ctypes.c_void_p
    library.gguf_free.argtypes = [ctypes.c_void_p]
    library.gguf_find_key.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    library.gguf_find_key.restype = ctypes.c_int64
    library.gguf_get_kv_type.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    library.gguf_get_kv_type.restype = ctypes.c_int
    library.gguf_get_val_data.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    library.gguf_get_val_data.restype = ctypes.c_void_p
    library.gguf_get_val_str.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    library.gguf_get_val_str.restype = ctypes.c_char_p
    return library


def read_gguf_header(gguf_path: Path, keys: Sequence[str]) -> dict[str, int | float | str]:
    """{key: value} for those of `keys` the GGUF holds (numbers and strings); {} where ggml's
    reader is not reachable. A file ggml cannot read, or a key of another type, is refused."""
    api = _gguf_api()
    if api is None:
        return {}
    context = api.gguf_init_from_file(str(gguf_path).encode(), _GgufInitParams(True, None))
    if not context:
        raise EdgelalmError(f"{gguf_path} is not a GGUF file llama.cpp can read")
    values: dict[str, int | float | str] = {}
    try:
        for key in keys:
            key_id = api.gguf_find_key(context, key.encode())
            if key_id < 0:
                continue
            kind = api.gguf_get_kv_type(context, key_id)
            if kind == _GGUF_STRING:
                values[key] = api.gguf_get_val_str(context, key_id).decode(errors="replace")
            elif number := _GGUF_UINTS.get(kind) or _GGUF_FLOATS.get(kind):
                values[key] = ctypes.cast(api.gguf_get_val_data(context, key_id), ctypes.POINTER(number))[0]
            else:
                raise EdgelalmError(f"{gguf_path}: {key} is a {_GGUF_TYPE_NAMES.get(kind, kind)}; expected a number")
    finally:
        api.gguf_free(context)
    return values


def check_gguf_header(gguf_path: Path, expected: DecoderInfo) -> None:
    """The decoder's shape in the GGUF is the manifest's, and its other numbers are in range."""
    arch = expected.architecture
    shape = {
        "general.architecture": arch,
        f"{arch}.block_count": expected.layers,
        f"{arch}.embedding_length": expected.hidden_size,
        f"{arch}.attention.head_count": expected.attention_heads,
        f"{arch}.attention.head_count_kv": expected.kv_heads,
        f"{arch}.context_length": expected.context_length,
    }
    positive = [f"{arch}.attention.layer_norm_rms_epsilon", f"{arch}.rope.freq_base"]
    found = read_gguf_header(gguf_path, [*shape, *positive, f"{arch}.expert_count"])
    if not found:
        return
    for key, value in shape.items():
        if found.get(key) != value:
            raise EdgelalmError(f"{gguf_path}: {key} is {found.get(key, 'missing')}; the manifest says {value}")
    for key in positive:
        if key in found and not 0 < found[key] < math.inf:  # type: ignore[operator]
            raise EdgelalmError(f"{gguf_path}: {key} must be a positive number, got {found[key]}")
    if not 1 <= expected.layers <= LLAMA_MAX_LAYERS:
        raise EdgelalmError(f"{gguf_path}: {expected.layers} layers; llama.cpp loads 1 to {LLAMA_MAX_LAYERS}")
    if found.get(f"{arch}.expert_count", 0):
        raise EdgelalmError(f"{gguf_path}: experts in a {arch} decoder, which edgelalm does not write")


@dataclass(frozen=True)
class LlamaAdapter:
    """A LoRA adapter loaded on a `LlamaModel`; a context applies it with `use_adapter`."""

    path: Path
    pointer: Any


# What a context records while its adapter is being changed: equal to no adapter a run asks for.
_UNKNOWN_ADAPTER = LlamaAdapter(Path(), None)


class LlamaModel:
    """A GGUF's weights and vocabulary in llama.cpp, shared by every `LlamaContext` made from it.
    Tokenizing is read-only and safe from any thread."""

    def __init__(
        self,
        gguf_path: Path,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        kv_cache_type: str = "f16",
        extra_buffers: ExtraBuffers = "auto",
        expected: DecoderInfo | None = None,
    ) -> None:
        """`kv_cache_type` f16 is llama.cpp's default (half the KV memory). f32 also turns
        flash attention off, which on CPU accumulates in f16: for exact parity checks.
        `extra_buffers`: whether llama.cpp may use its extra weight buffer types (auto: not
        where its AMX buffer would crash; see `llama_backend`). `expected`: the bundle manifest's
        description of the GGUF, checked before llama.cpp reads it."""
        check_choice("kv_cache_type", kv_cache_type, KV_CACHE_TYPES)
        silence_llama_logs()
        if expected is not None:
            check_gguf_header(gguf_path, expected)
        llama_cpp.llama_backend_init()
        self.extra_buffers = decide_extra_buffers(extra_buffers)
        params = model_params(self.extra_buffers.enabled, n_gpu_layers)
        with kept_llama_log() as log:
            self.model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), params)
        # The buffer types holding the weights, as llama.cpp chose them.
        self.weight_buffers = sorted({m.group(1) for line in log if (m := _BUFFER_LINE.search(line))})
        if not self.model:
            # llama.cpp says why only in its log, which edgelalm keeps quiet: its first error line.
            raise EdgelalmError(f"llama.cpp could not load {gguf_path}{first_error_in(log)}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)
        # llama.cpp's own default is 4 threads whatever the machine: oversubscribed on 2 cores.
        self.n_threads = n_threads or usable_cores()
        self.kv_cache_type = kv_cache_type
        self.gguf_path = gguf_path
        self.adapters: list[LlamaAdapter] = []

    def load_adapter(self, path: Path, expected_alpha: float | None = None) -> LlamaAdapter:
        """A LoRA adapter GGUF (edgelalm.export.adapter_gguf) for this model: llama.cpp checks the
        architecture and every factor's shape against the weights; `expected_alpha`, the alpha the
        manifest says was written (llama.cpp scales each delta by it). Freed with the model."""
        if expected_alpha is not None:
            found = read_gguf_header(path, [_ADAPTER_ALPHA_KEY]).get(_ADAPTER_ALPHA_KEY, expected_alpha)
            if found != np.float32(expected_alpha):
                raise EdgelalmError(f"{path}: {_ADAPTER_ALPHA_KEY} is {found}; the manifest says {expected_alpha}")
        with kept_llama_log() as log:
            pointer = llama_cpp.llama_adapter_lora_init(self.model, str(path).encode())
        interrupts.deliver_swallowed()
        if not pointer:
            raise EdgelalmError(
                f"llama.cpp could not load the LoRA adapter {path} for {self.gguf_path}{first_error_in(log)}"
            )
        adapter = LlamaAdapter(path, pointer)
        self.adapters.append(adapter)
        return adapter

    def close(self) -> None:
        """Free the weights and adapters (after every context made from them)."""
        for adapter in self.adapters:
            llama_cpp.llama_adapter_lora_free(adapter.pointer)
        self.adapters.clear()
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    # -- text ---------------------------------------------------------------------------

    def tokenize(self, text: str, parse_special: bool = True) -> list[int]:
        """Token ids for `text`, nothing added. With `parse_special`, special tokens written as text
        (<|im_start|> ...) become their ids: right for the template's own pieces, wrong for text a
        user supplied, which must stay text."""
        if not self.model:  # its vocabulary went with it: llama.cpp would read freed memory
            raise EdgelalmError(f"{self.gguf_path} is closed")
        data = text.encode()
        capacity = len(data) + 8
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity, False, parse_special)
        if count < 0:
            capacity = -count
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity, False, parse_special)
        return list(buffer[:count])

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (special tokens as their text)."""
        buffer = ctypes.create_string_buffer(64)
        length = llama_cpp.llama_token_to_piece(self.vocab, token_id, buffer, len(buffer), 0, True)
        if length < 0:
            buffer = ctypes.create_string_buffer(-length)
            length = llama_cpp.llama_token_to_piece(self.vocab, token_id, buffer, len(buffer), 0, True)
        return buffer.raw[:length]

    def is_end_of_generation(self, token_id: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token_id))


class LlamaContext:
    """One sequence on a shared `LlamaModel`: its own KV cache, fed tokens and embeddings, read
    logits, sampled. One thread at a time per context; several contexts may run at once."""

    def __init__(self, model: LlamaModel, n_ctx: int) -> None:
        self.llama = model
        self.context = None
        self.n_ctx = 0
        self.n_batch = 0
        self.n_sequences = 1  # sequences the KV cache holds: 1, or a beam's hypotheses + the prompt's
        self.n_past = 0
        # The tokens at the start of the KV cache that `start_with` may keep for the next sequence.
        self.cached_prefix: list[int] = []
        # The adapter llama.cpp applies in this context (None: the base weights; _UNKNOWN_ADAPTER
        # while a change is under way, so that a change cut short is made again).
        self.adapter: LlamaAdapter | None = None
        self.adapter_scale = 1.0
        self.ensure_context(n_ctx)

    def ensure_context(self, n_ctx: int, keep_cells: bool = False, sequences: int = 1) -> None:
        """A fresh, empty context of at least `n_ctx` tokens (KV memory grows with it, so
        each clip gets what it needs, rounded up to 256) and `sequences` sequences (a beam search's
        hypotheses share the prompt's cells). `keep_cells`: a context that is large enough keeps
        its KV cells (for `start_with`); a new one starts empty. A context far larger than asked
        for (one long beam search's) is made again at the size asked: a server would otherwise
        hold the largest request's KV memory for as long as it runs."""
        n_ctx = -(-n_ctx // 256) * 256
        oversized = self.n_ctx > max(SHRINK_PAST_TIMES * n_ctx, SHRINK_FLOOR_CELLS)
        if self.context and self.n_ctx >= n_ctx and self.n_sequences >= sequences and not oversized:
            if not keep_cells:
                self.reset()
            return
        adapter, scale = self.adapter, self.adapter_scale  # a new context keeps the adapter
        self._free_context()
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = n_ctx
        context_params.n_batch = min(n_ctx, 512)
        context_params.n_ubatch = min(n_ctx, 512)
        sequences = sequences if oversized else max(sequences, self.n_sequences)
        context_params.n_seq_max = sequences
        # One pool of cells for every sequence (not n_ctx / n_seq_max each), so that the
        # hypotheses share the prompt's cells and each takes only what its own tokens need.
        context_params.kv_unified = sequences > 1
        context_params.type_k = context_params.type_v = _GGML_TYPES[self.llama.kv_cache_type]
        if self.llama.kv_cache_type == "f32":
            context_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        context_params.n_threads = context_params.n_threads_batch = self.llama.n_threads
        self.context = llama_cpp.llama_init_from_model(self.llama.model, context_params)
        interrupts.deliver_swallowed()
        if not self.context:
            raise EdgelalmError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.llama.gguf_path}")
        self.n_ctx = llama_cpp.llama_n_ctx(self.context)
        self.n_batch = context_params.n_batch
        self.n_sequences = sequences
        if adapter is not None and adapter is not _UNKNOWN_ADAPTER:
            self.use_adapter(adapter, scale)

    def close(self) -> None:
        self._free_context()

    def _free_context(self) -> None:
        """What records the context is cleared before it is freed: a Ctrl-C that lands as the free
        returns (Python raises it there) must not leave a pointer to freed memory behind."""
        context, self.context = self.context, None
        self.n_ctx = self.n_past = 0
        self.cached_prefix = []
        self.adapter, self.adapter_scale = None, 1.0  # a new context starts with the base weights
        if context:
            llama_cpp.llama_free(context)

    def forget(self) -> None:
        """Trust nothing this context records about its cells and adapter: after a run that
        raised (a Ctrl-C may land between a native call and the line that records it), the next
        run evaluates the prompt again and applies its adapter again."""
        self.cached_prefix = []
        self.adapter = _UNKNOWN_ADAPTER

    # -- evaluation ---------------------------------------------------------------------

    def use_adapter(self, adapter: LlamaAdapter | None, scale: float = 1.0) -> None:
        """Apply `adapter` to this context's next evaluations (None: the base weights). The weights
        stay loaded once; only what this context adds to them changes. Cached cells computed
        without it are dropped."""
        if adapter is self.adapter and scale == self.adapter_scale:
            return
        self.forget()  # until the change is made whole
        self._apply_adapter(adapter, scale)
        self.reset()
        self.adapter, self.adapter_scale = adapter, scale

    def _apply_adapter(self, adapter: LlamaAdapter | None, scale: float) -> None:
        if adapter is None:
            status = llama_cpp.llama_set_adapters_lora(self.context, None, 0, None)
        else:
            pointers = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter.pointer)
            scales = (ctypes.c_float * 1)(scale)
            status = llama_cpp.llama_set_adapters_lora(self.context, pointers, 1, scales)
        if status != 0:
            raise EdgelalmError(f"llama.cpp could not apply the adapter {adapter.path if adapter else None}")

    def reset(self) -> None:
        self.n_past = 0  # before the clear: cut short after it, nothing stale is taken as kept
        self.cached_prefix = []
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.context), True)

    def start_with(self, prefix: Sequence[int], reuse: bool = True) -> int:
        """Begin a new sequence with `prefix` (the text before the audio, the same for every clip):
        with `reuse`, the KV cells the last sequence left for the same prefix are kept and everything
        after them removed, so the prefix is not evaluated again. Returns how many tokens were reused."""
        prefix = list(prefix)
        if reuse and prefix and self.cached_prefix == prefix and self.n_past >= len(prefix):
            memory = llama_cpp.llama_get_memory(self.context)
            if llama_cpp.llama_memory_seq_rm(memory, 0, len(prefix), -1):
                self.n_past = len(prefix)
                return len(prefix)
        self.reset()
        self.feed_tokens(prefix)
        self.cached_prefix = prefix if reuse else []
        return 0

    def feed_tokens(self, token_ids: Sequence[int]) -> None:
        for start in range(0, len(token_ids), self.n_batch):
            chunk = token_ids[start : start + self.n_batch]
            batch = llama_cpp.llama_batch_init(len(chunk), 0, 1)
            try:
                for i, token_id in enumerate(chunk):
                    batch.token[i] = token_id
                self._decode(batch, len(chunk))
            finally:
                llama_cpp.llama_batch_free(batch)

    def feed_embeddings(self, embeddings: np.ndarray) -> None:
        """Embeddings [N, n_embd] (float32) in place of N input tokens."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.llama.n_embd:
            raise EdgelalmError(
                f"audio embeddings of shape {embeddings.shape} do not fit a decoder of width {self.llama.n_embd}"
            )
        rows = np.ascontiguousarray(embeddings, dtype=np.float32)
        for start in range(0, rows.shape[0], self.n_batch):
            chunk = rows[start : start + self.n_batch]
            batch = llama_cpp.llama_batch_init(chunk.shape[0], self.llama.n_embd, 1)
            try:
                ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
                self._decode(batch, chunk.shape[0])
            finally:
                llama_cpp.llama_batch_free(batch)

    def _decode(self, batch: llama_batch, count: int) -> None:
        if self.n_past + count > self.n_ctx:
            raise EdgelalmError(f"the input needs more than the decoder's context of {self.n_ctx} tokens")
        batch.n_tokens = count
        for i in range(count):
            batch.pos[i] = self.n_past + i  # type: ignore[call-overload]  # llama_cpp types pos loosely
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == count - 1
        status = llama_cpp.llama_decode(self.context, batch)
        interrupts.deliver_swallowed()
        if status != 0:
            raise EdgelalmError(f"llama.cpp failed to decode a batch (status {status})")
        self.n_past += count

    def last_logits(self) -> np.ndarray:
        """Logits [n_vocab] after the last fed position."""
        return self._logits(-1).copy()

    def _logits(self, index: int) -> np.ndarray:
        """llama.cpp's logits at batch position `index` (a view), checked finite: NaN weights (a
        damaged decoder or adapter, or a broken CPU path) otherwise become an answer of "!!!!",
        token 0 over and over, with exit 0."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.context, index), shape=(self.llama.n_vocab,))
        if not np.isfinite(logits).all():
            adapter = self.adapter if self.adapter is not _UNKNOWN_ADAPTER else None
            raise EdgelalmError(
                f"{self.llama.gguf_path}{f' with the adapter {adapter.path.name}' if adapter else ''} gave logits "
                "that are not finite (NaN or infinity): its weights are damaged (export it again), or llama.cpp "
                "computes wrongly on this CPU (try --llama-extra-buffers off)"
            )
        return logits

    def beams(self, beam_size: int) -> tuple[Advance, Callable[[], None]]:
        """A beam search's decoder over what was fed (`edgelalm.runtime.search.Advance`): each
        hypothesis is a llama.cpp sequence of its own, copied from its parent's (the copy shares
        the cells) and fed one token a step, all hypotheses in one batch. The prompt stays in
        sequence 0, untouched, for the prefix cache. The second callable removes the hypotheses'
        cells (call it when the search ends, however it ends)."""
        if self.n_sequences < beam_size + 1:
            raise EdgelalmError(
                f"this context holds {self.n_sequences} sequences; a beam of {beam_size} needs {beam_size + 1}"
            )
        memory = llama_cpp.llama_get_memory(self.context)
        prompt_length = self.n_past
        hypothesis_sequences: list[int] = []
        steps = 0

        def advance(parents: list[int], tokens: list[int]) -> np.ndarray:
            nonlocal hypothesis_sequences, steps
            if not parents and not tokens:
                return log_softmax(self.last_logits()[None, :])
            if not hypothesis_sequences:  # the first step: every hypothesis continues the prompt
                release()  # whatever an interrupted search may have left in the hypotheses' sequences
                hypothesis_sequences = [1]
                llama_cpp.llama_memory_seq_cp(memory, 0, 1, -1, -1)
            kept: list[int | None] = [None] * len(parents)
            taken: set[int] = set()
            for index, parent in enumerate(parents):  # a parent's first child continues its sequence
                if hypothesis_sequences[parent] not in taken:
                    kept[index] = hypothesis_sequences[parent]
                    taken.add(hypothesis_sequences[parent])
            for sequence in set(hypothesis_sequences) - taken:  # no child: its cells go
                llama_cpp.llama_memory_seq_rm(memory, sequence, -1, -1)
            free = [sequence for sequence in range(1, beam_size + 1) if sequence not in taken]
            for index, parent in enumerate(parents):  # further children: a copy of the parent's cells
                if kept[index] is None:
                    kept[index] = free.pop(0)
                    llama_cpp.llama_memory_seq_cp(memory, hypothesis_sequences[parent], kept[index], -1, -1)
            hypothesis_sequences = [sequence for sequence in kept if sequence is not None]
            position = prompt_length + steps
            if position >= self.n_ctx:
                raise EdgelalmError(f"the answer needs more than the decoder's context of {self.n_ctx} tokens")
            batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
            try:
                batch.n_tokens = len(tokens)
                for i, (token, sequence) in enumerate(zip(tokens, hypothesis_sequences, strict=True)):
                    batch.token[i] = token
                    batch.pos[i] = position
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = sequence
                    batch.logits[i] = True
                status = llama_cpp.llama_decode(self.context, batch)
                interrupts.deliver_swallowed()
                if status != 0:
                    raise EdgelalmError(f"llama.cpp failed to decode a batch (status {status})")
            finally:
                llama_cpp.llama_batch_free(batch)
            steps += 1
            return log_softmax(np.stack([self._logits(i) for i in range(len(tokens))]))

        def release() -> None:
            for sequence in range(1, beam_size + 1):
                llama_cpp.llama_memory_seq_rm(memory, sequence, -1, -1)

        return advance, release

    def generate(
        self,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_ids: frozenset[int] = frozenset(),
        stop_at_end: bool = True,
    ) -> Iterator[int]:
        """Sample up to `max_tokens` ids with llama.cpp's sampler chain (greedy at
        temperature 0), stopping before an end-of-generation token (llama.cpp's, or one of
        `stop_ids`); `stop_at_end` False: all `max_tokens`, as a decode measurement needs."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        try:
            for _ in range(max_tokens):
                self._logits(-1)
                token_id = llama_cpp.llama_sampler_sample(chain, self.context, -1)
                if stop_at_end and (self.llama.is_end_of_generation(token_id) or token_id in stop_ids):
                    return
                yield token_id
                self.feed_tokens([token_id])
        finally:
            llama_cpp.llama_sampler_free(chain)


class LlamaDecoder(LlamaContext):
    """A model with one context of its own: the simple case (export checks, canary, tests).
    `Runtime` shares one `LlamaModel` between several contexts instead."""

    def __init__(
        self,
        gguf_path: Path,
        n_ctx: int,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        kv_cache_type: str = "f16",
        extra_buffers: ExtraBuffers = "auto",
    ) -> None:
        model = LlamaModel(gguf_path, n_threads, n_gpu_layers, kv_cache_type, extra_buffers)
        try:
            super().__init__(model, n_ctx)
        except EdgelalmError:
            model.close()
            raise
        self.tokenize = model.tokenize
        self.token_bytes = model.token_bytes
        self.is_end_of_generation = model.is_end_of_generation
        self.weight_buffers = model.weight_buffers
        self.extra_buffers = model.extra_buffers
        self.n_embd, self.n_vocab, self.n_ctx_train = model.n_embd, model.n_vocab, model.n_ctx_train
        self.n_threads = model.n_threads

    def close(self) -> None:
        super().close()
        self.llama.close()

    def __enter__(self) -> LlamaDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
