"""The scaffolded Qwen2-Audio checkpoint loads and behaves like Qwen2-Audio-7B-Instruct's layout."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402
from transformers import AutoProcessor, GenerationConfig, Qwen2AudioForConditionalGeneration  # noqa: E402
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX  # noqa: E402
from transformers.models.qwen2_audio.processing_qwen2_audio import Qwen2AudioProcessor  # noqa: E402

from edgelalm import scaffold  # noqa: E402

TINY_LEARNED_VOCAB = 600


@pytest.fixture(scope="module")
def processor(tiny_checkpoint: Path):
    return AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path):
    return Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()


def _tensor_names(checkpoint: Path) -> list[str]:
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as handle:
        return list(handle.keys())


def test_folder_has_qwen2_audio_instruct_files(tiny_checkpoint: Path) -> None:
    names = {p.name for p in tiny_checkpoint.iterdir()}
    expected = {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
    }
    assert expected <= names
    assert not [n for n in names if n.endswith(".bin")]
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "qwen2_audio"
    assert config["architectures"] == ["Qwen2AudioForConditionalGeneration"]
    preprocessor = json.loads((tiny_checkpoint / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert preprocessor["feature_size"] == 128
    assert preprocessor["chunk_length"] == 10


def test_safetensors_use_the_hub_key_layout(tiny_checkpoint: Path) -> None:
    names = _tensor_names(tiny_checkpoint)
    prefixes = {name.split(".")[0] for name in names}
    assert prefixes == {"audio_tower", "language_model", "multi_modal_projector"}
    assert "language_model.lm_head.weight" in names
    assert "language_model.model.embed_tokens.weight" in names
    assert "audio_tower.conv1.weight" in names
    assert "multi_modal_projector.linear.weight" in names


def test_model_loads_every_saved_weight(tiny_checkpoint: Path) -> None:
    loaded, info = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.dtype == torch.float32
    with safe_open(str(tiny_checkpoint / "model.safetensors"), framework="pt") as handle:
        saved_embed = handle.get_tensor("language_model.model.embed_tokens.weight")
    assert torch.equal(loaded.get_input_embeddings().weight, saved_embed)
    audio = loaded.config.audio_config
    audio_shape = (audio.encoder_layers, audio.d_model, audio.encoder_attention_heads, audio.encoder_ffn_dim)
    assert audio_shape == (2, 64, 4, 128)
    assert audio.num_mel_bins == 128 and audio.max_source_positions == 10 * 50
    text = loaded.config.text_config
    text_shape = (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads)
    assert text_shape == (2, 64, 4, 2)
    assert text.intermediate_size == 128
    assert text.vocab_size == TINY_LEARNED_VOCAB + len(scaffold.SPECIAL_TOKENS)
    assert loaded.config.audio_token_id == TINY_LEARNED_VOCAB + scaffold.SPECIAL_TOKENS.index("<|AUDIO|>")


def test_processor_loads_as_qwen2_audio(processor) -> None:
    assert isinstance(processor, Qwen2AudioProcessor)
    extractor = processor.feature_extractor
    front_end = (extractor.feature_size, extractor.sampling_rate, extractor.hop_length, extractor.n_fft)
    assert front_end == (128, 16000, 160, 400)
    assert extractor.chunk_length == 10 and extractor.return_attention_mask
    assert processor.chat_template == scaffold.CHAT_TEMPLATE


def test_special_tokens_follow_the_learned_vocab_in_qwen_order(processor, tiny_checkpoint: Path) -> None:
    tokenizer = processor.tokenizer
    learned = json.loads((tiny_checkpoint / "vocab.json").read_text(encoding="utf-8"))
    assert len(learned) == TINY_LEARNED_VOCAB
    assert not set(scaffold.SPECIAL_TOKENS) & set(learned)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in scaffold.SPECIAL_TOKENS]
    assert ids == list(range(TINY_LEARNED_VOCAB, TINY_LEARNED_VOCAB + 6))
    assert len(tokenizer) == TINY_LEARNED_VOCAB + 6
    for token, token_id in zip(scaffold.SPECIAL_TOKENS, ids, strict=True):
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    generation = GenerationConfig.from_pretrained(tiny_checkpoint)
    assert generation.eos_token_id == [ids[2], ids[0]]
    assert generation.pad_token_id == ids[0]


@pytest.mark.parametrize(
    "text",
    [
        "Set an alarm for 6:30, please.",
        "It's 30°C at the café — naïve €5 price!",
        "digits 0123456789 and 3.14159",
        "tabs\tand   runs  of    spaces\n\n\nnewlines  ",
        "unseen script: 日本語 ありがとう, emoji 🎧",
    ],
)
def test_encode_decode_round_trips(processor, text: str) -> None:
    tokenizer = processor.tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert all(0 <= i < TINY_LEARNED_VOCAB for i in ids)
    assert tokenizer.decode(ids) == text


def test_specials_survive_inside_text(processor) -> None:
    tokenizer = processor.tokenizer
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def _byte_level(piece: str) -> str:
    # GPT-2 byte-to-unicode table: printable bytes map to themselves, the rest to 256 + n.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return "".join(table[b] for b in piece.encode("utf-8"))


def test_pretokenizer_splits_like_qwen2(processor) -> None:
    regex = pytest.importorskip("regex")
    pre_tokenizer = processor.tokenizer.backend_tokenizer.pre_tokenizer

    def pieces(text: str) -> list[str]:
        return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]

    assert pieces("12345") == ["1", "2", "3", "4", "5"]
    assert pieces("it's") == ["it", "'s"]
    assert pieces("We'LL go") == ["We", "'LL", "Ġgo"]
    for text in [
        "He's got 12345 apples, isn't it?  Yes!!\n\n  ok",
        "Call me at 10:45 — café naïve 30°C €5\r\nBye...",
        "   leading spaces and trailing   ",
    ]:
        assert pieces(text) == [_byte_level(p) for p in regex.findall(PRETOKENIZE_REGEX, text)]


def test_chat_template_renders_like_qwen2_audio_default(processor) -> None:
    default = Qwen2AudioProcessor.default_chat_template.fget(None)
    conversations = [
        [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "What's that?"}]}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "audio", "audio_url": "a.wav"}, {"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Glass breaking."},
            {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "audio", "audio": "b.wav"}]},
        ],
        [{"role": "user", "content": "plain text turn"}],
    ]
    for messages in conversations:
        for add_generation_prompt in (True, False):
            ours = processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
            reference = processor.apply_chat_template(
                messages, chat_template=default, add_generation_prompt=add_generation_prompt, tokenize=False
            )
            assert ours == reference
    rendered = processor.apply_chat_template(conversations[0], add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat's that?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_processor_expands_audio_and_model_runs(processor, model) -> None:
    content = [{"type": "audio", "audio": "clip.wav"}, {"type": "text", "text": "Transcribe."}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|audio_bos|><|AUDIO|><|audio_eos|>" in text
    waveform = (0.1 * np.random.default_rng(0).standard_normal(3 * 16000)).astype(np.float32)
    inputs = processor(text=text, audio=waveform, sampling_rate=16000, return_tensors="pt")

    mel_frames = 3 * 16000 // 160
    expected_audio_tokens = (((mel_frames - 1) // 2 + 1) - 2) // 2 + 1
    assert int(inputs["feature_attention_mask"].sum()) == mel_frames
    assert inputs["input_features"].shape == (1, 128, 10 * 100)
    _, encoder_lengths = model.model.audio_tower._get_feat_extract_output_lengths(torch.tensor([mel_frames]))
    assert int(encoder_lengths) == expected_audio_tokens == 75
    audio_id = model.config.audio_token_id
    assert int((inputs["input_ids"] == audio_id).sum()) == expected_audio_tokens

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_train_tokenizer_appends_specials_after_learned_vocab() -> None:
    tokenizer = scaffold.train_tokenizer(scaffold.SAMPLE_TEXTS[:40], vocab_size=320)
    assert len(tokenizer) == 320 + len(scaffold.SPECIAL_TOKENS)
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 320
    assert tokenizer.convert_tokens_to_ids("<|audio_eos|>") == 325
    assert tokenizer.chat_template == scaffold.CHAT_TEMPLATE


def test_model_config_follows_window_and_tokenizer() -> None:
    tokenizer = scaffold.train_tokenizer(scaffold.SAMPLE_TEXTS[:40], vocab_size=300)
    sizes = dict(
        encoder_layers=1, encoder_d_model=32, encoder_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_hidden=32, decoder_heads=2, decoder_kv_heads=1, decoder_ffn_dim=64,
    )  # fmt: skip
    config = scaffold.model_config(tokenizer, **sizes)
    assert config.audio_config.max_source_positions == 1500
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.audio_token_id == tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert config.text_config.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    padded = scaffold.model_config(tokenizer, window_seconds=4, vocab_size=512, **sizes)
    assert padded.audio_config.max_source_positions == 200 and padded.text_config.vocab_size == 512
    with pytest.raises(ValueError):
        scaffold.model_config(tokenizer, vocab_size=10, **sizes)
    with pytest.raises(NotImplementedError):
        scaffold.model_config(tokenizer, tie_word_embeddings=True, **sizes)


def test_weights_depend_only_on_seed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    again = scaffold.tiny_checkpoint(tmp_path / "same")
    other = scaffold.tiny_checkpoint(tmp_path / "other", seed=1)
    name = "language_model.model.layers.0.self_attn.q_proj.weight"

    def tensor(folder: Path):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            return handle.get_tensor(name)

    assert torch.equal(tensor(tiny_checkpoint), tensor(again))
    assert not torch.equal(tensor(tiny_checkpoint), tensor(other))


def test_dummy_checkpoint_is_streamed_and_loads(tmp_path):
    """The layer-by-layer writer gives a sharded checkpoint that transformers and edgelalm load."""
    from edgelalm.export.checkpoint import open_checkpoint

    tokenizer = scaffold.train_tokenizer(scaffold.SAMPLE_TEXTS[:30], vocab_size=300)
    shapes = {**scaffold.PRESETS["tiny"], "decoder_layers": 3, "vocab_size": 320}
    config = scaffold.model_config(tokenizer, **shapes)
    out = scaffold.write_dummy_checkpoint(tmp_path / "dummy", config, tokenizer)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) == 3 + 4  # one per decoder layer + audio tower, projector, embeddings+norm, lm_head
    assert all(
        name.startswith(("audio_tower.", "multi_modal_projector.", "language_model.")) for name in index["weight_map"]
    )
    # a real checkpoint names its class; llama.cpp's converter fails without it ("Failed to detect
    # model architecture": the `small` preset's mtmd rows once did)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2AudioForConditionalGeneration"]
    model = Qwen2AudioForConditionalGeneration.from_pretrained(out)
    assert model.model.language_model.embed_tokens.weight.shape == (320, 64)
    assert model.dtype == torch.float16
    norm = model.model.language_model.layers[0].input_layernorm.weight
    assert torch.equal(norm, torch.ones_like(norm))
    checkpoint = open_checkpoint(out)
    assert checkpoint.load_audio_tower().conv1.weight.shape == (64, 128, 3)
    assert len(checkpoint.decoder_tensor_keys()) == len(
        [k for k in index["weight_map"] if k.startswith("language_model.")]
    )


def test_the_contract_lists_the_presets_and_quant_types_the_code_has():
    """edgelalm.constants is where the CLI reads its choices: it must name what the code implements."""
    from edgelalm.constants import QUANT_TYPES, SCAFFOLD_PRESETS
    from edgelalm.export.decoder import _LLAMA_FTYPE_NAMES

    assert tuple(scaffold.PRESETS) == SCAFFOLD_PRESETS
    assert tuple(_LLAMA_FTYPE_NAMES) == QUANT_TYPES


def test_the_chat_template_file_renders_the_default_system_prompt():
    rendered = scaffold.write_processor  # the template is data (src/edgelalm/data/chatml_qwen2_audio.jinja)
    assert rendered and scaffold.DEFAULT_SYSTEM_PROMPT in scaffold.CHAT_TEMPLATE
