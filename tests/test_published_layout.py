"""Qwen2-Audio-7B-Instruct's folder as published (issue 14), at tiny widths with Qwen2's real
vocabulary: the layout itself, its export with edgelalm's own chat template, and llama.cpp's own
Qwen2 tokenizer test vectors through the exported decoder. References: transformers' loaders and
tokenizer, llama.cpp's expected ids (see tests/published_layout.py for the fixture)."""

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch
from published_layout import PUBLISHED_EMBEDDING_ROWS, QWEN2_MERGES, QWEN2_TOKENS, qwen2_vocabulary
from safetensors import safe_open
from transformers import AutoTokenizer, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from edgelalm import scaffold
from edgelalm.prompt import checkpoint_has_template, detect_prompt_format

PUBLISHED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    *(f"model-{n:05d}-of-00005.safetensors" for n in range(1, 6)),
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
}
# What the published text_config says; everything else about the decoder is transformers' default.
PUBLISHED_TEXT_KEYS = {
    "bos_token_id",
    "eos_token_id",
    "intermediate_size",
    "max_position_embeddings",
    "model_type",
    "rms_norm_eps",
    "rope_theta",
    "sliding_window",
    "torch_dtype",
    "use_mrope",
    "vocab_size",
}
SIZE_KEYS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"}
SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
}


def test_the_vocabulary_is_qwen2s_real_one():
    vocab, merges = qwen2_vocabulary()
    assert len(vocab) == QWEN2_TOKENS and sorted(vocab.values()) == list(range(QWEN2_TOKENS))
    assert len(merges) == QWEN2_MERGES
    # the first merges and tokens of Qwen2's byte-level BPE
    assert merges[:2] == [("Ġ", "Ġ"), ("ĠĠ", "ĠĠ")] and vocab["!"] == 0 and vocab["Hello"] == 9707


def test_the_folder_has_the_published_layout(published_checkpoint: Path):
    folder = published_checkpoint
    assert {path.name for path in folder.iterdir()} == PUBLISHED_FILES
    assert not checkpoint_has_template(folder)

    config = json.loads((folder / "config.json").read_text())
    assert (config["vocab_size"], config["audio_token_index"]) == (PUBLISHED_EMBEDDING_ROWS, 151646)
    assert (config["transformers_version"], config["torch_dtype"]) == ("4.38.1", "bfloat16")
    # minimal: the published keys, plus only the sizes that make it tiny
    assert set(config["text_config"]) == PUBLISHED_TEXT_KEYS | SIZE_KEYS
    loaded = Qwen2AudioConfig.from_pretrained(folder)
    text = loaded.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        64,
        2,
        4,
        4,
    )
    assert (text.vocab_size, text.intermediate_size, text.max_position_embeddings) == (156032, 128, 8192)
    assert loaded.audio_config.max_source_positions == 1500  # 30 s, as published

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f"model-{n:05d}-of-00005.safetensors" for n in range(1, 6)}
    names = set(index["weight_map"])
    assert all(name.startswith(("audio_tower.", "multi_modal_projector.linear.", "language_model.")) for name in names)
    assert "language_model.lm_head.weight" in names and "language_model.model.embed_tokens.weight" in names
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / shard), framework="pt") as weights:
            for name in weights.keys():
                assert index["weight_map"][name] == shard
                tensor_slice = weights.get_slice(name)
                assert tensor_slice.get_dtype() == "BF16"
                count = 1
                for size in tensor_slice.get_shape():
                    count *= size
                total += 2 * count
    assert index["metadata"]["total_size"] == total

    # transformers loads it as it loads the published one: every weight, in bf16, 156,032 rows
    model, info = Qwen2AudioForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.dtype == torch.bfloat16
    assert model.model.language_model.embed_tokens.weight.shape == (PUBLISHED_EMBEDDING_ROWS, 64)

    processor = Qwen2AudioProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == QWEN2_TOKENS + len(SPECIAL_IDS)
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_IDS} == SPECIAL_IDS
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert processor.feature_extractor.feature_size == 128 and processor.feature_extractor.nb_max_frames == 3000
    # the base model's name, with the same layout, is prompted without chat turns
    assert detect_prompt_format(folder, "Qwen2-Audio-7B") == "base"
    assert detect_prompt_format(folder, folder.name) == "instruct"


@pytest.fixture(scope="module")
def published_export(published_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """`edgelalm export --model <published folder> --compressor none --quant f16`, in this process
    (as test_export_cli.in_process, for a module-scoped bundle): (exit code, bundle, stderr)."""
    from edgelalm import cli

    out = tmp_path_factory.mktemp("published_bundle") / "bundle"
    args = ["edgelalm", "export", "--model", str(published_checkpoint), "--compressor", "none"]
    args += ["--quant", "f16", "--out", str(out)]
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(stdout), redirect_stderr(stderr):
        patch.setattr(sys, "argv", args)
        try:
            cli.main()
        except SystemExit as exit_:
            code = exit_.code
    return code, out, stderr.getvalue()


def test_the_published_folder_exports_with_edgelalms_own_template(published_export):
    from edgelalm.manifest import read_manifest
    from edgelalm.prompt import instruct_template

    code, out, stderr = published_export
    assert code == 0, stderr
    manifest = read_manifest(out)
    assert (manifest.prompt.format, manifest.prompt.template_source) == ("instruct", "edgelalm")
    assert manifest.prompt.chat_template == instruct_template()
    # The decoder GGUF carries the same template (for llama.cpp's own chat tools), not a fallback.
    import gguf

    field = gguf.GGUFReader(out / "decoder.gguf").fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == instruct_template()
    assert manifest.model.name == "Qwen2-Audio-7B-Instruct"
    assert "prompt token ids equal the checkpoint tokenizer's" in stderr
    assert "llama.cpp decoded 48 tokens in batches" in stderr
    assert f"llama.cpp loaded it: {PUBLISHED_EMBEDDING_ROWS} tokens, width 64" in stderr


def test_llama_cpp_tokenizes_its_own_qwen2_vectors_as_transformers_and_as_expected(
    published_export, published_checkpoint: Path, qwen2_tokenizer_vectors
):
    """llama.cpp's tests/test-tokenizer-0 on the exported decoder.gguf: each test string tokenized
    with no special-token parsing and no BOS; == transformers' ids == llama.cpp's expected ids."""
    from edgelalm.runtime.decoder import LlamaModel

    code, out, stderr = published_export
    assert code == 0, stderr
    assert len(qwen2_tokenizer_vectors) >= 40
    assert any(ids and max(ids) > 100_000 for _, ids in qwen2_tokenizer_vectors)  # deep in the vocabulary
    hf = AutoTokenizer.from_pretrained(published_checkpoint)
    llama = LlamaModel(out / "decoder.gguf")
    try:
        assert llama.n_vocab == PUBLISHED_EMBEDDING_ROWS
        mismatches = []
        for text, expected in qwen2_tokenizer_vectors:
            ours = llama.tokenize(text, parse_special=False)
            theirs = hf.encode(text, add_special_tokens=False)
            if not ours == theirs == expected:
                mismatches.append((text, ours, theirs, expected))
    finally:
        llama.close()
    assert not mismatches, f"{len(mismatches)} of {len(qwen2_tokenizer_vectors)} differ: {mismatches[:3]}"


def test_the_7b_preset_is_written_in_the_published_layout(tmp_path: Path, monkeypatch):
    """`edgelalm scaffold --preset qwen2-audio-7b` as published: five bf16 shards of about equal size,
    the minimal config.json, no chat template. The shards' tensors (17 GB) are planned, not written."""
    written: dict[str, tuple[int, set[str]]] = {}

    def plan_only(path, entries, dtype):
        assert dtype == torch.bfloat16
        size = sum(2 * torch.Size(shape).numel() for _, shape, _ in entries)
        written[path.name] = (size, {name for name, _, _ in entries})
        return size

    monkeypatch.setattr(scaffold, "_save_streamed", plan_only)
    folder = scaffold.preset_checkpoint(tmp_path / "Qwen2-Audio-7B-Instruct", "qwen2-audio-7b")
    assert sorted(written) == [f"model-{n:05d}-of-00005.safetensors" for n in range(1, 6)]
    sizes = [size for size, _ in written.values()]
    assert 16.0e9 < sum(sizes) < 17.5e9 and max(sizes) < 1.25 * sum(sizes) / 5
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(sizes)
    assert {name: file for file, (_, names) in written.items() for name in names} == index["weight_map"]
    assert "language_model.lm_head.weight" in index["weight_map"]
    config = json.loads((folder / "config.json").read_text())
    # Qwen2-7B's width, depth and heads are transformers' Qwen2 defaults: the published config leaves them out
    assert set(config["text_config"]) == PUBLISHED_TEXT_KEYS and config["transformers_version"] == "4.38.1"
    assert config["text_config"]["intermediate_size"] == 11008
    assert not checkpoint_has_template(folder) and not (folder / "processor_config.json").exists()
    text = Qwen2AudioConfig.from_pretrained(folder).text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads, text.vocab_size) == (
        4096,
        32,
        32,
        156032,
    )
