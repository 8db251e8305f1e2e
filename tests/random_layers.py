"""Random CTC head layers for tests: a new stack's outputs start at zero (the identity), which
would test nothing, so every tensor is drawn."""

import torch

from edgelalm.export.ctc import CtcLayers


def randomised(layers: CtcLayers, generator: torch.Generator, scale: float) -> CtcLayers:
    """`layers` with every tensor drawn from `generator` (scale x normal; the LayerNorm weights and
    every bias around their initial values), in place, in eval mode."""
    for values in layers.parameters():
        values.data = scale * torch.randn(values.shape, generator=generator) + (values.data if values.ndim == 1 else 0)
    return layers.eval()
