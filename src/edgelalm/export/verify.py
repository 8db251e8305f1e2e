"""The export's checks: the encoder and compressor graphs against PyTorch on a probe clip, and the
decoder GGUF in llama.cpp (its tokenizer against the checkpoint's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgelalm.constants import (
    COMPRESSOR_FILE,
    COMPRESSOR_INPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_RIGHT_CONTEXT_INPUT,
    RIGHT_CONTEXT_FRAMES,
)
from edgelalm.errors import EdgelalmError
from edgelalm.export.checkpoint import Checkpoint
from edgelalm.export.compressor import CompressorProjector, UnsupervisedSegmentation, cosine_dissimilarity
from edgelalm.export.ctc import CtcHead, FramesCtcHead, ctc_input_name
from edgelalm.export.encoder import ClipLengthAudioEncoder, EncoderPrecision
from edgelalm.manifest import PromptInfo

PROBE_SECONDS = 5.0


def check_decoder(checkpoint: Checkpoint, gguf_path: Path, prompt: PromptInfo) -> dict[str, int]:
    """llama.cpp loads the GGUF and tokenizes the prompt template as the checkpoint does (in this
    process: loading and tokenizing run no matrix kernels; the decode canary runs those in a child)."""
    from edgelalm.runtime.decoder import LlamaDecoder

    tokenizer = checkpoint.processor.tokenizer
    with LlamaDecoder(gguf_path, n_ctx=64) as decoder:
        for text in (prompt.before_audio, prompt.after_audio + prompt.default_prompt + prompt.after_prompt):
            expected = tokenizer(text, add_special_tokens=False).input_ids
            if decoder.tokenize(text) != expected:
                raise EdgelalmError(f"llama.cpp tokenizes {text!r} differently from the checkpoint's tokenizer")
        return {"n_vocab": decoder.n_vocab, "n_embd": decoder.n_embd}


def check_adapters(gguf_path: Path, adapter_paths: list[Path]) -> None:
    """llama.cpp's own loader takes each adapter GGUF for this decoder, loaded once (it checks the
    architecture and every factor's shape against the weights; loading runs no matrix kernels)."""
    from edgelalm.runtime.decoder import LlamaModel

    model = LlamaModel(gguf_path)
    try:
        for path in adapter_paths:
            model.load_adapter(path)
    finally:
        model.close()


def probe_features(checkpoint: Checkpoint, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic chirp-plus-noise clip as transformers' feature extractor sees it:
    the clip's mel frames and the two frames that follow it in the padded window."""
    extractor = checkpoint.processor.feature_extractor
    seconds = min(seconds, float(extractor.chunk_length))
    rate = extractor.sampling_rate
    times = np.arange(int(seconds * rate)) / rate
    chirp = 0.3 * np.sin(2 * np.pi * (150 + 400 * times) * times)
    noise = 0.02 * np.random.default_rng(0).standard_normal(times.shape)
    features = extractor(
        (chirp + noise).astype(np.float32),
        sampling_rate=rate,
        return_attention_mask=True,
        padding="max_length",
        return_tensors="np",
    )
    window = features["input_features"][0]
    valid = int(features["attention_mask"][0].sum())
    padded = np.pad(window, ((0, 0), (0, RIGHT_CONTEXT_FRAMES)))
    return window[:, :valid], padded[:, valid : valid + RIGHT_CONTEXT_FRAMES]


# The encoder graph's largest tolerated difference from the fp32 PyTorch tower, as a share of the
# reference's own root-mean-square size. Measured: fp32 about 1e-6, fp16w the same on float16-exact
# weights (the default model's, 9.2e-7), fp16 about 1e-3; int8's dynamic
# quantization about 2-4% on the tiny and default models. A graph that computes something else
# is off by about 1 (or 1.4 for unrelated values of the same size).
ENCODER_RELATIVE_RMS_BOUNDS = {"fp32": 1e-4, "fp16w": 1e-2, "fp16": 2e-2, "int8": 0.25}


def check_encoder(
    checkpoint: Checkpoint, tower: torch.nn.Module, bundle_dir: Path, precision: EncoderPrecision = "fp32"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the encoder graph in onnxruntime and the tower in PyTorch (fp32) on a probe; refuse on
    mismatch. Returns PyTorch's frames (what each compressor graph is checked on) and the probe's
    numbers."""
    import onnx

    from edgelalm.runtime.onnx_backend import onnx_session  # the runtime's own settings (and quiet log)

    onnx.checker.check_model(str(bundle_dir / ENCODER_FILE))
    mel, right_context = probe_features(checkpoint, PROBE_SECONDS)
    with torch.no_grad():
        frames_ref = ClipLengthAudioEncoder(tower)(torch.from_numpy(mel), torch.from_numpy(right_context)).numpy()
    encoder = onnx_session(bundle_dir / ENCODER_FILE, ["CPUExecutionProvider"], threads=None)
    frames = encoder.run(None, {ENCODER_INPUT: mel, ENCODER_RIGHT_CONTEXT_INPUT: right_context})[0]
    if frames.shape != frames_ref.shape:
        raise EdgelalmError(f"the encoder graph disagrees with PyTorch on shapes: {frames.shape} vs {frames_ref.shape}")
    encoder_relative_rms = float(np.sqrt(np.mean((frames - frames_ref) ** 2) / max(np.mean(frames_ref**2), 1e-30)))
    if not encoder_relative_rms <= ENCODER_RELATIVE_RMS_BOUNDS[precision]:
        raise EdgelalmError(
            f"encoder ONNX ({precision}) differs from PyTorch fp32 by {encoder_relative_rms:.1e} of the output's size "
            f"(at most {ENCODER_RELATIVE_RMS_BOUNDS[precision]:g} expected): export is broken"
        )
    return frames_ref, {
        "seconds": mel.shape[1] / 100.0,
        "encoder_frames": int(frames.shape[0]),
        "encoder_max_abs_diff": float(np.abs(frames - frames_ref).max()),
        "encoder_max_abs_value": float(np.abs(frames_ref).max()),
        "encoder_relative_rms_diff": encoder_relative_rms,
    }


# unseg's peak test (d_t above both neighbours) has no margin: where two neighbouring
# dissimilarities are within float rounding of each other, onnxruntime and PyTorch may decide
# differently, which says nothing about the graph (a random-weights 7B tower's frames are that
# alike). Its probe is nudged until no two neighbours are this close.
PEAK_TIE_MARGIN = 1e-5


def peak_margin(frames: np.ndarray) -> float:
    """The smallest gap between neighbouring cosine dissimilarities d_t, unseg's own, in float64."""
    dissimilarity = cosine_dissimilarity(torch.from_numpy(frames.astype(np.float64)))[:-1].numpy()
    return float(np.abs(np.diff(dissimilarity)).min()) if len(dissimilarity) > 1 else float("inf")


def untied_probe(frames: np.ndarray, attempts: int = 20) -> np.ndarray:
    """`frames`, or the first seeded nudge of them (noise at 5% of their spread) whose
    dissimilarities have no near-tie: the frames a variable-rate graph is checked on."""
    rng = np.random.default_rng(0)
    probe = frames
    for _ in range(attempts):
        if peak_margin(probe) > PEAK_TIE_MARGIN:
            break
        noise = rng.standard_normal(frames.shape).astype(np.float32)
        probe = frames + 0.05 * float(frames.std()) * noise
    return probe


def check_compressor(
    frames: np.ndarray, compressor: CompressorProjector, bundle_dir: Path, compressor_file: str = COMPRESSOR_FILE
) -> dict[str, Any]:
    """Run one compressor + projector graph in onnxruntime and in PyTorch on the probe's encoder
    frames (for unseg, frames without near-ties); refuse on mismatch."""
    if isinstance(compressor.compressor, UnsupervisedSegmentation):
        frames = untied_probe(frames)
    embeddings, embeddings_ref = _graph_and_module(bundle_dir / compressor_file, COMPRESSOR_INPUT, frames, compressor)
    compressor_diff = float(np.abs(embeddings - embeddings_ref).max())
    scale = max(1.0, float(np.abs(embeddings_ref).max()))
    if compressor_diff > 1e-4 * scale:
        raise EdgelalmError(f"{compressor_file} differs from PyTorch by {compressor_diff:.2e}: export is broken")
    return {"audio_tokens": int(embeddings.shape[0]), "compressor_max_abs_diff": compressor_diff}


def check_ctc(
    frames: np.ndarray, compressor: CompressorProjector | None, head: CtcHead | FramesCtcHead, graph: Path
) -> float:
    """A CTC head's graph in onnxruntime against PyTorch on the probe's audio: its encoder frames
    (`compressor` None), or their audio embeddings through `compressor`, the one it reads; refuse
    on mismatch. Returns the largest difference of a log-probability."""
    if compressor is None:
        rows = frames
    else:
        with torch.no_grad():
            rows = compressor(torch.from_numpy(frames)).numpy()
    log_probs, expected = _graph_and_module(graph, ctc_input_name(head), rows, head)
    # Log-probabilities: an absolute bound, scaled by the head's largest logit (its scale).
    difference = float(np.abs(log_probs - expected).max())
    if difference > 1e-4 * max(1.0, float(head.scaled_vocabulary.norm(dim=-1).max())):
        raise EdgelalmError(f"{graph.name} differs from PyTorch by {difference:.2e}: export is broken")
    return difference


def _graph_and_module(graph: Path, input_name: str, rows: np.ndarray, module: torch.nn.Module):
    """(the graph's output in onnxruntime, the module's in PyTorch) on the same input, the graph
    checked by onnx first and the shapes equal."""
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(graph))
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    got = session.run(None, {input_name: rows})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(rows)).numpy()
    if got.shape != expected.shape:
        raise EdgelalmError(f"{graph.name} disagrees with PyTorch on shapes: {got.shape} vs {expected.shape}")
    return got, expected
