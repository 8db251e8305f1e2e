"""recipes/default_model/whisper_labels.py and whisper_tiny_en.transcribe_scored: the score that decides
which pseudo-labels are kept is the mean log-probability of Whisper's greedy tokens, as transformers'
own forward pass gives them (a small random Whisper here; the recipe's is tiny.en from a wheel)."""

import numpy as np
import pytest
import torch
from recipe_scripts import recipe_module


@pytest.fixture(scope="module")
def whisper_tiny_en():
    return recipe_module("whisper_tiny_en")


@pytest.fixture(scope="module")
def whisper_labels():
    return recipe_module("whisper_labels")


class Tokens:
    """A tokenizer that keeps the ids it is asked to decode."""

    def decode(self, ids, skip_special_tokens=True):
        self.ids = [int(i) for i in ids]
        return " ".join(f"w{i}" for i in self.ids if i < 50256)


def small_whisper(whisper_tiny_en):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=1500,
        max_target_positions=448, decoder_start_token_id=whisper_tiny_en.START_OF_TRANSCRIPT, eos_token_id=50256,
        pad_token_id=50256, bos_token_id=50256,
    )  # fmt: skip
    return WhisperForConditionalGeneration(config).eval(), Tokens(), WhisperFeatureExtractor(feature_size=80)


def test_the_score_is_the_mean_log_probability_of_the_greedy_tokens(whisper_tiny_en):
    whisper = small_whisper(whisper_tiny_en)
    model, tokens, extractor = whisper
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    text, avg_logprob, ended = whisper_tiny_en.transcribe_scored(whisper, audio, max_new_tokens=6)
    ids = tokens.ids
    prompt = [whisper_tiny_en.START_OF_TRANSCRIPT, whisper_tiny_en.NO_TIMESTAMPS]
    assert ids[:2] == prompt and len(ids) == 2 + 6 and not ended  # ran to the limit: not kept
    features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        logits = model(features, decoder_input_ids=torch.tensor([ids[:-1]])).logits[0, 1:]
    # Whisper may not begin an answer with a space or the end token (its begin_suppress_tokens)
    logits[0, model.generation_config.begin_suppress_tokens] = -torch.inf
    log_probabilities = torch.log_softmax(logits, dim=-1)
    generated = torch.tensor(ids[2:])
    assert torch.equal(log_probabilities.argmax(-1), generated)  # greedy
    expected = log_probabilities[torch.arange(len(generated)), generated].mean().item()
    assert avg_logprob == pytest.approx(expected, abs=1e-4)
    assert text == " ".join(f"w{i}" for i in ids[2:] if i < 50256)


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        (("Set a timer.", -0.4, True), True),
        (("Set a timer.", -1.2, True), False),  # below Whisper's logprob_threshold
        (("set a timer set a timer set a", -0.1, False), False),  # ran to the token limit: a loop
        (("...", -0.1, True), False),  # no words
    ],
)
def test_an_answer_is_kept_when_whisper_is_sure_of_it(whisper_labels, monkeypatch, answer, kept):
    monkeypatch.setattr(whisper_labels, "transcribe_scored", lambda whisper, audio, limit: answer)
    assert whisper_labels.label(None, np.zeros(16000, np.float32)) == (answer[0], answer[1], kept)
