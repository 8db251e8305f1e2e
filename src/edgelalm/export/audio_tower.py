"""Qwen2-Audio's audio tower, step by step: the one forward that the exported encoder graph
(edgelalm.export.encoder, one clip) and training (edgelalm.training.model, a padded batch) share.

    hidden = convolutions(tower, mel)        # [B, positions, d_model], 50 positions/s
    hidden = transformer(tower, hidden, mask) # + Whisper's positions, the encoder layers
    frames = pooled(tower, hidden)            # stride-2 average pool, final layer norm: 25 frames/s

transformers' Qwen2AudioEncoder.forward does the same on a full, padded window; these steps let
the caller choose the length (the clip's own) and the mask.
"""

from __future__ import annotations

import torch
from torch import nn


def convolutions(tower: nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """mel [B, n_mels, T] -> [B, positions, d_model] after the two GELU convolutions (the second stride 2)."""
    hidden = nn.functional.gelu(tower.conv1(mel))
    return nn.functional.gelu(tower.conv2(hidden)).permute(0, 2, 1)


def transformer(
    tower: nn.Module,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    first_layer: int = 0,
    end_layer: int | None = None,
) -> torch.Tensor:
    """Whisper's fixed positions added, then the encoder layers (`mask`: transformers' attention
    mask or None). `first_layer` / `end_layer`: only layers [first, end), for training data stored
    part of the way up (the positions are added before the first layer only)."""
    if first_layer == 0:
        # narrow, not a slice: a slice may be shorter than asked, and torch 2.11's export then gives
        # every later size a data-dependent symbol (and stops at the first guard on one).
        hidden = hidden + tower.embed_positions.weight.narrow(0, 0, hidden.shape[1])
    for layer in tower.layers[first_layer:end_layer]:
        hidden = layer(hidden, mask)
    return hidden


def pooled(tower: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The tower's output: AvgPool1d(2, 2) over positions, then the final layer norm."""
    return tower.layer_norm(tower.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1))
