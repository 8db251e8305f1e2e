"""The CTC head at run time: ctc.onnx (audio embeddings -> per-position log-probabilities over a
blank and the decoder's tokens) and the prefix scores that joint decoding adds to the decoder's
(Watanabe et al., "Hybrid CTC/attention architecture for end-to-end speech recognition", 2017).
Torch-free.

A decoder-only model reads its audio and then follows its own text prior; a CTC head over the
same audio embeddings scores how well each partial answer explains all of the audio, so answers
that skip, add or repeat words lose to ones that say what was heard. Reads what
`edgelalm.export.ctc` writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelalm.constants import CTC_FRAMES_INPUT, CTC_INPUT, CTC_OUTPUT
from edgelalm.errors import EdgelalmError
from edgelalm.runtime.onnx_backend import onnx_session, run_graph

# The tokens a clip's audio proposes to the search (`CtcPrefixScorer.proposals`): each position's
# two likeliest, where the head gives them at least e^-5 (0.7%). On the default model's development
# set, more (three a position down to e^-7) found nothing more and searched a larger pool.
PROPOSED_PER_POSITION = 2
PROPOSAL_FLOOR = -5.0


class CtcHead:
    """A CTC head graph (ctc.onnx, or a compressor's own ctc-LABEL.onnx) over a decoder of
    `vocab_size` tokens; `reads_frames`: over the encoder's frames (the projector in the graph),
    else over a compressor's audio embeddings."""

    def __init__(
        self,
        path: Path,
        vocab_size: int,
        providers: list[str],
        threads: int | None = None,
        cpu_arena: bool = False,
        reads_frames: bool = False,
    ) -> None:
        self.path = path
        self.vocab_size = vocab_size
        self.reads_frames = reads_frames
        self.input_name = CTC_FRAMES_INPUT if reads_frames else CTC_INPUT
        self.session = onnx_session(path, providers, threads, cpu_arena, inputs=(self.input_name,), output=CTC_OUTPUT)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Log-probabilities [N, 1 + vocab] of `audio` (frames or embeddings, as the head reads):
        column 0 the blank, column i + 1 token i."""
        log_probs = run_graph(self.session, {self.input_name: audio}, self.path)
        # A graph that answers other shapes or positive "log-probabilities" (a hostile bundle)
        # would break the search's premise that scores only fall as an answer grows.
        expected = (audio.shape[0], 1 + self.vocab_size)
        if log_probs.shape != expected or not np.all(log_probs <= 1e-3):  # NaN fails too
            largest = f" values up to {np.max(log_probs):.3g}" if log_probs.size else ""
            raise EdgelalmError(
                f"{self.path} gave {log_probs.shape}{largest}; a CTC head gives log-probabilities of shape {expected}"
            )
        return log_probs


@dataclass(frozen=True, eq=False)  # its arrays have no single truth value to compare by
class CtcPrefix:
    """A partial answer's CTC state: log-probabilities that its tokens are said by position t and
    the path there ends in its last token (`ends_in_token`) or in a blank (`ends_in_blank`)."""

    ends_in_token: np.ndarray  # [T]
    ends_in_blank: np.ndarray  # [T]
    score: float  # log P(the audio's paths start with this prefix)
    last_token: int | None


class CtcPrefixScorer:
    """Prefix scores over one span of audio embeddings' CTC log-probabilities [T, 1 + vocab].

    The recursion over t is linear in probability space, so each step is a cumulative
    log-sum-exp over t (vectorised over the candidate tokens), not a loop over positions."""

    def __init__(self, log_probs: np.ndarray) -> None:
        if log_probs.ndim != 2 or log_probs.shape[0] < 1 or log_probs.shape[1] < 2:
            raise ValueError(f"CTC log-probabilities must be [positions, 1 + vocab], got {log_probs.shape}")
        self.log_probs = log_probs.astype(np.float64)
        self.vocab_size = log_probs.shape[1] - 1
        self.blank_cumulative = np.cumsum(self.log_probs[:, 0])

    def proposals(self, vocab_size: int, excluded: frozenset[int] = frozenset()) -> list[int]:
        """Tokens the audio may say, in token order: each position's PROPOSED_PER_POSITION likeliest
        (the blank, `excluded` tokens and ids from `vocab_size` on aside) at log-probability
        PROPOSAL_FLOOR or more; ties go to the lower token id."""
        said = self.log_probs[:, 1 : 1 + vocab_size]
        # Only entries above the floor can be proposed: a few per position, whatever the vocabulary.
        positions, tokens = np.nonzero(said >= PROPOSAL_FLOOR)
        usable = ~np.isin(tokens, list(excluded))
        positions, tokens = positions[usable], tokens[usable]
        order = np.lexsort((tokens, -said[positions, tokens], positions))
        positions, tokens = positions[order], tokens[order]
        starts = np.searchsorted(positions, positions, side="left")
        rank = np.arange(len(positions)) - starts
        return np.unique(tokens[rank < PROPOSED_PER_POSITION]).tolist()

    def initial(self) -> CtcPrefix:
        """The empty answer: every position so far a blank."""
        positions = self.log_probs.shape[0]
        return CtcPrefix(np.full(positions, -np.inf), self.blank_cumulative.copy(), 0.0, None)

    def final_score(self, prefix: CtcPrefix) -> float:
        """log P(the whole audio says exactly this prefix): the score of ending the answer here."""
        return float(np.logaddexp(prefix.ends_in_token[-1], prefix.ends_in_blank[-1]))

    def extend(self, prefix: CtcPrefix, tokens: list[int]) -> list[CtcPrefix]:
        """The prefix with each of `tokens` appended. A token outside the head's vocabulary (none
        where the head covers the decoder's embedding table) cannot be said: it scores -inf."""
        known = [k for k, token in enumerate(tokens) if 0 <= token < self.vocab_size]
        extended = [self._unsayable(token) for token in tokens]
        if known:
            for k, state in zip(known, self._extend_known(prefix, [tokens[k] for k in known]), strict=True):
                extended[k] = state
        return extended

    def _unsayable(self, token: int) -> CtcPrefix:
        nothing = np.full(self.log_probs.shape[0], -np.inf)
        return CtcPrefix(nothing, nothing, -np.inf, token)

    def _extend_known(self, prefix: CtcPrefix, tokens: list[int]) -> list[CtcPrefix]:
        said = self.log_probs[:, np.array(tokens) + 1]  # [T, K], finite
        # A path may move on to the new token from any path of the prefix, but after the same token
        # only through a blank (else the two would merge into one).
        either_end = np.logaddexp(prefix.ends_in_token, prefix.ends_in_blank)
        repeat = np.array([token == prefix.last_token for token in tokens])
        entering = np.where(repeat[None, :], prefix.ends_in_blank[:, None], either_end[:, None])  # [T, K]
        first = said[0] if prefix.last_token is None else np.full(len(tokens), -np.inf)
        # ends_in_token[t] = logaddexp(ends_in_token[t-1], entering[t-1]) + said[t]: divided by the
        # cumulative product of `said`, a running sum.
        said_cumulative = np.cumsum(said, axis=0)
        steps = np.vstack([first - said_cumulative[0], entering[:-1] - said_cumulative[:-1]])
        ends_in_token = np.logaddexp.accumulate(steps, axis=0) + said_cumulative
        # ends_in_blank[t] = logaddexp(ends_in_token[t-1], ends_in_blank[t-1]) + blank[t], from -inf.
        blanks = self.blank_cumulative[:, None]
        steps = np.vstack([np.full((1, len(tokens)), -np.inf), ends_in_token[:-1] - blanks[:-1]])
        ends_in_blank = np.logaddexp.accumulate(steps, axis=0) + blanks
        # The prefix score: every path whose first emission of the new token is at some t.
        scores = np.logaddexp.reduce(np.vstack([first[None, :], entering[:-1] + said[1:]]), axis=0)
        return [
            CtcPrefix(ends_in_token[:, k], ends_in_blank[:, k], float(scores[k]), token)
            for k, token in enumerate(tokens)
        ]
