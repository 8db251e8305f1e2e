"""The compressor stage at run time: compressor.onnx (compressor + projector). Torch-free.

Reads what `edgelalm.export.compressor` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelalm.constants import COMPRESSOR_INPUT
from edgelalm.runtime.encoder import onnx_session


class CompressorProjector:
    def __init__(self, path: Path, providers: list[str], threads: int | None = None, cpu_arena: bool = False) -> None:
        self.session = onnx_session(path, providers, threads, cpu_arena)

    def __call__(self, audio_frames: np.ndarray) -> np.ndarray:
        """Audio embeddings [N, hidden] in the decoder's input space."""
        return self.session.run(None, {COMPRESSOR_INPUT: audio_frames})[0]
