"""A checkpoint's CTC head as an ONNX graph: audio embeddings [N, hidden] -> log-probabilities
[N, 1 + vocab] of a blank and each decoder token.

The head is the one `edgelalm.training.train.TokenCtc` trains beside the decoder: each audio
embedding's cosine similarity to the blank vector and to every row of the decoder's input
embeddings, times a learned scale, then a log-softmax. The checkpoint keeps only its two own
parameters (CTC_HEAD_FILE: `blank` [hidden], `log_scale` []); the vocabulary is the decoder's
embedding table, read from the checkpoint here and stored in the graph already normalised and
scaled. The runtime reads what this module writes in `edgelalm.runtime.ctc`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgelalm.constants import CTC_HEAD_FILE, CTC_INPUT, CTC_OUTPUT
from edgelalm.errors import EdgelalmError
from edgelalm.export.compressor import export_rows_graph
from edgelalm.files import safetensors_file

# The head's own tensors in CTC_HEAD_FILE.
HEAD_TENSORS = ("blank", "log_scale")


class CtcHead(nn.Module):
    """[N, hidden] -> [N, 1 + vocab]: scaled cosine similarity to the blank and each token, as
    TokenCtc.log_probs computes it."""

    def __init__(self, blank: torch.Tensor, log_scale: torch.Tensor, embeddings: torch.Tensor) -> None:
        super().__init__()
        vocabulary = nn.functional.normalize(torch.cat([blank[None], embeddings]).float(), dim=-1)
        self.register_buffer("scaled_vocabulary", vocabulary * log_scale.float().exp())

    def forward(self, audio_embeddings: torch.Tensor) -> torch.Tensor:
        directions = nn.functional.normalize(audio_embeddings, dim=-1)
        return (directions @ self.scaled_vocabulary.T).log_softmax(-1)


def has_ctc_head(checkpoint_dir: Path) -> bool:
    return (checkpoint_dir / CTC_HEAD_FILE).is_file()


def load_ctc_head(checkpoint_dir: Path, embeddings: torch.Tensor) -> CtcHead:
    """The checkpoint's head over its decoder's input embeddings [vocab, hidden], checked."""
    path = checkpoint_dir / CTC_HEAD_FILE
    with safetensors_file(path) as stored:
        names = set(stored.keys())
        if names != set(HEAD_TENSORS):
            raise EdgelalmError(
                f"{path}: a CTC head holds the tensors {', '.join(HEAD_TENSORS)}; found {', '.join(sorted(names))}"
            )
        blank, log_scale = (stored.get_tensor(name).float() for name in HEAD_TENSORS)
    hidden = embeddings.shape[1]
    if blank.shape != (hidden,) or log_scale.shape != ():
        raise EdgelalmError(
            f"{path}: blank must be [{hidden}] (the decoder's width) and log_scale a scalar; "
            f"got {list(blank.shape)} and {list(log_scale.shape)}"
        )
    if not (torch.isfinite(blank).all() and torch.isfinite(log_scale)) or log_scale > 20:
        raise EdgelalmError(f"{path}: the head's values must be finite (and log_scale at most 20)")
    return CtcHead(blank, log_scale, embeddings).eval()


def export_ctc_onnx(head: CtcHead, hidden_size: int, path: Path) -> None:
    """The position count dynamic, as the compressor's output is."""
    export_rows_graph(head, torch.randn(12, hidden_size), CTC_INPUT, CTC_OUTPUT, path)
