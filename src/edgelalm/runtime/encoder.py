"""The encoder stage at run time: encoder.onnx on one window's own mel frames. Torch-free.

Reads what `edgelalm.export.encoder` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelalm.constants import ENCODER_INPUT, ENCODER_OUTPUT, ENCODER_RIGHT_CONTEXT_INPUT
from edgelalm.runtime.features import WindowFeatures
from edgelalm.runtime.onnx_backend import onnx_session, release_freed_heap, run_graph

ENCODER_INPUTS = (ENCODER_INPUT, ENCODER_RIGHT_CONTEXT_INPUT)


class AudioEncoder:
    def __init__(self, path: Path, providers: list[str], threads: int | None = None, cpu_arena: bool = False) -> None:
        """`cpu_arena`: keep the arena's memory for the session's life, not only for each run."""
        self.path = path
        self.session = onnx_session(
            path, providers, threads, cpu_arena=True, inputs=ENCODER_INPUTS, output=ENCODER_OUTPUT
        )
        # The encoder's activations come from onnxruntime's arena, handed back at the end of each
        # run. The export's graph has no intermediate shapes, so onnxruntime frees each activation
        # after its last reader instead of holding a planned buffer per symbolic size for the whole
        # run (edgelalm.export.encoder). Freed and allocated again hundreds of times a window, they
        # fragment glibc's heap (a 29 s window of `small` peaked 100-280 MB above the session); the
        # arena reuses them in place: about 43 MB (int8 encoder) against 113 MB before (README,
        # "Encoder speed and memory").
        self.shrink_arena = not cpu_arena

    def __call__(self, features: WindowFeatures) -> np.ndarray:
        """Encoder frames [L, D] at 25 per second."""
        feeds = {ENCODER_INPUT: features.mel, ENCODER_RIGHT_CONTEXT_INPUT: features.right_context}
        try:
            return run_graph(self.session, feeds, self.path, self.shrink_arena)
        finally:
            release_freed_heap()
