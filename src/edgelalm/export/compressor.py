"""Compressors (paper section IV) as PyTorch modules, and their ONNX export with the projector.

Every compressor maps one clip's encoder frames z [L, D] (valid frames only, 25 per second)
to audio tokens [N, D]. The projector (Linear D -> LLM hidden) follows in the same graph,
because segmentation must see the encoder outputs, not the projected ones.

Ragged tail, for avg and sample with L not a multiple of K: nothing is dropped. avg averages
the last, partial group over the frames it has; sample keeps frames 0, K, 2K, ... so the
partial group keeps its first frame. Both emit ceil(L / K) tokens.

The runtime reads what this module writes in `edgelalm.runtime.compressor`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from edgelalm.compression import CompressorSpec
from edgelalm.constants import COMPRESSOR_INPUT, COMPRESSOR_OUTPUT
from edgelalm.interrupts import deferred

# Guards 1 - cos against zero-norm frames (silence after a layer norm can get close).
COSINE_EPS = 1e-8


class Identity(nn.Module):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames


class AveragePool(nn.Module):
    """Mean of each run of `factor` frames; the last run may be shorter."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        num_frames, width = frames.shape
        num_tokens = (num_frames + self.factor - 1) // self.factor
        padding = num_tokens * self.factor - num_frames
        padded = nn.functional.pad(frames, (0, 0, 0, padding))
        sums = padded.reshape(num_tokens, self.factor, width).sum(dim=1)
        # ONNX has no ragged mean: divide each sum by how many real frames it holds.
        starts = torch.arange(num_tokens, device=frames.device) * self.factor
        counts = (num_frames - starts).clamp(max=self.factor).to(frames.dtype)
        return sums / counts.unsqueeze(1)


class UniformSample(nn.Module):
    """Frames 0, K, 2K, ..."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames[:: self.factor]


def cosine_dissimilarity(frames: torch.Tensor) -> torch.Tensor:
    """[L]: d_t = 1 - cos(z_t, z_{t+1}) for t = 0..L-2; slot L-1 pairs the last frame with itself
    (so every tensor keeps L rows: onnxruntime mis-shapes reductions over empty tensors, which
    L = 1 would otherwise produce) and holds no real d_t."""
    following = torch.cat([frames[1:], frames[-1:]])
    norms = frames.norm(dim=-1) * following.norm(dim=-1)
    return 1.0 - (frames * following).sum(dim=-1) / norms.clamp_min(COSINE_EPS)


def segment_starts(frames: torch.Tensor) -> torch.Tensor:
    """Bool [L]: True where a segment starts (frame 0 always does).

    d_t = 1 - cos(z_t, z_{t+1}) for t = 0..L-2; d_t is a peak when d_t > d_{t-1} and
    d_t > d_{t+1}. The first and last d_t have one neighbour only and are never peaks.
    A peak at t is a boundary between frames t and t+1, so frame t+1 starts a segment.
    """
    dissimilarity = cosine_dissimilarity(frames)
    num_frames = frames.shape[0]
    positions = torch.arange(num_frames, device=frames.device)
    # Slot L-1 holds no real d_t: make it +inf, a neighbour no d_t can exceed (and itself no
    # peak, since its right neighbour is +inf too).
    inf = torch.full((1,), float("inf"), dtype=frames.dtype, device=frames.device)
    dissimilarity = torch.where(positions < num_frames - 1, dissimilarity, inf)
    left = torch.cat([inf, dissimilarity[:-1]])
    right = torch.cat([dissimilarity[1:], inf])
    is_peak = (dissimilarity > left) & (dissimilarity > right)
    # A peak at t starts a segment at frame t + 1.
    return torch.cat([torch.ones(1, dtype=torch.bool, device=frames.device), is_peak[:-1]])


class UnsupervisedSegmentation(nn.Module):
    """Average the frames of each segment found by the peak detector (variable length)."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        segment_ids = torch.cumsum(segment_starts(frames).to(torch.int64), dim=0) - 1
        # Segment sums and sizes by scatter-add; ids are 0..S-1 and contiguous, so the
        # non-empty rows are exactly the first S.
        sums = torch.zeros_like(frames).index_add(0, segment_ids, frames)
        ones = torch.ones(frames.shape[0], dtype=frames.dtype, device=frames.device)
        counts = torch.zeros_like(ones).index_add(0, segment_ids, ones)
        non_empty = counts > 0
        return sums[non_empty] / counts[non_empty].unsqueeze(1)


class GlobalMean(nn.Module):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=0, keepdim=True)


class GlobalMax(nn.Module):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.amax(dim=0, keepdim=True)


def build_compressor(spec: CompressorSpec) -> nn.Module:
    """The PyTorch module for `spec`: [L, D] -> [N, D]."""
    if spec.name == "avg":
        return AveragePool(spec.factor)
    if spec.name == "sample":
        return UniformSample(spec.factor)
    modules: dict[str, type[nn.Module]] = {
        "none": Identity,
        "unseg": UnsupervisedSegmentation,
        "mean": GlobalMean,
        "max": GlobalMax,
    }
    return modules[spec.name]()


class CompressorProjector(nn.Module):
    """Encoder frames [L, D] -> compressed audio embeddings in the LLM's space [N, H]."""

    def __init__(self, compressor: nn.Module, projector: nn.Linear) -> None:
        super().__init__()
        self.compressor = compressor
        self.projector = projector

    def forward(self, audio_frames: torch.Tensor) -> torch.Tensor:
        return self.projector(self.compressor(audio_frames))


def export_compressor_onnx(module: CompressorProjector, encoder_width: int, path: Path) -> None:
    """Trace with dynamo: the frame count is dynamic, and for unseg so is the token count.

    The legacy TorchScript exporter freezes the segment count at trace time; dynamo keeps it
    data-dependent.
    """
    export_rows_graph(module, torch.randn(40, encoder_width), COMPRESSOR_INPUT, COMPRESSOR_OUTPUT, path)


# The most rows (frames or audio tokens) a rows graph is exported for.
MOST_GRAPH_ROWS = 100_000


def export_rows_graph(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str, path: Path) -> None:
    """A graph of one input of [rows, width] and one output, the row count dynamic (traced by
    dynamo): the compressor's and the CTC head's."""
    module.eval()
    rows = torch.export.Dim(input_name, min=1, max=MOST_GRAPH_ROWS)
    argument = next(iter(inspect.signature(module.forward).parameters))
    with deferred(), torch.no_grad():  # see edgelalm.interrupts
        program = torch.onnx.export(
            module,
            (example,),
            dynamic_shapes={argument: {0: rows}},
            input_names=[input_name],
            output_names=[output_name],
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
