"""A checkpoint's CTC head as an ONNX graph: audio embeddings [N, hidden] -> log-probabilities
[N, 1 + vocab] of a blank and each decoder token.

The head is the one `edgelalm.training.train.TokenCtc` trains beside the decoder: each audio
embedding's cosine similarity to the blank vector and to every row of the decoder's input
embeddings, times a learned scale, then a log-softmax. A head file (CTC_HEAD_FILE) keeps only the
head's own parameters: `blank` [hidden] and `log_scale` [], and in a head realigned to a compressor
(an adapter folder's, written by `finetune`) `transform` [hidden, hidden], a residual linear map
applied to each audio embedding first (x + x @ transform.T): an average of three frames is no
longer close to one token's embedding, and the map learns to read it. A head may also have
transformer layers of its own (`CtcLayers`: tensors `layers.N.*`, their attention heads in the
file's metadata, and how far each position reads) that read the window around each position
before it is scored: the similarity alone
reads each position by itself. The vocabulary is the
decoder's embedding table, read from the checkpoint here and stored in the graph already
normalised and scaled. By default (CtcReads "frames") the graph reads the encoder's frames and
holds the projector before the head (`FramesCtcHead`): the decoder reads a compressor's tokens,
and the joint score reads the audio at its full rate, the head as it was trained, whatever the
compressor. The runtime reads what this module writes in `edgelalm.runtime.ctc`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgelalm.constants import (
    CTC_ATTENTION_HEADS_KEY,
    CTC_ATTENTION_SPAN_KEY,
    CTC_FRAMES_INPUT,
    CTC_HEAD_FILE,
    CTC_INPUT,
    CTC_OUTPUT,
    REALIGNED_TO_KEY,
)
from edgelalm.errors import EdgelalmError
from edgelalm.export.compressor import MOST_GRAPH_ROWS, export_rows_graph
from edgelalm.files import safetensors_file

# The head's own tensors in CTC_HEAD_FILE, and the one a head realigned to a compressor adds.
HEAD_TENSORS = ("blank", "log_scale")
REALIGNED_HEAD_TENSOR = "transform"
# A head's own transformer layers: CtcLayers' state dict under this prefix.
LAYERS_PREFIX = "layers."
LAYER_NAME = re.compile(re.escape(LAYERS_PREFIX) + r"stack\.(\d{1,3})\.")
# Beyond this many layers or attention heads a file is not a head this project trains.
MOST_CTC_LAYERS = 64
# A span as long as a graph's most rows is the whole window.
MOST_CTC_ATTENTION_SPAN = MOST_GRAPH_ROWS


class CtcLayer(nn.Module):
    """A pre-norm transformer layer over a clip's positions: self-attention, then a GELU
    feed-forward, each added to its input. Both outputs start at zero, so a new layer is the
    identity and a head given layers starts as the head it was."""

    def __init__(self, width: int, attention_heads: int, feed_forward_width: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % attention_heads:
            raise EdgelalmError(f"a CTC layer's width {width} is not a multiple of its {attention_heads} heads")
        self.attention_heads = attention_heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_output = nn.Linear(width, width)
        self.feed_forward_norm = nn.LayerNorm(width)
        self.feed_forward_up = nn.Linear(width, feed_forward_width)
        self.feed_forward_down = nn.Linear(feed_forward_width, width)
        self.dropout = nn.Dropout(dropout)
        for output in (self.attention_output, self.feed_forward_down):
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)

    def forward(self, positions: torch.Tensor, blocked: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, width] -> [B, T, width]; `blocked` [B or 1, 1, T, T], True where a position (row)
        may not attend to another (column): `CtcLayers.blocked`."""
        batch, count, width = positions.shape
        head_width = width // self.attention_heads
        qkv = self.qkv(self.attention_norm(positions)).reshape(batch, count, 3, self.attention_heads, head_width)
        queries, keys, values = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, T, head_width]
        scores = queries @ keys.transpose(-1, -2) / math.sqrt(head_width)
        if blocked is not None:
            scores = scores.masked_fill(blocked, float("-inf"))
        attended = (scores.softmax(-1) @ values).transpose(1, 2).reshape(batch, count, width)
        positions = positions + self.dropout(self.attention_output(attended))
        hidden = nn.functional.gelu(self.feed_forward_up(self.feed_forward_norm(positions)))
        return positions + self.dropout(self.feed_forward_down(self.dropout(hidden)))


class CtcLayers(nn.Module):
    """A CTC head's own layers, in order. `attention_span`: the positions each side a position
    attends to (0: the whole window). A short span reads the sounds around a position, not the
    sentence it is in: layers that read whole windows can learn the training texts' word order,
    which people's speech does not follow."""

    def __init__(
        self,
        width: int,
        layer_count: int,
        attention_heads: int,
        feed_forward_width: int,
        dropout: float = 0.0,
        attention_span: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= attention_span <= MOST_CTC_ATTENTION_SPAN:
            raise EdgelalmError(
                f"a CTC head's attention span is a count of positions from 0 (the whole window) to "
                f"{MOST_CTC_ATTENTION_SPAN}, got {attention_span}"
            )
        self.attention_heads = attention_heads
        self.attention_span = attention_span
        self.stack = nn.ModuleList(
            CtcLayer(width, attention_heads, feed_forward_width, dropout) for _ in range(layer_count)
        )

    def blocked(self, count: int, padding: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """Which position may not attend to which: padded positions (`padding` [B, T], True past a
        row's length), and those beyond the span. A padded position keeps itself, so that no row
        is left with nothing to attend to (a NaN that the next layer would spread)."""
        blocked = None
        if padding is not None:
            blocked = padding[:, None, None, :] & ~torch.eye(count, dtype=torch.bool, device=device)
        if self.attention_span:
            offsets = torch.arange(count, device=device)
            far = (offsets[None, :] - offsets[:, None]).abs() > self.attention_span
            blocked = far if blocked is None else blocked | far
        return blocked

    def forward(self, positions: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, width] -> [B, T, width]; `padding` [B, T], True where a row has no position."""
        blocked = self.blocked(positions.shape[1], padding, positions.device)
        for layer in self.stack:
            positions = layer(positions, blocked)
        return positions

    def tensors(self) -> dict[str, torch.Tensor]:
        """What a head file holds of them (beside the head's own tensors)."""
        return {LAYERS_PREFIX + name: value.detach().contiguous() for name, value in self.state_dict().items()}

    def metadata(self) -> dict[str, str]:
        span = {CTC_ATTENTION_SPAN_KEY: str(self.attention_span)} if self.attention_span else {}
        return {CTC_ATTENTION_HEADS_KEY: str(self.attention_heads)} | span


def read_ctc_layers(stored: Any, path: Path, width: int, dropout: float = 0.0) -> CtcLayers | None:
    """A head file's layers (`stored`: the open safetensors file), checked against the names and
    shapes `CtcLayers` gives them; None where it has none. `dropout`: where they go on training."""
    names = sorted(name for name in stored.keys() if name.startswith(LAYERS_PREFIX))
    if not names:
        return None
    indices = {int(match.group(1)) for name in names if (match := LAYER_NAME.match(name))}
    metadata = stored.metadata() or {}
    heads = metadata.get(CTC_ATTENTION_HEADS_KEY, "")
    span = metadata.get(CTC_ATTENTION_SPAN_KEY, "0")
    if not re.fullmatch(r"[0-9]{1,6}", span) or int(span) > MOST_CTC_ATTENTION_SPAN:
        raise EdgelalmError(
            f"{path}: {CTC_ATTENTION_SPAN_KEY} in its metadata must be a count of positions from 0 (the whole "
            f"window) to {MOST_CTC_ATTENTION_SPAN}; found {span[:40]!r}"
        )
    feed_forward = f"{LAYERS_PREFIX}stack.0.feed_forward_up.weight"
    if not re.fullmatch(r"[0-9]{1,2}", heads) or not 0 < int(heads) <= MOST_CTC_LAYERS or width % int(heads):
        raise EdgelalmError(
            f"{path}: a head with layers names their attention heads in its metadata ({CTC_ATTENTION_HEADS_KEY}: "
            f"a count that divides the width {width}); found {repr(heads[:40]) if heads else 'none'}"
        )
    counted = bool(indices) and indices == set(range(len(indices))) and len(indices) <= MOST_CTC_LAYERS
    if not counted or feed_forward not in names:
        raise EdgelalmError(f"{path}: its layer tensors are not {LAYERS_PREFIX}stack.0.* to .N.*")
    # The feed-forward width as stored (so the layers built here are no larger than the file).
    feed_forward_shape = stored.get_slice(feed_forward).get_shape()
    if len(feed_forward_shape) != 2 or feed_forward_shape[1] != width or feed_forward_shape[0] < 1:
        raise EdgelalmError(f"{path}: {feed_forward} must be [feed-forward width, {width}]")
    shape = (width, len(indices), int(heads), feed_forward_shape[0])
    with torch.device("meta"):  # names and shapes only: nothing is allocated before they match the file
        expected = CtcLayers(*shape).tensors()
    if names != sorted(expected):
        unknown = sorted(set(names) - set(expected)) or sorted(set(expected) - set(names))
        raise EdgelalmError(f"{path}: its layers' tensors are not a CTC head's (first odd one: {unknown[0]})")
    for name, like in expected.items():
        if stored.get_slice(name).get_shape() != list(like.shape):
            raise EdgelalmError(f"{path}: {name} must be of shape {list(like.shape)}")
    loaded = {}
    for name in expected:
        value = stored.get_tensor(name)
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise EdgelalmError(f"{path}: {name} must hold finite numbers")
        loaded[name[len(LAYERS_PREFIX) :]] = value.float()
    layers = CtcLayers(*shape, dropout, int(span))
    layers.load_state_dict(loaded)
    return layers.eval()


class CtcHead(nn.Module):
    """[N, hidden] -> [N, 1 + vocab]: the head's layers over all N positions (if it has any), then
    scaled cosine similarity to the blank and each token, as TokenCtc.log_probs computes it."""

    def __init__(
        self,
        blank: torch.Tensor,
        log_scale: torch.Tensor,
        embeddings: torch.Tensor,
        transform: torch.Tensor | None = None,
        layers: CtcLayers | None = None,
    ) -> None:
        super().__init__()
        vocabulary = nn.functional.normalize(torch.cat([blank[None], embeddings]).float(), dim=-1)
        self.register_buffer("scaled_vocabulary", vocabulary * log_scale.float().exp())
        self.register_buffer("transform", None if transform is None else transform.float())
        self.layers = layers

    def forward(self, audio_embeddings: torch.Tensor) -> torch.Tensor:
        if self.layers is not None:
            audio_embeddings = self.layers(audio_embeddings[None])[0]
        if self.transform is not None:
            audio_embeddings = audio_embeddings + audio_embeddings @ self.transform.T
        directions = nn.functional.normalize(audio_embeddings, dim=-1)
        return (directions @ self.scaled_vocabulary.T).log_softmax(-1)


class FramesCtcHead(nn.Module):
    """[L, audio_width] encoder frames -> the projector -> a checkpoint's head: the head over the
    audio before any compressor, as it was trained (on uncompressed embeddings)."""

    def __init__(self, projector: nn.Module, head: CtcHead) -> None:
        super().__init__()
        if head.transform is not None:
            raise EdgelalmError(
                f"the checkpoint's {CTC_HEAD_FILE} is realigned to a compressor (it has a transform): it reads that "
                "compressor's audio tokens, not the encoder's frames; export it with --ctc-reads audio-tokens"
            )
        self.projector = projector
        self.head = head

    @property
    def scaled_vocabulary(self) -> torch.Tensor:
        return self.head.scaled_vocabulary

    def forward(self, audio_frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.projector(audio_frames))


def ctc_input_name(head: CtcHead | FramesCtcHead) -> str:
    """The graph input a head reads: the encoder's frames, or the compressor's audio tokens."""
    return CTC_FRAMES_INPUT if isinstance(head, FramesCtcHead) else CTC_INPUT


def has_ctc_head(folder: Path) -> bool:
    """Whether a checkpoint or adapter folder holds a CTC head."""
    return (folder / CTC_HEAD_FILE).is_file()


def ctc_head_folder(checkpoint_dir: Path, adapter_dir: Path | None) -> Path | None:
    """Where a bundle's head comes from: the adapter's (realigned to its compressor), else the
    checkpoint's (trained on uncompressed embeddings), else none."""
    for folder in (adapter_dir, checkpoint_dir):
        if folder is not None and has_ctc_head(folder):
            return folder
    return None


def head_realigned_to(folder: Path) -> str | None:
    """The compressor a head was realigned to (its file's metadata, as finetune writes it)."""
    with safetensors_file(folder / CTC_HEAD_FILE) as stored:
        return (stored.metadata() or {}).get(REALIGNED_TO_KEY)


@dataclass
class HeadTensors:
    """What a head file holds, checked: the head's own tensors, a realigned head's map, its layers."""

    blank: torch.Tensor
    log_scale: torch.Tensor
    transform: torch.Tensor | None
    layers: CtcLayers | None


def read_ctc_head(path: Path, hidden: int, layers_dropout: float = 0.0) -> HeadTensors:
    """A head file (CTC_HEAD_FILE, or a training run's) for a decoder `hidden` wide, every tensor
    checked before any is used: export builds its graph from it, training goes on from it."""
    with safetensors_file(path) as stored:
        names = {name for name in stored.keys() if not name.startswith(LAYERS_PREFIX)}
        if not set(HEAD_TENSORS) <= names <= {*HEAD_TENSORS, REALIGNED_HEAD_TENSOR}:
            raise EdgelalmError(
                f"{path}: a CTC head holds the tensors {', '.join(HEAD_TENSORS)} (and {REALIGNED_HEAD_TENSOR} if "
                f"realigned to a compressor, {LAYERS_PREFIX}* if it has layers of its own); found "
                f"{', '.join(sorted(names)) or 'none'}"
            )
        own = [*HEAD_TENSORS, *([REALIGNED_HEAD_TENSOR] if REALIGNED_HEAD_TENSOR in names else [])]
        shapes = [stored.get_slice(name).get_shape() for name in own]  # before anything is read
        if shapes != [[hidden], [], [hidden, hidden]][: len(own)]:
            raise EdgelalmError(
                f"{path}: blank must be [{hidden}] (the decoder's width), log_scale a scalar and "
                f"{REALIGNED_HEAD_TENSOR} [{hidden}, {hidden}]; got {', '.join(str(shape) for shape in shapes)}"
            )
        blank, log_scale = (stored.get_tensor(name).float() for name in HEAD_TENSORS)
        transform = stored.get_tensor(REALIGNED_HEAD_TENSOR).float() if REALIGNED_HEAD_TENSOR in names else None
        layers = read_ctc_layers(stored, path, hidden, layers_dropout)
    finite = torch.isfinite(blank).all() and torch.isfinite(log_scale)
    if not finite or log_scale > 20 or (transform is not None and not torch.isfinite(transform).all()):
        raise EdgelalmError(f"{path}: the head's values must be finite (and log_scale at most 20)")
    return HeadTensors(blank, log_scale, transform, layers)


def load_ctc_head(folder: Path, embeddings: torch.Tensor) -> CtcHead:
    """A checkpoint's or adapter's head over the decoder's input embeddings [vocab, hidden], checked."""
    read = read_ctc_head(folder / CTC_HEAD_FILE, embeddings.shape[1])
    return CtcHead(read.blank, read.log_scale, embeddings, read.transform, read.layers).eval()


def export_ctc_onnx(head: CtcHead | FramesCtcHead, input_width: int, path: Path) -> None:
    """The position count dynamic, as the encoder's and the compressor's outputs are;
    `input_width`: the encoder's (a head over frames) or the decoder's (over audio tokens)."""
    export_rows_graph(head, torch.randn(12, input_width), ctc_input_name(head), CTC_OUTPUT, path)
