"""The language model (+ lm_head), LoRA merged, as a `qwen2` GGUF that stock llama.cpp runs.

Written tensor by tensor with gguf-py's streaming writer: tensor infos first (shapes come
from the safetensors headers), then each tensor is read, merged with its LoRA delta,
converted and written before the next is read, so a 7B never sits in memory twice.
Quantized types (q8_0, q4_k_m, q4_0) are made from an f16 GGUF by llama.cpp's own quantizer.

The runtime reads what this module writes in `edgelalm.runtime.decoder`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np
import torch

from edgelalm.checks import check_choice
from edgelalm.constants import GGUF_ARCHITECTURE, QUANT_TYPES
from edgelalm.errors import EdgelalmError
from edgelalm.export.checkpoint import Checkpoint

if TYPE_CHECKING:
    from edgelalm.export.adapter import LoraAdapter

# The GGUF type -> llama.cpp file type; f32 and f16 are written directly by gguf-py.
_LLAMA_FTYPE_NAMES = {
    "f32": "LLAMA_FTYPE_ALL_F32",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}


def write_decoder(
    checkpoint: Checkpoint,
    path: Path,
    quant: str,
    adapter: LoraAdapter | None,
    on_tensor: Callable[[int, int], None] = lambda done, total: None,
    chat_template: str | None = None,
) -> None:
    """Write the decoder GGUF at `path` in `quant`; `on_tensor(done, total)` reports progress.
    `chat_template`: the one the bundle's prompt uses ("" for none: the base format); None: the
    checkpoint's."""
    check_choice("quant", quant, QUANT_TYPES)
    if quant in ("f32", "f16"):
        write_float_gguf(checkpoint, path, quant, adapter, on_tensor, chat_template)
        return
    float_path = path.with_name(path.stem + ".f16.gguf")
    try:
        write_float_gguf(checkpoint, float_path, "f16", adapter, on_tensor, chat_template)
        quantize_gguf(float_path, path, quant)
    finally:
        float_path.unlink(missing_ok=True)


def write_float_gguf(
    checkpoint: Checkpoint,
    path: Path,
    float_type: str,
    adapter: LoraAdapter | None,
    on_tensor: Callable[[int, int], None],
    chat_template: str | None = None,
) -> None:
    text_config = checkpoint.config.text_config
    stored_keys = checkpoint.decoder_tensor_keys()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, text_config.num_hidden_layers)
    plan: list[tuple[str, str, tuple[int, ...], np.dtype]] = []  # (canonical, gguf name, shape, dtype written)
    for canonical in stored_keys:
        gguf_name = names.get_name(canonical, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise EdgelalmError(f"{checkpoint.path}: no GGUF name for decoder tensor {canonical}")
        shape = checkpoint.tensor_shape(stored_keys[canonical])
        # llama.cpp keeps norms and biases (1-D) in f32.
        dtype = np.dtype(np.float16 if float_type == "f16" and len(shape) == 2 else np.float32)
        plan.append((canonical, gguf_name, shape, dtype))

    writer = gguf.GGUFWriter(str(path), GGUF_ARCHITECTURE)
    add_model_metadata(writer, checkpoint, float_type)
    add_tokenizer(writer, checkpoint, chat_template)
    for _, gguf_name, shape, dtype in plan:
        writer.add_tensor_info(gguf_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for done, (canonical, _, _, dtype) in enumerate(plan, start=1):
        weight = checkpoint.tensor(stored_keys[canonical]).to(torch.float32)
        delta = adapter.delta(canonical) if adapter else None
        if delta is not None:
            weight = weight + delta
        data = weight.numpy().astype(dtype, copy=False)
        if not np.isfinite(data).all():  # f32 and f16 would write it as it is (q8_0's quantizer refuses)
            raise EdgelalmError(
                f"{checkpoint.path}: decoder tensor {stored_keys[canonical]} holds NaN or infinite values"
                + (" (or values past float16's range)" if dtype == np.float16 else "")
            )
        writer.write_tensor_data(data)
        del weight, delta, data
        on_tensor(done, len(plan))
    writer.close()


def add_model_metadata(writer: gguf.GGUFWriter, checkpoint: Checkpoint, float_type: str) -> None:
    text_config = checkpoint.config.text_config
    rope = getattr(text_config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(text_config, "rope_theta", 10000.0))
    writer.add_name(checkpoint.name)
    writer.add_context_length(text_config.max_position_embeddings)
    writer.add_embedding_length(text_config.hidden_size)
    writer.add_block_count(text_config.num_hidden_layers)
    writer.add_feed_forward_length(text_config.intermediate_size)
    writer.add_head_count(text_config.num_attention_heads)
    writer.add_head_count_kv(text_config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(text_config.rms_norm_eps)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if float_type == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(file_type)


def add_tokenizer(writer: gguf.GGUFWriter, checkpoint: Checkpoint, chat_template: str | None = None) -> None:
    """Byte-level BPE as llama.cpp reads Qwen2's: tokens by id, their types, merges,
    special ids, chat template. Rows past the tokenizer (padded embeddings) become unused
    [PADn] tokens, as llama.cpp's own converter writes them."""
    tokenizer = checkpoint.processor.tokenizer
    vocab_size = checkpoint.config.text_config.vocab_size
    token_by_id = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, token_types = [], []
    for token_id in range(vocab_size):
        if token_id in added:
            tokens.append(added[token_id].content)
            special = added[token_id].special
            token_types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif token_id in token_by_id:
            tokens.append(token_by_id[token_id])
            token_types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{token_id}]")
            token_types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    special_vocab = gguf.SpecialVocab(checkpoint.path, load_merges=True, n_vocab=vocab_size)
    if not special_vocab.merges:
        raise EdgelalmError(f"{checkpoint.path}: the tokenizer has no BPE merges (tokenizer.json)")
    if chat_template is None:
        special_vocab.chat_template = checkpoint.processor.chat_template or special_vocab.chat_template
    else:  # the bundle's own: edgelalm's for a template-less checkpoint, none for the base format
        special_vocab.chat_template = chat_template or None
    special_vocab.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(False)


def quantize_gguf(source: Path, target: Path, quant: str) -> None:
    """llama.cpp's own quantizer (K-quants included), as llama-quantize runs it."""
    from edgelalm.files import free_space_note
    from edgelalm.runtime.decoder import first_error_in, kept_llama_log
    from edgelalm.runtime.llama_backend import import_llama_cpp

    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _LLAMA_FTYPE_NAMES[quant])
    params.nthread = 0  # all cores
    with kept_llama_log() as log:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        target.unlink(missing_ok=True)
        # Its reason (a full disk among them) is only in llama.cpp's log.
        reason = (first_error_in(log) or f" (status {status})") + free_space_note(target.parent)
        raise EdgelalmError(f"llama.cpp could not quantize the decoder to {quant}{reason}")
