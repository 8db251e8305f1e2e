"""The compressor stage at run time: compressor.onnx (compressor + projector). Torch-free.

Reads what `edgelalm.export.compressor` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelalm.constants import COMPRESSOR_INPUT, COMPRESSOR_OUTPUT
from edgelalm.runtime.encoder import onnx_session, run_graph


class CompressorProjector:
    def __init__(self, path: Path, providers: list[str], threads: int | None = None, cpu_arena: bool = False) -> None:
        self.path = path
        self.session = onnx_session(
            path, providers, threads, cpu_arena, inputs=(COMPRESSOR_INPUT,), output=COMPRESSOR_OUTPUT
        )

    def __call__(self, audio_frames: np.ndarray) -> np.ndarray:
        """Audio embeddings [N, hidden] in the decoder's input space."""
        return run_graph(self.session, {COMPRESSOR_INPUT: audio_frames}, self.path)
