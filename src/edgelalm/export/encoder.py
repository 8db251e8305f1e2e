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
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from edgelalm.constants import (
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    ENCODER_RIGHT_CONTEXT_INPUT,
    MIN_MEL_FRAMES,
    RIGHT_CONTEXT_FRAMES,
    EncoderPrecision,
)

# The graph's contract, shared with the runtime that feeds it.
from edgelalm.export import audio_tower as tower_steps

# Opset 23 has attention as one op (Attention), which the exporter writes for the tower's scaled
# dot-product attention; onnxruntime's kernel for it (>= 1.23) does not keep the softmax input
# and output of every head side by side as the opset-20 decomposition does: on a 30 s window of the
# `small` preset the encoder's peak is 165 MB lower at the same speed (README, "Encoder speed and
# memory").
ENCODER_OPSET = 23
# Attention over a block of queries at a time: the kernel's scores for every head of a 30 s window
# (heads x 1500 x 1500 floats: 108 MB for the `small` preset, 180 MB for the 7B) are the encoder's
# activation peak; four blocks hold a quarter of them at once, for the same arithmetic.
QUERY_BLOCKS = 4
_BLOCKED_ATTENTION = "edgelalm_query_blocks"


def _query_block_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, QUERY_BLOCKS blocks of query positions one after another."""
    if attention_mask is not None:  # the clip-length graph attends to every position
        raise ValueError("query-block attention is for the unmasked clip-length encoder")
    positions = query.shape[2]
    # QUERY_BLOCKS - 1 rows of zeros after the queries (dropped from the output) keep every block
    # non-empty on the shortest clips: onnxruntime refuses an empty query.
    padded = nn.functional.pad(query, (0, 0, 0, QUERY_BLOCKS - 1))
    size = padded.shape[2] // QUERY_BLOCKS
    starts = [size * number for number in range(QUERY_BLOCKS)]
    ends = [*starts[1:], padded.shape[2]]
    blocks = [padded[:, :, start:end] for start, end in zip(starts, ends, strict=True)]
    outputs = [sdpa_attention_forward(module, block, key, value, None, **kwargs)[0] for block in blocks]
    return torch.cat(outputs, dim=1)[:, :positions], None


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
        hidden = tower_steps.transformer(tower, hidden[:, :conv_positions], None)
        return tower_steps.pooled(tower, hidden)[0].float()


def export_encoder_onnx(audio_tower: nn.Module, path: Path, precision: EncoderPrecision) -> None:
    """Write the encoder graph at `path` (weights beside it in `<name>.data`).

    fp16 traces the tower in half precision (inputs and outputs stay float32); int8 traces
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
    with torch.no_grad(), _blocked_attention(tower):
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
    if precision == "int8":
        _quantize_matmuls_int8(target, path)
        for leftover in (target, target.with_name(target.name + ".data")):
            leftover.unlink(missing_ok=True)


def _quantize_matmuls_int8(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path),
        str(int8_path),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
    )
