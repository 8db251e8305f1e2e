"""Beam search over the decoder's answers, joint with a CTC head's prefix scores where the bundle
has one (`edgelalm.runtime.ctc`). Torch-free and decoder-free: the decoder is a callback, so the
same search runs on llama.cpp's sequences (`LlamaContext.beams`) and on transformers' model (the
recipes' WER tables, and the tests' reference).

Each hypothesis scores (1 - ctc_weight) * log P_decoder(answer) + ctc_weight * log P_ctc(prefix);
an answer that ends scores its whole-audio CTC probability instead of the prefix's. Both terms only
fall as an answer grows, so the search stops once the best ended answer beats every open one.

The tokens tried after each hypothesis are the decoder's best few and, where the CTC head is
weighted, the tokens the audio proposes (`CtcPrefixScorer.proposals`): a decoder that learned
little text ranks words it rarely saw below its best few even where the audio says them clearly,
and the joint score can only choose among the tokens tried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgelalm.runtime.ctc import CtcPrefix, CtcPrefixScorer


# eq=False: a hypothesis is itself, not its fields (its CTC state holds arrays, which == would compare).
@dataclass(frozen=True, eq=False)
class Hypothesis:
    tokens: list[int]
    decoder_score: float
    ctc: CtcPrefix | None
    score: float


# Given, for each hypothesis kept, the index of its parent among the previous step's and the token
# it adds, the decoder evaluates those tokens and returns each one's next-token log-probabilities
# [kept, vocab]. The first call has no parents: the prompt's own log-probabilities, [1, vocab].
Advance = Callable[[list[int], list[int]], np.ndarray]


def candidates_per_hypothesis(beam_size: int, ctc_weight: float) -> int:
    """The decoder's best tokens rescored per hypothesis: the beam itself, or half again as many
    where the CTC head may reorder them (ESPnet's pre-beam)."""
    return beam_size if ctc_weight == 0 else beam_size + max(1, beam_size // 2)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def beam_search(
    advance: Advance,
    end_ids: frozenset[int],
    max_tokens: int,
    beam_size: int,
    ctc: CtcPrefixScorer | None = None,
    ctc_weight: float = 0.0,
) -> tuple[list[int], bool]:
    """The best answer (its tokens, without the end token) and whether it ended within
    `max_tokens` (False: an open hypothesis, cut there, scored as if it ended)."""
    weight = ctc_weight if ctc is not None else 0.0
    scorer = ctc if weight > 0 else None  # weight 0: the decoder alone (0 x -inf would be NaN)
    width = candidates_per_hypothesis(beam_size, weight)
    start = scorer.initial() if scorer is not None else None
    open_hypotheses = [Hypothesis([], 0.0, start, 0.0)]
    ended: list[Hypothesis] = []
    log_probs = advance([], [])
    vocab = log_probs.shape[-1]
    proposed = scorer.proposals(vocab, end_ids) if scorer is not None else []
    for _ in range(max_tokens):
        scored: list[tuple[Hypothesis, int, int]] = []
        for index, hypothesis in enumerate(open_hypotheses):
            row = log_probs[index]
            # The decoder's best tokens, ties broken by token id so that the search is deterministic,
            # then the audio's proposals that are not among them.
            best = np.argsort(-row, kind="stable")[:width].tolist()
            ranked = set(best)
            tried = best + [token for token in proposed if token not in ranked]
            for token, extended in zip(tried, _extend(hypothesis, tried, row, end_ids, scorer, weight), strict=True):
                scored.append((extended, index, token))
        # Equal scores (-inf where the audio cannot say a prefix) fall back on the decoder's.
        scored.sort(key=lambda entry: (-entry[0].score, -entry[0].decoder_score, entry[1], entry[2]))
        parents, tokens, kept = [], [], []
        for hypothesis, index, token in scored[:beam_size]:
            if token in end_ids:
                ended.append(hypothesis)
            else:
                parents.append(index)
                tokens.append(token)
                kept.append(hypothesis)
        open_hypotheses = kept
        if not open_hypotheses or (ended and _best(ended).score >= open_hypotheses[0].score):
            return _best(ended).tokens, True
        log_probs = advance(parents, tokens)
    # Out of tokens: the open hypotheses, cut here, compete with the ended ones as if they ended.
    cut = [
        _joint(h.tokens, h.decoder_score, h.ctc, scorer.final_score(h.ctc) if scorer and h.ctc else 0.0, weight)
        for h in open_hypotheses
    ]
    best = _best(ended + cut)
    return best.tokens, best in ended


def _best(hypotheses: list[Hypothesis]) -> Hypothesis:
    return max(hypotheses, key=lambda h: (h.score, h.decoder_score))


def _joint(
    tokens: list[int], decoder_score: float, state: CtcPrefix | None, ctc_score: float, weight: float
) -> Hypothesis:
    """A hypothesis scored (1 - weight) x decoder + weight x CTC, a term left out at weight 0 or 1
    (so that its -inf does not make NaN)."""
    decoder_part = (1 - weight) * decoder_score if weight < 1 else 0.0
    ctc_part = weight * ctc_score if weight > 0 else 0.0
    return Hypothesis(tokens, decoder_score, state, decoder_part + ctc_part)


def _extend(
    hypothesis: Hypothesis,
    tokens: list[int],
    row: np.ndarray,
    end_ids: frozenset[int],
    scorer: CtcPrefixScorer | None,
    weight: float,
) -> list[Hypothesis]:
    """`hypothesis` followed by each of `tokens` (an end token ends it), scored."""
    said = [token for token in tokens if token not in end_ids]
    states = iter(
        scorer.extend(hypothesis.ctc, said) if scorer is not None and hypothesis.ctc is not None and said else []
    )
    extended = []
    for token in tokens:
        decoder_score = hypothesis.decoder_score + float(row[token])
        ends = token in end_ids
        answer = hypothesis.tokens if ends else [*hypothesis.tokens, token]
        if scorer is None or hypothesis.ctc is None:
            extended.append(Hypothesis(answer, decoder_score, None, decoder_score))
            continue
        state = hypothesis.ctc if ends else next(states)
        ctc_score = scorer.final_score(state) if ends else state.score
        extended.append(_joint(answer, decoder_score, state, ctc_score, weight))
    return extended
