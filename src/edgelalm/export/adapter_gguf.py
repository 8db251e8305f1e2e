"""A LoRA adapter as llama.cpp's own adapter GGUF, applied at run time instead of merged (issue 19).

    write_adapter_gguf(checkpoint, adapter, "avg3.lora.gguf")

The file llama.cpp's `llama_adapter_lora_init` loads (the layout of its convert_lora_to_gguf.py):
general.type "adapter", general.architecture "qwen2", adapter.type "lora", adapter.lora.alpha, and
for each adapted weight `blk.N.attn_q.weight.lora_a` (A, [rank, in]) and `...lora_b` (B, [out, rank]).
llama.cpp scales B @ A by alpha / rank, peft by its module's own scaling (alpha / r, per-module
alpha and rank patterns, or alpha / sqrt(r) for rsLoRA). When every module's scaling is alpha / rank
with one alpha, A and B are written as trained; otherwise each B carries its module's scaling and
alpha is 0 (llama.cpp's "no alpha": scale 1). Either way llama.cpp applies exactly peft's delta.

The runtime's reader is `edgelalm.runtime.decoder.LlamaModel.load_adapter`.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from edgelalm.constants import GGUF_ARCHITECTURE
from edgelalm.errors import EdgelalmError
from edgelalm.export.adapter import LoraAdapter
from edgelalm.export.checkpoint import Checkpoint


def uniform_alpha(adapter: LoraAdapter) -> float | None:
    """The one alpha for which llama.cpp's alpha / rank is every module's peft scaling, or None."""
    alphas = {module.alpha for module in adapter.modules.values()}
    if len(alphas) != 1:
        return None
    (alpha,) = alphas
    exact = all(
        abs(module.scaling - alpha / module.rank) <= 1e-7 * abs(module.scaling) for module in adapter.modules.values()
    )
    return alpha if exact and alpha != 0 else None


def write_adapter_gguf(checkpoint: Checkpoint, adapter: LoraAdapter, path: Path, float_type: str = "f32") -> float:
    """Write `adapter` for `checkpoint`'s decoder as a llama.cpp LoRA GGUF at `path` (f32 or f16
    factors); returns the alpha written (0: each module's scaling folded into its B)."""
    if float_type not in ("f32", "f16"):
        raise EdgelalmError(f"adapter factors are written as f32 or f16, not {float_type!r}")
    dtype = np.float16 if float_type == "f16" else np.float32
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, checkpoint.config.text_config.num_hidden_layers)
    alpha = uniform_alpha(adapter)
    writer = gguf.GGUFWriter(str(path), GGUF_ARCHITECTURE)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha if alpha is not None else 0.0)
    for weight_name, module in sorted(adapter.modules.items()):
        gguf_name = names.get_name(weight_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise EdgelalmError(f"{adapter.path}: no GGUF name for adapted weight {weight_name}")
        lora_a, lora_b = adapter.factors(weight_name)
        if alpha is None:
            lora_b = lora_b * module.scaling
        for suffix, factor in (("lora_a", lora_a), ("lora_b", lora_b)):
            data = factor.numpy().astype(dtype)
            if not np.isfinite(data).all():  # past float16's range
                raise EdgelalmError(f"{adapter.weights_file}: the LoRA factors of {weight_name} overflow {float_type}")
            writer.add_tensor(f"{gguf_name}.{suffix}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return alpha if alpha is not None else 0.0
