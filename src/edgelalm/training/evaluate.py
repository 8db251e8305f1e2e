"""Word error rate of a model on paired audio/text: in PyTorch, or through an exported bundle.

WER = (substitutions + deletions + insertions) / reference words, summed over the set, after
`normalize_transcript` on both sides (lowercase, numbers as words, no punctuation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgelalm.constants import ENDOFTEXT, WindowMode
from edgelalm.training.texts import normalize_transcript

if TYPE_CHECKING:
    from edgelalm.training.model import PromptIds

# Enough for three requests in one clip (the default model's longest held-out answers, ~60 tokens).
MAX_ANSWER_TOKENS = 128


def word_errors(reference: str, hypothesis: str) -> int:
    """Levenshtein distance between the two word sequences."""
    ref, hyp = reference.split(), hypothesis.split()
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class WerResult:
    errors: int
    words: int
    audio_tokens: int  # summed over the set
    audio_seconds: float
    hypotheses: tuple[str, ...]

    @property
    def wer(self) -> float:
        return self.errors / max(1, self.words)

    @property
    def audio_tokens_per_second(self) -> float:
        return self.audio_tokens / self.audio_seconds


def score(references: Sequence[str], hypotheses: Sequence[str], audio_tokens: int, audio_seconds: float) -> WerResult:
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    errors = sum(word_errors(r, h) for r, h in zip(refs, hyps, strict=True))
    return WerResult(errors, sum(len(r.split()) for r in refs), audio_tokens, audio_seconds, tuple(hyps))


def transcribe_torch(
    model,
    processor,
    prompt: PromptIds,
    compressor,
    clips: Iterable[np.ndarray],
    max_new_tokens: int = MAX_ANSWER_TOKENS,
    windows: WindowMode = "joined",
    window_seconds: float | None = None,
    beam_size: int = 1,
    ctc_weight: float = 0.0,
    ctc_head: Callable | None = None,
    ctc_reads_frames: bool = False,
) -> tuple[list[str], int]:
    """Transcripts from the PyTorch model with `compressor` in place, prompted with `prompt` (the
    bundle's: `PromptIds.for_checkpoint`); returns them and the total number of audio tokens. A
    clip longer than the encoder's window is cut into windows as the runtime cuts it (`windows`:
    their embeddings joined into one audio span, or each window, cut at a pause, answered on its
    own and the answers joined; `window_seconds`: shorter windows). Greedy, or the runtime's beam
    search (`beam_size`), joint with `ctc_head` (the checkpoint's,
    `edgelalm.export.ctc.load_ctc_head`) where `ctc_weight` > 0: over the projected encoder frames
    where `ctc_reads_frames` (a bundle's head by default), else over the compressor's embeddings."""
    import torch

    from edgelalm.runtime.features import FeatureSettings, split_windows, usable_window
    from edgelalm.training.model import (
        compress_and_project,
        encode_batch,
        greedy_answer,
        log_mel_batch,
        search_answer,
    )

    tokenizer = processor.tokenizer
    features = processor.feature_extractor
    window_samples = features.n_samples if window_seconds is None else round(window_seconds * features.sampling_rate)
    settings = FeatureSettings(
        features.sampling_rate, features.n_fft, features.hop_length, window_samples, features.mel_filters
    )
    end_ids = [prompt.end_of_answer, tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    texts, audio_tokens = [], 0

    def embedded(window: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's audio embeddings, and what the CTC head reads of it."""
        mel, mel_lengths = log_mel_batch([window], features)
        encoded = encode_batch(model.model.audio_tower, mel, mel_lengths)
        audio = compress_and_project(model, compressor, encoded)[0]
        return audio, compress_and_project(model, torch.nn.Identity(), encoded)[0] if ctc_reads_frames else audio

    def answer(audio: torch.Tensor, ctc_audio: list[torch.Tensor]) -> str:
        """`ctc_audio`: what the CTC head reads, window by window (as the runtime runs it)."""
        if beam_size > 1 or ctc_weight > 0:
            scores = None
            if ctc_weight > 0:
                assert ctc_head is not None
                scores = torch.cat([ctc_head(window) for window in ctc_audio]).double().numpy()
            tokens = search_answer(model, prompt, audio, end_ids, max_new_tokens, beam_size, scores, ctc_weight)
        else:
            tokens = greedy_answer(model, prompt, audio, end_ids, max_new_tokens)
        return tokenizer.decode(tokens, skip_special_tokens=True)

    with torch.no_grad():
        for clip in clips:
            cut = split_windows(clip, settings, cut_at_pauses=windows == "each")
            usable = [embedded(window) for window in cut if usable_window(len(window), settings)]
            audio_tokens += sum(audio.shape[0] for audio, _ in usable)
            if windows == "each":
                answers = (answer(audio, [ctc_audio]).strip() for audio, ctc_audio in usable)
                texts.append(" ".join(text for text in answers if text))
            else:
                texts.append(answer(torch.cat([a for a, _ in usable]), [c for _, c in usable]))
    return texts, audio_tokens


def transcribe_bundle(
    bundle: Path,
    clips: Iterable[np.ndarray],
    sampling_rate: int,
    threads: int | None = None,
    compressor: str | None = None,
    max_new_tokens: int = MAX_ANSWER_TOKENS,
    windows: WindowMode = "joined",
    window_seconds: float | None = None,
    beam_size: int | None = None,
    ctc_weight: float | None = None,
) -> tuple[list[str], int]:
    """Transcripts through the torch-free runtime (onnxruntime + llama.cpp), cut into windows as
    `transcribe_torch` cuts them; `compressor`: the entry of a bundle of several (its adapter
    applied at run time); `beam_size`, `ctc_weight`: as `run` takes them (None: the bundle's advice)."""
    from edgelalm.runtime.pipeline import Runtime

    texts, audio_tokens = [], 0
    with Runtime(bundle, threads=threads) as runtime:
        if windows == "each" and window_seconds is None:
            # The encoder's own window, as transcribe_torch cuts, not the shorter one a bundle may
            # advise `run` to use (the default model's: 8 s).
            window_seconds = runtime.features.window_seconds
        for clip in clips:
            result = runtime.run(
                clip,
                sampling_rate=sampling_rate,
                max_tokens=max_new_tokens,
                compressor=compressor,
                windows=windows,
                window_seconds=window_seconds,
                beam_size=beam_size,
                ctc_weight=ctc_weight,
            )
            texts.append(result.text)
            audio_tokens += result.audio_tokens
    return texts, audio_tokens
