"""The host runtime: a bundle's graphs in onnxruntime, its decoder in llama.cpp (no torch).

`Runtime` and `RunResult` load lazily, so the CLI's lighter modules (llama_backend) can be
imported without onnxruntime and llama.cpp."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["RunResult", "Runtime"]

if TYPE_CHECKING:
    from edgelalm.runtime.pipeline import RunResult, Runtime


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgelalm.runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'edgelalm.runtime' has no attribute {name!r}")
