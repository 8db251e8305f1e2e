"""A LoRA adapter applied by llama.cpp at run time (issue 19): the adapter GGUF edgelalm writes,
loaded by llama.cpp's own loader on the unmerged base decoder, gives the logits of the merged
decoder (the reference: edgelalm's merge, itself checked against transformers + peft in
tests/test_adapter.py), and switching it off gives the base's."""

import json
import shutil

import numpy as np
import pytest
from conftest import random_lora_adapter

pytest.importorskip("torch")

from edgelalm.errors import EdgelalmError
from edgelalm.export.adapter_gguf import uniform_alpha, write_adapter_gguf
from edgelalm.export.bundle import open_checkpoint_adapter
from edgelalm.export.checkpoint import open_checkpoint
from edgelalm.export.decoder import write_decoder
from edgelalm.runtime.decoder import LlamaDecoder
from edgelalm.training.finetune import DECODER_LAYER_PROJECTIONS, lora_target_pattern

PROMPT = "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nTranscribe the audio.<|im_end|>\n"


def _logits(decoder: LlamaDecoder, tokens: list[int], width: int) -> list[np.ndarray]:
    """Logits after the tokens, then after 6 embeddings: both input kinds go through the adapter."""
    rng = np.random.default_rng(0)
    decoder.reset()
    decoder.feed_tokens(tokens)
    after_tokens = decoder.last_logits()
    decoder.feed_embeddings(rng.standard_normal((6, width)).astype(np.float32) * 0.1)
    return [after_tokens, decoder.last_logits()]


# Every projection of each decoder layer (`finetune --lora-modules`), beside the paper's q_proj/k_proj.
ALL_PROJECTIONS = lora_target_pattern(DECODER_LAYER_PROJECTIONS)


@pytest.fixture(scope="module", params=["paper", "all projections"])
def ggufs(request, tiny_checkpoint, tiny_lora_adapter, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter_gguf")
    checkpoint = open_checkpoint(tiny_checkpoint)
    if request.param == "paper":
        adapter_dir = tiny_lora_adapter
    else:
        adapter_dir = random_lora_adapter(tiny_checkpoint, folder / "peft", ALL_PROJECTIONS)
    adapter = open_checkpoint_adapter(checkpoint, adapter_dir, "instruct")
    write_decoder(checkpoint, folder / "base.gguf", "f32", None)
    write_decoder(checkpoint, folder / "merged.gguf", "f32", adapter)
    write_adapter_gguf(checkpoint, adapter, folder / "lora.gguf")
    return folder, checkpoint, adapter


def test_the_adapter_gguf_applied_at_run_time_equals_the_merged_decoder(ggufs):
    folder, _, adapter = ggufs
    projections = {module.rsplit(".", 1)[-1] for module in adapter.target_modules}
    assert projections in ({"q_proj", "k_proj"}, set(DECODER_LAYER_PROJECTIONS))
    assert uniform_alpha(adapter) == 32.0  # rank 16, alpha 32 everywhere: written as trained
    with LlamaDecoder(folder / "merged.gguf", n_ctx=256, kv_cache_type="f32") as merged:
        tokens = merged.tokenize(PROMPT)
        expected = _logits(merged, tokens, merged.n_embd)
    with LlamaDecoder(folder / "base.gguf", n_ctx=256, kv_cache_type="f32") as base:
        plain = _logits(base, tokens, base.n_embd)
        lora = base.llama.load_adapter(folder / "lora.gguf")
        base.use_adapter(lora)
        adapted = _logits(base, tokens, base.n_embd)
        base.use_adapter(None)
        back = _logits(base, tokens, base.n_embd)
        base.ensure_context(1024)  # a new, larger context keeps the adapter
        base.use_adapter(lora)
        base.ensure_context(2048)
        again = _logits(base, tokens, base.n_embd)
    for got, want, before, reverted, regrown in zip(adapted, expected, plain, back, again, strict=True):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=1e-4 * scale)
        np.testing.assert_allclose(regrown, want, atol=1e-4 * scale)
        np.testing.assert_array_equal(reverted, before)
        assert np.abs(want - before).max() > 10 * 1e-4 * scale  # the adapter moves the logits well past the bound


def test_per_module_scaling_is_folded_into_b(ggufs, tiny_lora_adapter, tmp_path):
    """An alpha_pattern gives modules different scalings, which llama.cpp's one alpha cannot say:
    each B then carries its module's scaling and alpha is 0."""
    folder, checkpoint, _ = ggufs
    patterned = tmp_path / "patterned"
    shutil.copytree(tiny_lora_adapter, patterned)
    config = json.loads((patterned / "adapter_config.json").read_text())
    config["alpha_pattern"] = {"layers.0.self_attn.q_proj": 8}
    (patterned / "adapter_config.json").write_text(json.dumps(config))
    adapter = open_checkpoint_adapter(checkpoint, patterned, "instruct")
    assert uniform_alpha(adapter) is None
    write_decoder(checkpoint, tmp_path / "merged.gguf", "f32", adapter)
    write_adapter_gguf(checkpoint, adapter, tmp_path / "lora.gguf")
    with LlamaDecoder(tmp_path / "merged.gguf", n_ctx=256, kv_cache_type="f32") as merged:
        tokens = merged.tokenize(PROMPT)
        expected = _logits(merged, tokens, merged.n_embd)
    with LlamaDecoder(folder / "base.gguf", n_ctx=256, kv_cache_type="f32") as base:
        base.use_adapter(base.llama.load_adapter(tmp_path / "lora.gguf"))
        adapted = _logits(base, tokens, base.n_embd)
    for got, want in zip(adapted, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


def test_an_adapter_for_another_model_is_refused_by_llama_cpp(ggufs, tmp_path):
    folder, _, _ = ggufs
    with LlamaDecoder(folder / "base.gguf", n_ctx=64) as base:
        with pytest.raises(EdgelalmError, match="could not load the LoRA adapter"):
            base.llama.load_adapter(folder / "merged.gguf")  # a model, not an adapter
        truncated = tmp_path / "truncated.gguf"
        truncated.write_bytes((folder / "lora.gguf").read_bytes()[:200])
        with pytest.raises(EdgelalmError, match="could not load the LoRA adapter"):
            base.llama.load_adapter(truncated)


def test_non_finite_factors_are_refused_in_the_adapter_gguf(ggufs, tiny_lora_adapter, tmp_path):
    """Merged, NaN factors were refused; written as a llama.cpp adapter (--no-merge-adapter, a bundle
    of several compressors) they were written, and `run` answered `!!!!!!!!` with exit 0."""
    import torch
    from safetensors.torch import load_file, save_file

    _, checkpoint, _ = ggufs
    broken = tmp_path / "nan"
    shutil.copytree(tiny_lora_adapter, broken)
    weights = load_file(broken / "adapter_model.safetensors")
    key = sorted(weights)[0]
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, broken / "adapter_model.safetensors")
    adapter = open_checkpoint_adapter(checkpoint, broken, "instruct")
    with pytest.raises(EdgelalmError, match="hold NaN or infinite values"):
        write_adapter_gguf(checkpoint, adapter, tmp_path / "lora.gguf")
    # Integer factors were cast to float and merged silently.
    weights[key] = torch.ones_like(weights[key], dtype=torch.int32)
    save_file(weights, broken / "adapter_model.safetensors")
    adapter = open_checkpoint_adapter(checkpoint, broken, "instruct")
    with pytest.raises(
        EdgelalmError, match="are torch.int32 and torch.float32, not floating point|are torch.float32 and torch.int32"
    ):
        write_adapter_gguf(checkpoint, adapter, tmp_path / "lora.gguf")
