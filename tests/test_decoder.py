"""The GGUF decoder in llama.cpp against transformers with the LoRA adapter active through peft
(unmerged): the reference never goes through edgelalm's merge.

Bounds on last-position logits (tiny checkpoint, logits of magnitude ~0.5), measured:
f32 1.5e-7 (bound 1e-5, llama.cpp with an f32 KV cache and flash attention off),
f16 2.2e-4 (bound 2e-3), q8_0 5.6e-3 (bound 3e-2).
"""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
llama_cpp = pytest.importorskip("llama_cpp")

from safetensors.torch import load_file, save_file  # noqa: E402

from edgelalm.errors import EdgelalmError  # noqa: E402
from edgelalm.export.adapter import open_adapter  # noqa: E402
from edgelalm.export.checkpoint import open_checkpoint  # noqa: E402
from edgelalm.export.decoder import write_decoder  # noqa: E402
from edgelalm.runtime.ctc import CtcPrefixScorer  # noqa: E402
from edgelalm.runtime.decoder import LlamaDecoder  # noqa: E402
from edgelalm.runtime.llama_backend import decide_extra_buffers, model_params  # noqa: E402
from edgelalm.runtime.search import beam_search, log_softmax  # noqa: E402
from edgelalm.training.model import torch_advance  # noqa: E402

BEFORE_AUDIO = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nAudio 1: <|audio_bos|>"
AFTER_AUDIO = "<|audio_eos|>\nTranscribe the audio.<|im_end|>\n<|im_start|>assistant\n"
LOGIT_BOUNDS = {"f32": 1e-5, "f16": 2e-3, "q8_0": 3e-2}


def adapter_for(checkpoint, adapter_dir):
    keys = checkpoint.decoder_tensor_keys()
    return open_adapter(adapter_dir, {name: checkpoint.tensor_shape(key) for name, key in keys.items()})


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, tiny_lora_adapter):
    base = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    return peft.PeftModel.from_pretrained(base, tiny_lora_adapter).eval()


@pytest.fixture(scope="module")
def ggufs(tiny_checkpoint, tiny_lora_adapter, tmp_path_factory):
    checkpoint = open_checkpoint(tiny_checkpoint)
    adapter = adapter_for(checkpoint, tiny_lora_adapter)
    folder = tmp_path_factory.mktemp("ggufs")
    paths = {}
    for quant in ("f32", "f16", "q8_0", "q4_k_m", "q4_0"):
        paths[quant] = folder / f"decoder-{quant}.gguf"
        write_decoder(checkpoint, paths[quant], quant, adapter)
    return checkpoint, paths


def prompt_inputs(checkpoint, seed=0, audio_tokens=9):
    tokenizer = checkpoint.processor.tokenizer
    before = tokenizer(BEFORE_AUDIO, add_special_tokens=False).input_ids
    after = tokenizer(AFTER_AUDIO, add_special_tokens=False).input_ids
    hidden = checkpoint.config.text_config.hidden_size
    audio = torch.randn(audio_tokens, hidden, generator=torch.Generator().manual_seed(seed)) * 0.5
    return before, audio, after


def reference_embeds(model, before, audio, after):
    embed = model.get_input_embeddings()
    with torch.no_grad():
        return torch.cat([embed(torch.tensor(before)), audio, embed(torch.tensor(after))])[None]


def llama_logits(path, before, audio, after, kv_cache_type="f32"):
    with LlamaDecoder(path, n_ctx=128, kv_cache_type=kv_cache_type) as decoder:
        decoder.feed_tokens(before)
        decoder.feed_embeddings(audio.numpy())
        decoder.feed_tokens(after)
        return decoder.last_logits()


@pytest.mark.parametrize("quant", list(LOGIT_BOUNDS))
def test_logits_match_transformers_with_the_adapter_active(ggufs, reference, quant):
    checkpoint, paths = ggufs
    for seed in range(3):
        before, audio, after = prompt_inputs(checkpoint, seed)
        with torch.no_grad():
            expected = reference(inputs_embeds=reference_embeds(reference, before, audio, after)).logits[0, -1].numpy()
        got = llama_logits(paths[quant], before, audio, after)
        assert np.abs(got - expected).max() <= LOGIT_BOUNDS[quant]


def test_the_adapter_matters(ggufs, tiny_checkpoint, reference):
    """Without the merge, llama.cpp would disagree with the adapted model: the test above has teeth."""
    checkpoint, paths = ggufs
    before, audio, after = prompt_inputs(checkpoint)
    base = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        base_logits = base(inputs_embeds=reference_embeds(base, before, audio, after)).logits[0, -1].numpy()
    got = llama_logits(paths["f32"], before, audio, after)
    assert np.abs(got - base_logits).max() > 100 * LOGIT_BOUNDS["f32"]


@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_greedy_continuation_is_identical(ggufs, reference, quant):
    checkpoint, paths = ggufs
    before, audio, after = prompt_inputs(checkpoint, seed=5)
    embeds = reference_embeds(reference, before, audio, after)
    end_ids = [checkpoint.processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    with torch.no_grad():
        generated = reference.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=end_ids,
            pad_token_id=end_ids[-1],
        )[0].tolist()
    expected = [t for t in generated if t not in end_ids]
    with LlamaDecoder(paths[quant], n_ctx=128, kv_cache_type="f32") as decoder:
        decoder.feed_tokens(before)
        decoder.feed_embeddings(audio.numpy())
        decoder.feed_tokens(after)
        got = list(decoder.generate(20))
    assert len(expected) >= 5
    assert got == expected


def beam_inputs(checkpoint, seed):
    before, audio, after = prompt_inputs(checkpoint, seed=seed)
    end_ids = [checkpoint.processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    # CTC log-probabilities over the 9 audio positions that favour a few tokens, so that the joint
    # search's answers differ from the decoder's alone.
    generator = np.random.default_rng(seed)
    scores = generator.normal(size=(9, 1 + checkpoint.config.text_config.vocab_size))
    scores[:, 1 + generator.integers(0, 200, size=6)] += 6.0
    return before, audio, after, end_ids, CtcPrefixScorer(log_softmax(scores))


@pytest.mark.parametrize(("beam_size", "ctc_weight"), [(1, 0.0), (4, 0.0), (4, 0.5), (3, 0.8)])
def test_beam_search_on_llama_cpp_sequences_equals_it_on_transformers(ggufs, reference, beam_size, ctc_weight):
    """Each hypothesis a llama.cpp sequence, copied from its parent's: the same answers as the
    same search with transformers' model evaluating every hypothesis afresh."""
    checkpoint, paths = ggufs
    answers = set()
    for seed in range(3):
        before, audio, after, end_ids, scorer = beam_inputs(checkpoint, seed)
        embeds = reference_embeds(reference, before, audio, after)[0]
        expected, _ = beam_search(
            torch_advance(reference, embeds), frozenset(end_ids), 12, beam_size, scorer, ctc_weight
        )
        with LlamaDecoder(paths["f32"], n_ctx=128, kv_cache_type="f32") as decoder:
            decoder.ensure_context(128, sequences=beam_size + 1)
            decoder.feed_tokens(before)
            decoder.feed_embeddings(audio.numpy())
            decoder.feed_tokens(after)
            advance, release = decoder.beams(beam_size)
            got, _ = beam_search(advance, frozenset(end_ids), 12, beam_size, scorer, ctc_weight)
            release()
        assert got == expected
        answers.add(tuple(got))
    assert len(answers) == 3


def test_after_a_beam_search_the_prompt_is_kept_and_only_it(ggufs):
    """The hypotheses' cells go; sequence 0 keeps the prompt for the prefix cache, and the next
    clip after it reads the same logits as in a fresh context."""
    checkpoint, paths = ggufs
    before, audio, after, end_ids, scorer = beam_inputs(checkpoint, seed=7)
    _, other_audio, _ = prompt_inputs(checkpoint, seed=8)
    expected = llama_logits(paths["f32"], before, other_audio, after)
    with LlamaDecoder(paths["f32"], n_ctx=128, kv_cache_type="f32") as decoder:
        decoder.ensure_context(128, sequences=5)
        decoder.start_with(before)
        decoder.feed_embeddings(audio.numpy())
        decoder.feed_tokens(after)
        advance, release = decoder.beams(4)
        beam_search(advance, frozenset(end_ids), 12, 4, scorer, 0.5)
        release()
        memory = llama_cpp.llama_get_memory(decoder.context)
        assert [llama_cpp.llama_memory_seq_pos_max(memory, s) for s in range(1, 5)] == [-1] * 4
        assert decoder.start_with(before) == len(before)
        decoder.feed_embeddings(other_audio.numpy())
        decoder.feed_tokens(after)
        assert np.abs(decoder.last_logits() - expected).max() <= LOGIT_BOUNDS["f32"]


@pytest.mark.parametrize(
    "text",
    [
        "Set a timer for 25 minutes at 7:30 pm.",
        "12345 and 3.14159, 1,000,000",
        "café naïve 30°C €5 ありがとう 🙂",
        "tabs\tand   runs    of spaces\n\n\nnew lines  ",
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nhi<|im_end|>\n<|endoftext|>",
        "it's we'll THEY'RE don't",
    ],
)
def test_llama_cpp_token_ids_equal_the_hf_tokenizer(ggufs, text):
    checkpoint, paths = ggufs
    expected = checkpoint.processor.tokenizer(text, add_special_tokens=False).input_ids
    with LlamaDecoder(paths["q8_0"], n_ctx=64) as decoder:
        assert decoder.tokenize(text) == expected
        assert b"".join(decoder.token_bytes(t) for t in expected).decode() == text


def test_stock_llama_loads_it_and_completes_text(ggufs, monkeypatch):
    _, paths = ggufs
    # Stock Llama takes llama.cpp's default model parameters, whose extra buffers crash on AMX
    # machines (see edgelalm.runtime.llama_backend): give it the choice edgelalm makes.
    enabled = decide_extra_buffers("auto").enabled
    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", lambda: model_params(enabled))
    llm = llama_cpp.Llama(str(paths["q4_k_m"]), n_ctx=128, verbose=False)
    assert llm.model_params.use_extra_bufts is enabled
    out = llm.create_completion("Set a timer for", max_tokens=6, temperature=0)
    assert out["usage"]["completion_tokens"] >= 1
    assert llm.metadata["general.architecture"] == "qwen2"
    assert "<|audio_bos|>" in llm.metadata["tokenizer.chat_template"]


def test_quantized_files_shrink(ggufs):
    _, paths = ggufs
    size = {quant: path.stat().st_size for quant, path in paths.items()}
    assert size["f32"] > size["f16"] > size["q8_0"] > size["q4_k_m"] >= size["q4_0"]


def _rewrite_checkpoint(source, target, edit_tensors, edit_config):
    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    edit_tensors(tensors)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((target / "config.json").read_text())
    edit_config(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_tied_embeddings(tiny_checkpoint, tmp_path):
    """No lm_head tensor: llama.cpp must use the token embeddings as the output layer."""
    tied = _rewrite_checkpoint(
        tiny_checkpoint,
        tmp_path / "tied",
        lambda t: t.pop("language_model.lm_head.weight"),
        lambda c: c["text_config"].update(tie_word_embeddings=True),
    )
    checkpoint = open_checkpoint(tied)
    path = tmp_path / "tied.gguf"
    write_decoder(checkpoint, path, "f32", None)
    model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        model.lm_head.weight.copy_(model.get_input_embeddings().weight)
    before, audio, after = prompt_inputs(checkpoint)
    with torch.no_grad():
        expected = model(inputs_embeds=reference_embeds(model, before, audio, after)).logits[0, -1].numpy()
    got = llama_logits(path, before, audio, after)
    assert np.abs(got - expected).max() <= LOGIT_BOUNDS["f32"]


def test_padded_vocabulary_gets_unused_tokens(tiny_checkpoint, tmp_path):
    """Embeddings with more rows than the tokenizer has tokens (Qwen pads to 151936)."""

    def pad_rows(tensors):
        for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
            tensors[key] = torch.cat([tensors[key], torch.zeros(34, tensors[key].shape[1])])

    padded = _rewrite_checkpoint(
        tiny_checkpoint, tmp_path / "padded", pad_rows, lambda c: c["text_config"].update(vocab_size=640)
    )
    path = tmp_path / "padded.gguf"
    write_decoder(open_checkpoint(padded), path, "q8_0", None)
    with LlamaDecoder(path, n_ctx=32) as decoder:
        assert decoder.n_vocab == 640
        decoder.feed_tokens(decoder.tokenize("Set a timer"))
        assert decoder.last_logits().shape == (640,)
        assert decoder.token_bytes(639) == b""  # an unused row renders as nothing


def test_tokenizer_larger_than_embeddings_is_refused(tiny_checkpoint, tmp_path):
    def shrink(tensors):
        for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
            tensors[key] = tensors[key][:500].clone()

    small = _rewrite_checkpoint(
        tiny_checkpoint, tmp_path / "small", shrink, lambda c: c["text_config"].update(vocab_size=500)
    )
    with pytest.raises(EdgelalmError, match="tokenizer has 606 tokens, the embeddings have 500 rows"):
        write_decoder(open_checkpoint(small), tmp_path / "x.gguf", "f16", None)
