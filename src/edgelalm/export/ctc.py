"""A checkpoint's CTC head as an ONNX graph: audio embeddings [N, hidden] -> log-probabilities
[N, 1 + vocab] of a blank and each decoder token.

The head is the one `edgelalm.training.train.TokenCtc` trains beside the decoder: each audio
embedding's cosine similarity to the blank vector and to every row of the decoder's input
embeddings, times a learned scale, then a log-softmax. A head file (CTC_HEAD_FILE) keeps only the
head's own parameters: `blank` [hidden] and `log_scale` [], and in a head realigned to a compressor
(an adapter folder's, written by `finetune`) `transform` [hidden, hidden], a residual linear map
applied to each audio embedding first (x + x @ transform.T): an average of three frames is no
longer close to one token's embedding, and the map learns to read it. The vocabulary is the
decoder's embedding table, read from the checkpoint here and stored in the graph already
normalised and scaled. By default (CtcReads "frames") the graph reads the encoder's frames and
holds the projector before the head (`FramesCtcHead`): the decoder reads a compressor's tokens,
and the joint score reads the audio at its full rate, the head as it was trained, whatever the
compressor. The runtime reads what this module writes in `edgelalm.runtime.ctc`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgelalm.constants import CTC_FRAMES_INPUT, CTC_HEAD_FILE, CTC_INPUT, CTC_OUTPUT, REALIGNED_TO_KEY
from edgelalm.errors import EdgelalmError
from edgelalm.export.compressor import export_rows_graph
from edgelalm.files import safetensors_file

# The head's own tensors in CTC_HEAD_FILE, and the one a head realigned to a compressor adds.
HEAD_TENSORS = ("blank", "log_scale")
REALIGNED_HEAD_TENSOR = "transform"


class CtcHead(nn.Module):
    """[N, hidden] -> [N, 1 + vocab]: scaled cosine similarity to the blank and each token, as
    TokenCtc.log_probs computes it."""

    def __init__(
        self,
        blank: torch.Tensor,
        log_scale: torch.Tensor,
        embeddings: torch.Tensor,
        transform: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        vocabulary = nn.functional.normalize(torch.cat([blank[None], embeddings]).float(), dim=-1)
        self.register_buffer("scaled_vocabulary", vocabulary * log_scale.float().exp())
        self.register_buffer("transform", None if transform is None else transform.float())

    def forward(self, audio_embeddings: torch.Tensor) -> torch.Tensor:
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


def load_ctc_head(folder: Path, embeddings: torch.Tensor) -> CtcHead:
    """A checkpoint's or adapter's head over the decoder's input embeddings [vocab, hidden], checked."""
    path = folder / CTC_HEAD_FILE
    with safetensors_file(path) as stored:
        names = set(stored.keys())
        if not set(HEAD_TENSORS) <= names <= {*HEAD_TENSORS, REALIGNED_HEAD_TENSOR}:
            raise EdgelalmError(
                f"{path}: a CTC head holds the tensors {', '.join(HEAD_TENSORS)} (and {REALIGNED_HEAD_TENSOR} if "
                f"realigned to a compressor); found {', '.join(sorted(names)) or 'none'}"
            )
        blank, log_scale = (stored.get_tensor(name).float() for name in HEAD_TENSORS)
        transform = stored.get_tensor(REALIGNED_HEAD_TENSOR).float() if REALIGNED_HEAD_TENSOR in names else None
    hidden = embeddings.shape[1]
    shapes = [blank.shape, log_scale.shape] + ([transform.shape] if transform is not None else [])
    if shapes != [(hidden,), ()] + ([(hidden, hidden)] if transform is not None else []):
        raise EdgelalmError(
            f"{path}: blank must be [{hidden}] (the decoder's width), log_scale a scalar and {REALIGNED_HEAD_TENSOR} "
            f"[{hidden}, {hidden}]; got {', '.join(str(list(shape)) for shape in shapes)}"
        )
    finite = torch.isfinite(blank).all() and torch.isfinite(log_scale)
    if not finite or log_scale > 20 or (transform is not None and not torch.isfinite(transform).all()):
        raise EdgelalmError(f"{path}: the head's values must be finite (and log_scale at most 20)")
    return CtcHead(blank, log_scale, embeddings, transform).eval()


def export_ctc_onnx(head: CtcHead | FramesCtcHead, input_width: int, path: Path) -> None:
    """The position count dynamic, as the encoder's and the compressor's outputs are;
    `input_width`: the encoder's (a head over frames) or the decoder's (over audio tokens)."""
    export_rows_graph(head, torch.randn(12, input_width), ctc_input_name(head), CTC_OUTPUT, path)
