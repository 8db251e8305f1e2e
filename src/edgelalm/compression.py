"""Which compressor sits between the audio encoder and the projector, and what it costs.

Torch-free: the exporter, the runtime and the manifest all describe a compressor with
`CompressorSpec`. The computations themselves (paper section IV) live in
`edgelalm.export.compressor` (PyTorch, traced to ONNX) and run from ONNX at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

from edgelalm.constants import COMPRESSOR_NAMES, ENCODER_FRAMES_PER_SECOND, CompressorName
from edgelalm.errors import EdgelalmError

COMPRESSOR_DESCRIPTIONS: dict[CompressorName, str] = {
    "none": "identity: every encoder frame becomes an audio token (25 tokens/s)",
    "avg": "uniform average pooling, kernel K stride K (25/K tokens/s)",
    "sample": "uniform sampling: keep frames 0, K, 2K, ... (25/K tokens/s)",
    "unseg": "unsupervised segmentation: average frames between peaks of 1 - cos(z_t, z_t+1) (variable rate)",
    "mean": "global mean: one token per clip",
    "max": "global max: one token per clip",
}
FACTOR_COMPRESSORS = ("avg", "sample")
# Past a full 30 s window's 750 encoder frames every clip is one token; far past it, torch's
# pooling overflows (K = 10^20 failed in the exporter after 25 s, a traceback).
MAX_FACTOR = 1000


@dataclass(frozen=True)
class CompressorSpec:
    """A compressor and its factor K (1 for the compressors that take none)."""

    name: CompressorName
    factor: int = 1

    def __post_init__(self) -> None:
        if self.name not in COMPRESSOR_DESCRIPTIONS:
            raise EdgelalmError(f"unknown compressor {self.name!r}; choose one of {', '.join(COMPRESSOR_NAMES)}")
        if not 1 <= self.factor <= MAX_FACTOR:
            raise EdgelalmError(
                f"the compression factor K must be an integer from 1 to {MAX_FACTOR}, got {self.factor}"
            )
        if self.name not in FACTOR_COMPRESSORS and self.factor != 1:
            raise EdgelalmError(f"a factor applies to {' and '.join(FACTOR_COMPRESSORS)} only, not to {self.name!r}")

    @classmethod
    def from_label(cls, label: str, factor: int | None = None) -> CompressorSpec:
        """'avg3' -> avg K=3; 'avg' -> avg with `factor` (default 2); 'unseg', 'none' as they are."""
        match = re.fullmatch(r"([a-z]+)(\d+)?", label.strip())
        name = match.group(1) if match else label
        if not match or name not in COMPRESSOR_DESCRIPTIONS:
            raise EdgelalmError(
                f"compressor {label!r} is not one of {', '.join(COMPRESSOR_NAMES)} "
                f"({' and '.join(FACTOR_COMPRESSORS)} take a factor: avg3, sample2)"
            )
        digits = match.group(2)
        if digits and factor is not None and int(digits) != factor:
            raise EdgelalmError(f"compressor {label!r} says K={int(digits)} but the factor given is {factor}")
        if digits:
            return cls(cast(CompressorName, name), int(digits))
        if factor is None:
            factor = 2 if name in FACTOR_COMPRESSORS else 1
        return cls(cast(CompressorName, name), factor)

    @property
    def label(self) -> str:
        """Short name for folders and tables: avg3, sample3, unseg."""
        return f"{self.name}{self.factor}" if self.name in FACTOR_COMPRESSORS else self.name

    @property
    def audio_tokens_per_second(self) -> float | None:
        """Nominal token rate; None where it depends on the audio (unseg, mean, max)."""
        if self.name == "none":
            return ENCODER_FRAMES_PER_SECOND
        if self.name in FACTOR_COMPRESSORS:
            return ENCODER_FRAMES_PER_SECOND / self.factor
        return None

    def max_audio_tokens(self, encoder_frames: int) -> int:
        """Upper bound on the tokens this compressor emits for `encoder_frames` frames."""
        if encoder_frames <= 0:
            return 0
        if self.name in FACTOR_COMPRESSORS:
            return -(-encoder_frames // self.factor)  # the ragged tail makes one more token
        if self.name in ("mean", "max"):
            return 1
        return encoder_frames  # none; unseg emits at most one token per frame
