"""The audio tower (Whisper-style encoder) traced to ONNX for the clip's own length.

transformers runs Qwen2-Audio's tower on exactly 2 * max_source_positions mel frames (30 s
for the 7B) and masks the padding in attention. That pays for 30 s of encoder on a 5 s clip.
The graph written here takes the clip's own mel frames instead, plus the two frames that
follow the clip: the stride-2 convolution's last valid position reads them, and feeding the
same values transformers sees there makes every output frame match the padded, masked run.
Attention then covers valid positions only, so no mask is needed.

Graph: mel [n_mels, T] + mel_right_context [n_mels, 2] -> audio_frames [floor(((T-1)//2+1)/2), D].

The runtime reads what this module writes in `edgelalm.runtime.encoder`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AttentionInterface

# The graph's contract, shared with the runtime that feeds it.
from edgelalm.constants import (
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    ENCODER_RIGHT_CONTEXT_INPUT,
    MIN_MEL_FRAMES,
    RIGHT_CONTEXT_FRAMES,
    EncoderPrecision,
)
from edgelalm.errors import EdgelalmError
from edgelalm.export import audio_tower as tower_steps
from edgelalm.interrupts import deferred

if TYPE_CHECKING:
    import onnx

# Opset 23 has attention as one op (Attention), which the exporter writes for the tower's scaled
# dot-product attention; onnxruntime's kernel for it (>= 1.23) does not keep the softmax input
# and output of every head side by side as the opset-20 decomposition does: on a 30 s window of the
# `small` preset the encoder's peak is 165 MB lower at the same speed (README, "Encoder speed and
# memory").
ENCODER_OPSET = 23
# Attention over a block of queries at a time: the kernel's scores for every head of a 30 s window
# (heads x 1500 x 1500 floats: 108 MB for the `small` preset, 180 MB for the 7B) are the encoder's
# activation peak; eight blocks hold an eighth of them at once, for the same arithmetic (4 blocks:
# 9 MB more at the int8 encoder's peak on a 29 s window of `small`).
QUERY_BLOCKS = 8
# The oldest torch whose export of the encoder and every compressor was checked (pyproject's floor
# too; a GPU machine's image has 2.11). 2.7.1 exports the encoder but stops at a guard on a
# compressor's frames; 2.8 exports with constraint errors logged.
MIN_TORCH_VERSION = (2, 11)
_BLOCKED_ATTENTION = "edgelalm_query_blocks"
# The feed-forward block (fc1, GELU, fc2) over blocks of positions one after another: its
# [positions, ffn_dim] activations (17.8 MB each in fp32 on a 29 s window of the `small` preset) are
# a quarter of that per block. Row-wise arithmetic: the same values.
FEED_FORWARD_BLOCKS = 4


def _position_blocks(hidden: torch.Tensor, blocks: int, dim: int) -> list[torch.Tensor]:
    """`blocks` consecutive slices of `hidden` along `dim`, after blocks - 1 rows of zeros that keep
    every block non-empty on the shortest clips (onnxruntime refuses an empty tensor in some kernels)."""
    pad = [0, 0] * (hidden.dim() - 1 - dim) + [0, blocks - 1]
    padded = nn.functional.pad(hidden, pad)
    size = padded.shape[dim] // blocks
    # narrow, not slices: a slice may be shorter than asked, so torch 2.11's export gave each block
    # a data-dependent length, on which transformers' attention then stopped at a guard.
    last = padded.shape[dim] - size * (blocks - 1)
    return [padded.narrow(dim, size * number, size if number < blocks - 1 else last) for number in range(blocks)]


def _query_block_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The tower's attention (no mask, not causal) over QUERY_BLOCKS blocks of query positions one
    after another: scaled dot-product attention, the op the exporter writes as opset 23's Attention.
    Called directly, not through transformers' SDPA function, whose causal test on the query's
    length (`q_length > 1`) made torch 2.11's export guard the clip to at least 17 mel frames."""
    if attention_mask is not None:  # the clip-length graph attends to every position
        raise ValueError("query-block attention is for the unmasked clip-length encoder")
    positions = query.shape[2]
    # QUERY_BLOCKS - 1 rows of zeros after the queries (dropped from the output) keep every block
    # non-empty on the shortest clips: onnxruntime refuses an empty query.
    outputs = [
        nn.functional.scaled_dot_product_attention(block, key, value, dropout_p=dropout, scale=scaling).transpose(1, 2)
        for block in _position_blocks(query, QUERY_BLOCKS, 2)
    ]
    return torch.cat(outputs, dim=1).narrow(1, 0, positions), None


AttentionInterface.register(_BLOCKED_ATTENTION, _query_block_attention)


@contextlib.contextmanager
def _blocked_attention(tower: nn.Module) -> Iterator[None]:
    """The tower's layers use query-block attention while the graph is traced."""
    configs = {id(m.config): m.config for m in tower.modules() if hasattr(m, "config")}.values()
    saved = [config._attn_implementation for config in configs]
    try:
        for config in configs:
            config._attn_implementation = _BLOCKED_ATTENTION
        yield
    finally:
        for config, implementation in zip(configs, saved, strict=True):
            config._attn_implementation = implementation


def _blocked_layer_forward(self, hidden_states, attention_mask, **kwargs):
    """Qwen2AudioEncoderLayer.forward (eval), the feed-forward block over FEED_FORWARD_BLOCKS blocks of positions."""
    residual = hidden_states
    hidden_states = self.self_attn_layer_norm(hidden_states)
    hidden_states, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask, **kwargs)
    hidden_states = residual + hidden_states
    residual = hidden_states
    normed = self.final_layer_norm(hidden_states)
    outputs = [
        self.fc2(self.activation_fn(self.fc1(block))) for block in _position_blocks(normed, FEED_FORWARD_BLOCKS, 1)
    ]
    hidden_states = residual + torch.cat(outputs, dim=1).narrow(1, 0, normed.shape[1])
    if hidden_states.dtype == torch.float16:
        clamp_value = torch.finfo(hidden_states.dtype).max - 1000
        hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
    return hidden_states


@contextlib.contextmanager
def _blocked_feed_forward(tower: nn.Module) -> Iterator[None]:
    """The tower's layers run the feed-forward block over blocks of positions while the graph is traced."""
    layers = list(tower.layers) if FEED_FORWARD_BLOCKS > 1 else []
    try:
        for layer in layers:
            layer.forward = _blocked_layer_forward.__get__(layer)
        yield
    finally:
        for layer in layers:
            del layer.forward


class ClipLengthAudioEncoder(nn.Module):
    """Qwen2-Audio's audio tower on one clip's own mel frames, in the given dtype."""

    def __init__(self, audio_tower: nn.Module) -> None:
        super().__init__()
        self.tower = audio_tower

    def forward(self, mel: torch.Tensor, mel_right_context: torch.Tensor) -> torch.Tensor:
        tower = self.tower
        dtype = tower.conv1.weight.dtype
        features = torch.cat([mel, mel_right_context], dim=1).to(dtype).unsqueeze(0)
        hidden = tower_steps.convolutions(tower, features)
        # Keep the positions transformers treats as valid: the last one only came from the
        # right context.
        conv_positions = (mel.shape[1] - 1) // 2 + 1
        hidden = tower_steps.transformer(tower, hidden.narrow(1, 0, conv_positions), None)
        return tower_steps.pooled(tower, hidden)[0].float()


def check_torch_version(version: str | None = None) -> None:
    """Refuse, in one line, a torch too old to trace the graphs (before minutes of export)."""
    version = version or torch.__version__
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if numbers < MIN_TORCH_VERSION:
        needed = ".".join(map(str, MIN_TORCH_VERSION))
        raise EdgelalmError(
            f"export needs torch >= {needed} to trace its graphs; this is torch {version} "
            f"(pip install 'torch>={needed}')"
        )


def export_encoder_onnx(audio_tower: nn.Module, path: Path, precision: EncoderPrecision) -> None:
    """Write the encoder graph at `path` (weights beside it in `<name>.data`).

    fp16 traces the tower in half precision (inputs and outputs stay float32); fp16w stores the
    MatMul weights in float16 and computes in float32, as llama.cpp's f16 mmproj does; int8 traces
    fp32 and then quantizes the MatMul weights dynamically (onnxruntime's quantizer).
    """
    config = audio_tower.config
    max_mel_frames = 2 * config.max_source_positions
    # fp16 traces a half-precision copy: the caller's fp32 tower, the reference the export is
    # checked against, must keep its weights (an in-place .half().float() would round them).
    tower = copy.deepcopy(audio_tower).half() if precision == "fp16" else audio_tower
    module = ClipLengthAudioEncoder(tower.eval()).eval()
    example_frames = min(max_mel_frames, 200)
    mel = torch.randn(config.num_mel_bins, example_frames)
    context = torch.randn(config.num_mel_bins, RIGHT_CONTEXT_FRAMES)
    mel_frames = torch.export.Dim("mel_frames", min=MIN_MEL_FRAMES, max=max_mel_frames)
    target = path if precision != "int8" else path.with_name(path.stem + ".fp32.onnx")
    # deferred(): an interrupt raised inside torch's tracing can abort the process (edgelalm.interrupts).
    with deferred(), torch.no_grad(), _blocked_attention(tower), _blocked_feed_forward(tower):
        program = torch.onnx.export(
            module,
            (mel, context),
            dynamic_shapes={"mel": {1: mel_frames}, "mel_right_context": None},
            input_names=[ENCODER_INPUT, ENCODER_RIGHT_CONTEXT_INPUT],
            output_names=[ENCODER_OUTPUT],
            dynamo=True,
            opset_version=ENCODER_OPSET,
            verbose=False,
        )
    program.save(str(target), external_data=True)
    _finish_graph(target, float16_weights=precision == "fp16w")
    if precision == "int8":
        _quantize_matmuls_int8(target, path)
        _finish_graph(path)  # the quantizer writes intermediate shapes back
        for leftover in (target, target.with_name(target.name + ".data")):
            leftover.unlink(missing_ok=True)


def _finish_graph(path: Path, float16_weights: bool = False) -> None:
    """Three rewrites of the saved graph, the same arithmetic (with `float16_weights`, then
    `_widen_float16_weights_lazily`'s too; the graph is saved once):

    - Transpose(weight) -> the transposed weight, stored. The exporter folds a weight's transpose
      into the stored weight when one MatMul reads it; with the feed-forward blocks four do, and it
      keeps the Transpose: onnxruntime folds it at load anyway, but the int8 quantizer only
      quantizes a MatMul whose weight is stored (it would leave fc1 and fc2 in fp32).
    - Identical stored tensors kept once: on a small tower the exporter folds each block's transpose
      of fc1 and fc2 into a copy of its own (four copies of the feed-forward weights).
    - No intermediate shapes (value_info). With the exporter's symbolic shapes, onnxruntime plans
      each intermediate into a buffer shared with earlier ones of the same symbolic size and keeps
      every such buffer until the run ends: on a 29 s window of the `small` preset about 86 MB held
      at once, where at most about 40 MB are live. Without them it frees each tensor after its last
      reader (the runtime's encoder session then allocates from onnxruntime's arena, released
      after each run: see edgelalm.runtime.encoder).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {weight.name: weight for weight in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    folded = []
    for node in model.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in weights or readers[node.input[0]] != 1:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        source = weights.pop(node.input[0])
        value = numpy_helper.to_array(source).transpose(perm)
        model.graph.initializer.remove(source)
        model.graph.initializer.append(numpy_helper.from_array(value.copy(), node.output[0]))
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    first_of: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    for weight in list(model.graph.initializer):
        content = hashlib.sha256(numpy_helper.to_array(weight).tobytes()).digest()
        key = (weight.data_type, tuple(weight.dims), content)
        if key in first_of:
            renamed[weight.name] = first_of[key]
            model.graph.initializer.remove(weight)
        else:
            first_of[key] = weight.name
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    del model.graph.value_info[:]
    if float16_weights:
        _widen_float16_weights_lazily(model)
    _save_with_external_data(model, path)


def _widen_float16_weights_lazily(model: onnx.ModelProto) -> None:
    """MatMul weights stored in float16, widened to float32 by each MatMul when it runs.

    Every MatMul that reads a stored weight becomes If(its input is not empty) { Cast(weight) ->
    MatMul }. onnxruntime runs a subgraph only when its If runs and frees what it made there, so
    one weight's float32 copy is alive at a time. A plain Cast before each MatMul does not save
    memory: onnxruntime runs such casts early (twelve before the first layer) and keeps their
    copies to the end, and constant folding turns them back into float32 weights at load. The
    float16 weights are therefore also listed as graph inputs (their stored values the defaults):
    onnxruntime does not fold an initializer that a caller may override. `small` preset, 29 s
    window: peak 300 MB against fp32's 454, float32 arithmetic on the same float16 values
    (README, "Encoder speed and memory").
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    weights = {weight.name: weight for weight in graph.initializer}
    read_as_matmul_weight = {node.input[1] for node in graph.node if node.op_type == "MatMul"}
    read_otherwise = {
        name for node in graph.node for index, name in enumerate(node.input) if node.op_type != "MatMul" or index != 1
    }
    # Only weights that nothing else reads (another reader would expect float32).
    matmul_weights = (read_as_matmul_weight - read_otherwise) & weights.keys()
    for name in sorted(matmul_weights):
        value = numpy_helper.to_array(weights[name]).astype(np.float16)
        if not np.isfinite(value).all():
            raise EdgelalmError(f"encoder weight {name} exceeds float16's range (65504): export it as fp32")
        weights[name].CopyFrom(numpy_helper.from_array(value, name))
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT16, list(value.shape)))
    zero = "edgelalm_zero"
    graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), zero))
    condition_of: dict[str, str] = {}  # activation -> "it is not empty", computed once
    nodes = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in matmul_weights:
            nodes.append(node)
            continue
        activation, weight, output = node.input[0], node.input[1], node.output[0]
        if activation not in condition_of:
            size, condition = f"{activation}_size", f"{activation}_not_empty"
            nodes.append(helper.make_node("Size", [activation], [size]))
            nodes.append(helper.make_node("Greater", [size, zero], [condition]))
            condition_of[activation] = condition
        nodes.append(
            helper.make_node(
                "If",
                [condition_of[activation]],
                [output],
                then_branch=_widening_matmul(activation, weight, output, "then"),
                else_branch=_widening_matmul(activation, weight, output, "else"),
            )
        )
    del graph.node[:]
    graph.node.extend(nodes)


def _save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """`path` and its weights beside it in `<name>.data`, replacing both."""
    import onnx
    from onnx.external_data_helper import _get_initializer_tensors, set_external_data

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing external data file
    # What onnx.save(save_as_external_data=True) does, without its check that `location` does not
    # exist, which it makes relative to the working folder, not the model's: an export run from
    # inside a bundle folder (which holds an encoder.onnx.data) failed, "External data file exists".
    for tensor in _get_initializer_tensors(model):
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= _EXTERNAL_DATA_FROM_BYTES:
            set_external_data(tensor, data.name)
    onnx.save(model, str(path))  # writes each marked tensor to `data`, beside `path`


# onnx.save's own threshold for external data (size_threshold).
_EXTERNAL_DATA_FROM_BYTES = 1024


def _widening_matmul(activation: str, weight: str, output: str, label: str) -> onnx.GraphProto:
    """The subgraph Cast(weight, float32) -> MatMul(activation, it); names from the outer graph."""
    from onnx import TensorProto, helper

    widened, product = f"{output}_{label}_weight", f"{output}_{label}"
    return helper.make_graph(
        [
            helper.make_node("Cast", [weight], [widened], to=TensorProto.FLOAT),
            helper.make_node("MatMul", [activation, widened], [product]),
        ],
        f"{output}_{label}",
        [],
        [helper.make_tensor_value_info(product, TensorProto.FLOAT, None)],
    )


def _quantize_matmuls_int8(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path),
        str(int8_path),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
    )
