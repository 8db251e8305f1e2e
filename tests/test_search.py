"""Joint CTC/attention decoding's parts, torch-free: the CTC prefix scores against every alignment
counted by hand and against torch's own CTC loss, and the beam search against an exhaustive search
over every answer of a toy decoder."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from edgelalm.runtime.ctc import CtcPrefixScorer
from edgelalm.runtime.search import beam_search, log_softmax


def random_log_probs(positions: int, vocab: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return log_softmax(generator.normal(scale=2.0, size=(positions, 1 + vocab)))


def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    """CTC's many-to-one map: repeats merged, then blanks (0) removed; tokens are column - 1."""
    merged = [column for n, column in enumerate(path) if n == 0 or path[n - 1] != column]
    return tuple(column - 1 for column in merged if column != 0)


def by_enumeration(log_probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """P(labels) for every labelling, summed over all |V|^T alignments."""
    totals: dict[tuple[int, ...], float] = {}
    probs = np.exp(log_probs)
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        p = float(np.prod([probs[t, column] for t, column in enumerate(path)]))
        totals[collapse(path)] = totals.get(collapse(path), 0.0) + p
    return totals


def state_of(scorer: CtcPrefixScorer, tokens: tuple[int, ...]):
    state = scorer.initial()
    for token in tokens:
        state = scorer.extend(state, [token])[0]
    return state


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_and_final_scores_equal_a_sum_over_every_alignment(seed: int) -> None:
    log_probs = random_log_probs(positions=5, vocab=3, seed=seed)
    totals = by_enumeration(log_probs)
    scorer = CtcPrefixScorer(log_probs)
    # Every labelling of up to 3 tokens, repeats included (they need a blank between them).
    for length in range(4):
        for tokens in itertools.product(range(3), repeat=length):
            state = state_of(scorer, tokens)
            exact = totals.get(tokens, 0.0)
            prefix = sum(p for labels, p in totals.items() if labels[:length] == tokens)
            assert np.exp(scorer.final_score(state)) == pytest.approx(exact, rel=1e-9, abs=1e-300)
            assert np.exp(state.score) == pytest.approx(prefix, rel=1e-9, abs=1e-300)


def test_extending_by_several_tokens_at_once_equals_one_at_a_time() -> None:
    scorer = CtcPrefixScorer(random_log_probs(positions=30, vocab=9, seed=3))
    prefix = state_of(scorer, (4, 4, 1))
    together = scorer.extend(prefix, [1, 0, 8, 4])
    for token, state in zip([1, 0, 8, 4], together, strict=True):
        alone = scorer.extend(prefix, [token])[0]
        assert state.score == pytest.approx(alone.score, rel=1e-12)
        np.testing.assert_allclose(state.ends_in_blank, alone.ends_in_blank, rtol=1e-12)


def test_final_score_equals_torch_ctc_loss_on_a_long_span() -> None:
    """750 positions (a 30 s window at 25 per second): the running sums stay exact in float64."""
    log_probs = random_log_probs(positions=750, vocab=40, seed=4)
    tokens = [5, 5, 17, 3, 39, 0, 0, 22] * 6
    state = state_of(CtcPrefixScorer(log_probs), tuple(tokens))
    loss = torch.nn.functional.ctc_loss(
        torch.from_numpy(log_probs)[:, None, :],
        torch.tensor([tokens]) + 1,
        torch.tensor([750]),
        torch.tensor([len(tokens)]),
        blank=0,
        reduction="sum",
    )
    assert CtcPrefixScorer(log_probs).final_score(state) == pytest.approx(-loss.item(), rel=1e-9)


def test_a_token_outside_the_heads_vocabulary_cannot_be_said() -> None:
    scorer = CtcPrefixScorer(random_log_probs(positions=6, vocab=3, seed=5))
    inside, outside = scorer.extend(scorer.initial(), [2, 7])
    assert np.isfinite(inside.score) and outside.score == -np.inf


def test_the_audio_proposes_each_positions_two_likeliest_tokens_above_the_floor() -> None:
    # Column 0 is the blank, column c token c - 1; the comments name tokens.
    probs = np.full((3, 1 + 6), 1e-4)
    probs[0, [0, 5, 2, 3]] = [0.5, 0.3, 0.15, 0.04]  # the blank aside: 4 and 1 (2 is third)
    probs[1, [0, 4, 1]] = [0.985, 0.01, 0.005]  # 3 (0.01 >= e^-5); 0 is second but below the floor
    probs[2, [0, 5]] = [0.4, 0.59]  # 4 again; every other token below the floor
    scorer = CtcPrefixScorer(np.log(probs / probs.sum(axis=1, keepdims=True)))
    assert scorer.proposals(6) == [1, 3, 4]
    # Tokens the search cannot take (an end token, ids past the decoder's vocabulary) make room
    # for the position's next likeliest.
    assert scorer.proposals(6, excluded=frozenset({4})) == [1, 2, 3]  # position 0's third, 2, comes in
    assert scorer.proposals(4, excluded=frozenset({1})) == [2, 3]  # 4 is past the vocabulary
    # Ties go to the lower token id.
    even = CtcPrefixScorer(np.log(np.full((1, 1 + 4), 0.2)))
    assert even.proposals(4) == [0, 1]


# -- the search ---------------------------------------------------------------------------------

END = 0


class ToyDecoder:
    """Next-token log-probabilities that depend on the whole answer so far (a hash of it), so
    that a search which mixes up its hypotheses' histories gives other answers."""

    def __init__(self, vocab: int, seed: int) -> None:
        self.vocab, self.seed = vocab, seed
        self.answers: list[tuple[int, ...]] = []

    def log_probs(self, answer: tuple[int, ...]) -> np.ndarray:
        generator = np.random.default_rng([self.seed, *answer, 99])
        logits = generator.normal(scale=2.0, size=self.vocab)
        logits[END] += 0.4 * len(answer)  # answers end, sooner or later
        return log_softmax(logits)

    def advance(self, parents: list[int], tokens: list[int]) -> np.ndarray:
        if not parents and not tokens:
            self.answers = [()]
        else:
            self.answers = [(*self.answers[parent], token) for parent, token in zip(parents, tokens, strict=True)]
        return np.stack([self.log_probs(answer) for answer in self.answers])


def exhaustive_best(decoder: ToyDecoder, scorer: CtcPrefixScorer | None, weight: float, max_tokens: int):
    """The best answer over every answer of up to max_tokens tokens: one that ends (its end token
    scored), or one cut at max_tokens (scored as if it ended there, without an end token)."""
    best, best_score = None, -np.inf
    for length in range(max_tokens + 1):
        for answer in itertools.product(range(1, decoder.vocab), repeat=length):
            decoder_score = sum(decoder.log_probs(answer[:n])[answer[n]] for n in range(length))
            if length < max_tokens:
                decoder_score += decoder.log_probs(answer)[END]
            score = decoder_score
            if scorer is not None:
                score = (1 - weight) * decoder_score + weight * scorer.final_score(state_of(scorer, answer))
            if score > best_score:
                best, best_score = list(answer), score
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_a_wide_beam_finds_the_exhaustive_best_answer(seed: int, weight: float) -> None:
    decoder = ToyDecoder(vocab=4, seed=seed)
    # The CTC head's vocabulary: the decoder's tokens but END (token 0 is never said).
    scorer = CtcPrefixScorer(random_log_probs(positions=8, vocab=4, seed=seed)) if weight else None
    answer, ended = beam_search(decoder.advance, frozenset({END}), 4, beam_size=200, ctc=scorer, ctc_weight=weight)
    assert answer == exhaustive_best(decoder, scorer, weight, max_tokens=4)
    assert ended == (len(answer) < 4)


def test_beam_of_one_without_ctc_is_greedy() -> None:
    decoder = ToyDecoder(vocab=6, seed=7)
    answer, _ = beam_search(decoder.advance, frozenset({END}), 10, beam_size=1)
    greedy: list[int] = []
    while len(greedy) < 10:
        token = int(np.argmax(decoder.log_probs(tuple(greedy))))
        if token == END:
            break
        greedy.append(token)
    assert answer == greedy


class Endless(ToyDecoder):
    def log_probs(self, answer: tuple[int, ...]) -> np.ndarray:
        row = super().log_probs(answer)
        row[END] = -np.inf
        return row


def test_an_answer_cut_at_max_tokens_is_the_best_open_one() -> None:
    decoder = Endless(vocab=5, seed=8)
    answer, ended = beam_search(decoder.advance, frozenset({END}), 3, beam_size=64)
    assert not ended
    assert answer == exhaustive_best(decoder, None, 0.0, max_tokens=3)


def test_a_long_open_answer_beats_a_short_ended_one_at_max_tokens() -> None:
    """Ending at once is likely (0.4), but every token after the first is likelier (0.97 each): at
    max_tokens the cut answer scores higher than the empty one, as greedy decoding would say."""

    class Steady(ToyDecoder):
        def log_probs(self, answer: tuple[int, ...]) -> np.ndarray:
            row = np.full(self.vocab, 1e-6)
            row[END], row[1] = (0.4, 0.6) if not answer else (0.03, 0.97)
            return np.log(row / row.sum())

    answer, ended = beam_search(Steady(vocab=3, seed=0).advance, frozenset({END}), 8, beam_size=2)
    assert answer == [1] * 8 and not ended


def test_a_scorer_at_weight_0_leaves_the_decoder_alone_even_where_ctc_says_minus_infinity() -> None:
    """An audio span of 2 positions cannot say 3 tokens (CTC: -inf): at weight 0 that must not
    turn into NaN scores (0 x -inf) and reorder the beam."""
    for seed in range(30):
        decoder = ToyDecoder(vocab=8, seed=seed)
        scorer = CtcPrefixScorer(random_log_probs(positions=2, vocab=8, seed=seed))
        alone = beam_search(decoder.advance, frozenset({END}), 6, beam_size=3)
        assert beam_search(decoder.advance, frozenset({END}), 6, beam_size=3, ctc=scorer, ctc_weight=0.0) == alone


def test_where_ctc_rules_every_candidate_out_the_decoder_ranks_them() -> None:
    """Past what 2 positions can say, every open hypothesis scores -inf; the beam keeps the
    decoder's best of them, not the lowest token ids."""
    decoder = ToyDecoder(vocab=8, seed=3)
    scorer = CtcPrefixScorer(random_log_probs(positions=2, vocab=8, seed=3))
    # No end token among the candidates: the search must go on through -inf prefixes.
    answer, _ = beam_search(decoder.advance, frozenset({99}), 4, beam_size=1, ctc=scorer, ctc_weight=0.3)
    for n in range(2, 4):  # from the third token on, the decoder's own argmax (ties: none in random rows)
        assert answer[n] == int(np.argmax(decoder.log_probs(tuple(answer[:n]))))


class Favourites(ToyDecoder):
    """A decoder sure of its first few tokens and of nothing else: every other token is far below
    them, whatever the audio says (a word it rarely saw in training)."""

    def log_probs(self, answer: tuple[int, ...]) -> np.ndarray:
        row = np.full(self.vocab, -6.0)
        row[1:7] = -1.0
        row[END] = -1.0 if answer else -30.0
        return row - np.logaddexp.reduce(row)


def test_the_search_tries_the_tokens_the_audio_proposes_beside_the_decoders_best() -> None:
    """The audio clearly says token 9, outside the decoder's best six: the joint search must find
    the exhaustive best answer, [9], which the decoder's candidates alone never contain."""
    decoder = Favourites(vocab=12, seed=0)
    probs = np.full((6, 1 + 12), 1e-3)
    probs[:, 0] = 0.9
    probs[2:4, 1 + 9] = 0.9
    scorer = CtcPrefixScorer(np.log(probs / probs.sum(axis=1, keepdims=True)))
    assert 9 in scorer.proposals(12)
    answer, ended = beam_search(decoder.advance, frozenset({END}), 3, beam_size=4, ctc=scorer, ctc_weight=0.5)
    assert answer == exhaustive_best(decoder, scorer, 0.5, max_tokens=3) == [9]
    assert ended
    # The decoder alone answers with its favourites.
    assert 9 not in beam_search(decoder.advance, frozenset({END}), 3, beam_size=4)[0]
