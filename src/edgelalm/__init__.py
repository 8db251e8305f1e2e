"""edgelalm: compressed audio language models on edge devices.

The data path, one module per stage:
audio -> features -> encoder -> compressor -> projector -> decoder -> text.
`edgelalm.export` writes each stage's artifact into a bundle; `edgelalm.runtime` reads it back.

    from edgelalm import Runtime
    with Runtime("export/my-bundle") as runtime:
        print(runtime.run("clip.wav").text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgelalm.errors import EdgelalmError

__version__ = "0.1.0"  # pyproject.toml reads it from here
__all__ = ["EdgelalmError", "RunResult", "Runtime", "TimedText", "__version__"]

if TYPE_CHECKING:
    from edgelalm.runtime.pipeline import RunResult, Runtime
    from edgelalm.runtime.subtitles import TimedText


def __getattr__(name: str) -> Any:
    # Lazy: `import edgelalm` (and every CLI command) must not load onnxruntime and llama.cpp.
    if name in ("Runtime", "RunResult"):
        from edgelalm.runtime import pipeline

        return getattr(pipeline, name)
    if name == "TimedText":
        from edgelalm.runtime.subtitles import TimedText

        return TimedText
    raise AttributeError(f"module 'edgelalm' has no attribute {name!r}")
