"""Word error rate of a model on paired audio/text: in PyTorch, or through an exported bundle.

WER = (substitutions + deletions + insertions) / reference words, summed over the set, after
`normalize_transcript` on both sides (lowercase, numbers as words, no punctuation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelalm.training.texts import normalize_transcript

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
    model, processor, compressor, clips: Iterable[np.ndarray], max_new_tokens: int = MAX_ANSWER_TOKENS
) -> tuple[list[str], int]:
    """Greedy transcripts from the PyTorch model with `compressor` in place (clips within one window);
    returns them and the total number of audio tokens."""
    import torch

    from edgelalm.training.model import PromptIds, compress_and_project, encode_batch, greedy_answer, log_mel_batch

    prompt = PromptIds.from_processor(processor)
    tokenizer = processor.tokenizer
    end_ids = [prompt.end_of_answer, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    texts, audio_tokens = [], 0
    with torch.no_grad():
        for clip in clips:
            mel, mel_lengths = log_mel_batch([clip], processor.feature_extractor)
            audio = compress_and_project(model, compressor, encode_batch(model.model.audio_tower, mel, mel_lengths))[0]
            audio_tokens += audio.shape[0]
            answer = greedy_answer(model, prompt, audio, end_ids, max_new_tokens)
            texts.append(tokenizer.decode(answer, skip_special_tokens=True))
    return texts, audio_tokens


def transcribe_bundle(
    bundle: Path,
    clips: Iterable[np.ndarray],
    sampling_rate: int,
    threads: int | None = None,
    compressor: str | None = None,
    max_new_tokens: int = MAX_ANSWER_TOKENS,
) -> tuple[list[str], int]:
    """Greedy transcripts through the torch-free runtime (onnxruntime + llama.cpp); `compressor`:
    the entry of a bundle of several (its adapter applied at run time)."""
    from edgelalm.runtime.pipeline import Runtime

    texts, audio_tokens = [], 0
    with Runtime(bundle, threads=threads) as runtime:
        for clip in clips:
            result = runtime.run(clip, sampling_rate=sampling_rate, max_tokens=max_new_tokens, compressor=compressor)
            texts.append(result.text)
            audio_tokens += result.audio_tokens
    return texts, audio_tokens
