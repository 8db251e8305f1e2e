"""The compressor stage at run time: compressor.onnx (compressor + projector). Torch-free.

Reads what `edgelalm.export.compressor` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelalm.compression import CompressorSpec
from edgelalm.constants import COMPRESSOR_INPUT, COMPRESSOR_OUTPUT
from edgelalm.errors import EdgelalmError
from edgelalm.runtime.onnx_backend import onnx_session, run_graph


class CompressorProjector:
    def __init__(
        self,
        path: Path,
        spec: CompressorSpec,
        providers: list[str],
        threads: int | None = None,
        cpu_arena: bool = False,
    ) -> None:
        self.path = path
        self.spec = spec
        self.session = onnx_session(
            path, providers, threads, cpu_arena, inputs=(COMPRESSOR_INPUT,), output=COMPRESSOR_OUTPUT
        )

    def __call__(self, audio_frames: np.ndarray) -> np.ndarray:
        """Audio embeddings [N, hidden] in the decoder's input space: from 1 to the compressor's
        most tokens for these frames. A graph that gives more (a damaged or foreign file) would
        have the decoder's context grown past its trained length; none would leave it no audio."""
        embeddings = run_graph(self.session, {COMPRESSOR_INPUT: audio_frames}, self.path)
        most = self.spec.max_audio_tokens(audio_frames.shape[0])
        if not 1 <= embeddings.shape[0] <= most:
            raise EdgelalmError(
                f"{self.path} gave {embeddings.shape[0]} audio tokens for {audio_frames.shape[0]} encoder frames; "
                f"{self.spec.label} gives 1 to {most} (is it this bundle's {self.spec.label} graph?)"
            )
        return embeddings
