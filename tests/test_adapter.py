"""LoRA adapter reading, validation and per-tensor merge, checked against peft's own merge."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edgelalm.errors import EdgelalmError
from edgelalm.export.adapter import LoraAdapter, open_adapter
from edgelalm.export.checkpoint import open_checkpoint

PAPER_TARGETS = r".*language_model.*\.(q_proj|k_proj)"
ALL_LINEAR_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head"
# Adapter variants: name -> LoraConfig arguments.
VARIANTS: dict[str, dict] = {
    "paper": dict(r=16, lora_alpha=32, target_modules=PAPER_TARGETS),
    "rslora": dict(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=PAPER_TARGETS + "|.*language_model.*v_proj",
        alpha_pattern={r"layers\.0\.self_attn\.k_proj": 7},
    ),
    "patterns": dict(
        r=8,
        lora_alpha=16,
        target_modules=ALL_LINEAR_TARGETS,
        rank_pattern={"o_proj": 4, r"layers\.1\.self_attn\.q_proj": 2},
        alpha_pattern={"down_proj": 3, "lm_head": 5},
    ),
}
TEXT_TOKENS = 600  # the tiny tokenizer's learned vocabulary; special tokens (audio included) follow


@dataclass
class Decoder:
    shapes: dict[str, tuple[int, ...]]  # canonical name -> shape, as bundle.py builds it
    weights: dict[str, torch.Tensor]  # canonical name -> base weight


@dataclass
class SavedAdapter:
    variant: str
    path: Path
    peft_logits: torch.Tensor  # adapter active, unmerged
    merged: dict[str, torch.Tensor]  # canonical name -> weight after peft's merge_and_unload


def canonical_name(in_memory_name: str) -> str | None:
    """transformers 5 Qwen2-Audio parameter name -> canonical decoder name (None outside the decoder)."""
    if in_memory_name.startswith("model.language_model."):
        return "model." + in_memory_name.removeprefix("model.language_model.")
    if in_memory_name.startswith("lm_head."):
        return in_memory_name
    return None


def in_memory_name(canonical: str) -> str:
    return canonical if canonical.startswith("lm_head.") else "model.language_model." + canonical.removeprefix("model.")


def input_ids() -> torch.Tensor:
    return torch.randint(0, TEXT_TOKENS, (2, 12), generator=torch.Generator().manual_seed(1))


def load_model(checkpoint_dir: Path):
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint_dir, dtype=torch.float32).eval()


def lora_model(model, seed: int = 0, **lora_arguments):
    """peft-wrapped `model` whose LoRA factors are all random and non-zero (peft starts B at zero)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(**lora_arguments))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return peft_model.eval()


def save_adapter(checkpoint_dir: Path, out_dir: Path, **lora_arguments) -> Path:
    lora_model(load_model(checkpoint_dir), **lora_arguments).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def decoder(tiny_checkpoint: Path) -> Decoder:
    checkpoint = open_checkpoint(tiny_checkpoint)
    stored = checkpoint.decoder_tensor_keys()
    return Decoder(
        shapes={name: checkpoint.tensor_shape(key) for name, key in stored.items()},
        weights={name: checkpoint.tensor(key).float() for name, key in stored.items()},
    )


@pytest.fixture(scope="module", params=list(VARIANTS))
def saved_adapter(request, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> SavedAdapter:
    peft_model = lora_model(load_model(tiny_checkpoint), **VARIANTS[request.param])
    adapted = [name for name, _ in peft_model.named_modules() if name.endswith(".lora_A")]
    assert adapted and not any("audio_tower" in name for name in adapted)
    path = tmp_path_factory.mktemp(f"adapter_{request.param}")
    peft_model.save_pretrained(path)
    with torch.no_grad():
        peft_logits = peft_model(input_ids=input_ids()).logits
    merged_model = peft_model.merge_and_unload()
    merged = {canonical_name(k): v.clone() for k, v in merged_model.state_dict().items() if canonical_name(k)}
    return SavedAdapter(variant=request.param, path=path, peft_logits=peft_logits, merged=merged)


@pytest.fixture(scope="module")
def paper_adapter(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_adapter(tiny_checkpoint, tmp_path_factory.mktemp("adapter_paper"), **VARIANTS["paper"])


def test_delta_matches_peft_merge(saved_adapter: SavedAdapter, decoder: Decoder) -> None:
    adapter = open_adapter(saved_adapter.path, decoder.shapes)
    adapted = set()
    worst = 0.0
    for name, base in decoder.weights.items():
        delta = adapter.delta(name)
        expected = saved_adapter.merged[name]
        if delta is None:
            assert torch.equal(base, expected), f"{name} changed by peft's merge but has no delta"
            continue
        adapted.add(name)
        assert delta.dtype == torch.float32 and delta.shape == base.shape
        difference = (base + delta - expected).abs().max().item()
        worst = max(worst, difference)
        assert difference < 1e-6, f"{name}: max |merged - peft merged| = {difference:.2e}"
        assert not torch.equal(base, expected)
    assert adapted == {name + ".weight" for name in adapter.target_modules}
    print(f"max |base + delta - peft merge_and_unload| = {worst:.3e}")


def test_adapted_modules_per_variant(saved_adapter: SavedAdapter, decoder: Decoder) -> None:
    adapter = open_adapter(saved_adapter.path, decoder.shapes)
    variant = saved_adapter.variant
    summary = adapter.describe()["target_modules"]
    assert summary["layers"] == 2
    expected_projections = {
        "paper": ["self_attn.k_proj", "self_attn.q_proj"],
        "rslora": ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
        "patterns": sorted([f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]),
    }[variant]
    assert summary["layer_modules"] == expected_projections
    assert summary["other_modules"] == (["lm_head"] if variant == "patterns" else [])
    if variant == "patterns":
        scalings = {name: module.scaling for name, module in adapter.modules.items()}
        assert scalings["model.layers.0.self_attn.o_proj.weight"] == 16 / 4
        assert scalings["model.layers.1.self_attn.q_proj.weight"] == 16 / 2
        assert scalings["model.layers.0.self_attn.q_proj.weight"] == 16 / 8
        assert scalings["model.layers.1.mlp.down_proj.weight"] == 3 / 8
        assert scalings["lm_head.weight"] == 5 / 8
    if variant == "rslora":
        assert adapter.describe()["scaling_rule"] == "alpha / sqrt(r)"
        assert adapter.modules["model.layers.0.self_attn.k_proj.weight"].scaling == 7 / 8**0.5
        assert adapter.modules["model.layers.1.self_attn.k_proj.weight"].scaling == 16 / 8**0.5


def test_merged_logits_match_peft(saved_adapter: SavedAdapter, tiny_checkpoint: Path, decoder: Decoder) -> None:
    adapter = open_adapter(saved_adapter.path, decoder.shapes)
    model = load_model(tiny_checkpoint)
    state = model.state_dict()
    for name, base in decoder.weights.items():
        delta = adapter.delta(name)
        if delta is not None:
            state[in_memory_name(name)] = base + delta
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model(input_ids=input_ids()).logits
        base_logits = load_model(tiny_checkpoint)(input_ids=input_ids()).logits
    assert not torch.allclose(base_logits, saved_adapter.peft_logits, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(logits, saved_adapter.peft_logits, rtol=1e-5, atol=1e-5)


def test_describe(paper_adapter: Path, decoder: Decoder) -> None:
    adapter = open_adapter(paper_adapter, decoder.shapes)
    description = adapter.describe()
    file_hash = hashlib.sha256((paper_adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert (adapter.rank, adapter.alpha, adapter.sha256) == (16, 32.0, file_hash)
    assert description["rank"] == 16 and description["alpha"] == 32.0
    assert description["scaling_rule"] == "alpha / r" and description["scaling"] == 2.0
    assert description["sha256"] == file_hash and description["peft_type"] == "LORA"
    assert description["target_modules"] == {
        "layer_modules": ["self_attn.k_proj", "self_attn.q_proj"],
        "layers": 2,
        "other_modules": [],
        "count": 4,
    }
    assert description["base_model"] is not None
    json.dumps(description)
    assert adapter.target_modules == tuple(f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in ("k", "q"))
    assert adapter.delta("model.layers.0.self_attn.v_proj.weight") is None
    assert adapter.delta("model.layers.0.self_attn.q_proj.bias") is None
    assert adapter.delta("model.norm.weight") is None


def rewrite_adapter(source: Path, target: Path, rename=lambda key: key, config_changes: dict | None = None) -> Path:
    """Copy of `source` with renamed tensor keys and/or changed config fields."""
    target.mkdir()
    with safe_open(str(source / "adapter_model.safetensors"), framework="pt") as weights:
        tensors = {rename(key): weights.get_tensor(key) for key in weights.keys()}
    save_file(tensors, str(target / "adapter_model.safetensors"))
    config = json.loads((source / "adapter_config.json").read_text())
    config.update(config_changes or {})
    (target / "adapter_config.json").write_text(json.dumps(config))
    return target


TRANSFORMERS_5 = "base_model.model.model.language_model."
KEY_NAMINGS = {
    "release (transformers 4)": lambda key: key.replace(TRANSFORMERS_5, "base_model.model.language_model.model."),
    "bare Qwen2ForCausalLM": lambda key: key.replace(TRANSFORMERS_5, "base_model.model.model."),
    "with adapter name": lambda key: re.sub(r"\.lora_([AB])\.weight$", r".lora_\1.default.weight", key),
    "transformers-integrated (no prefix)": lambda key: key.removeprefix("base_model.model."),
}


@pytest.mark.parametrize("naming", list(KEY_NAMINGS))
def test_key_namings(naming: str, paper_adapter: Path, decoder: Decoder, tmp_path: Path) -> None:
    reference = open_adapter(paper_adapter, decoder.shapes)
    renamed = open_adapter(rewrite_adapter(paper_adapter, tmp_path / "renamed", KEY_NAMINGS[naming]), decoder.shapes)
    assert renamed.target_modules == reference.target_modules
    for name in decoder.shapes:
        expected, actual = reference.delta(name), renamed.delta(name)
        assert (expected is None) == (actual is None)
        if expected is not None:
            assert torch.equal(expected, actual)


def test_release_naming_lm_head(tiny_checkpoint: Path, decoder: Decoder, tmp_path: Path) -> None:
    source = save_adapter(tiny_checkpoint, tmp_path / "source", r=4, lora_alpha=8, target_modules=["lm_head"])
    renamed = rewrite_adapter(
        source, tmp_path / "renamed", lambda key: key.replace("base_model.model.", "base_model.model.language_model.")
    )
    assert open_adapter(renamed, decoder.shapes).target_modules == ("lm_head",)


# ---- refusals ----------------------------------------------------------------------------------------------


def refused(path: Path, shapes: dict[str, tuple[int, ...]], fragment: str) -> str:
    with pytest.raises(EdgelalmError, match=fragment) as caught:
        open_adapter(path, shapes)
    return str(caught.value)


def test_refuses_audio_tower(tiny_checkpoint: Path, decoder: Decoder, tmp_path: Path) -> None:
    adapter = save_adapter(tiny_checkpoint, tmp_path / "audio", r=4, lora_alpha=8, target_modules=["q_proj"])
    message = refused(adapter, decoder.shapes, "audio tower")
    assert "only the language model" in message


def test_refuses_projector(paper_adapter: Path, decoder: Decoder, tmp_path: Path) -> None:
    projector = rewrite_adapter(
        paper_adapter,
        tmp_path / "projector",
        lambda key: key.replace("model.language_model.layers.0.self_attn.q_proj", "model.multi_modal_projector.linear"),
    )
    refused(projector, decoder.shapes, "projector.*only the language model")


def test_refuses_adapter_for_another_model(tiny_checkpoint: Path, decoder: Decoder, tmp_path: Path) -> None:
    from transformers import Qwen2AudioForConditionalGeneration

    from edgelalm.scaffold import SAMPLE_TEXTS, model_config, train_tokenizer

    config = model_config(
        train_tokenizer(SAMPLE_TEXTS, vocab_size=600),
        window_seconds=10,
        encoder_layers=1,
        encoder_d_model=64,
        encoder_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=2,
        decoder_hidden=32,
        decoder_heads=4,
        decoder_kv_heads=2,
        decoder_ffn_dim=64,
    )
    torch.manual_seed(0)
    narrow = Qwen2AudioForConditionalGeneration(config).eval()
    lora_model(narrow, **VARIANTS["paper"]).save_pretrained(tmp_path / "narrow")
    message = refused(tmp_path / "narrow", decoder.shapes, "an adapter for another model")
    assert "model.layers.0.self_attn.k_proj.weight (32, 64)" in message and "(16, 32)" in message


def test_refuses_target_outside_the_language_model(paper_adapter: Path, decoder: Decoder, tmp_path: Path) -> None:
    renamed = rewrite_adapter(paper_adapter, tmp_path / "other", lambda key: key.replace("q_proj", "qkv_proj"))
    refused(renamed, decoder.shapes, r"model\.layers\.0\.self_attn\.qkv_proj, which is not a linear layer")


def test_refuses_rank_disagreeing_with_tensors(paper_adapter: Path, decoder: Decoder, tmp_path: Path) -> None:
    changed = rewrite_adapter(paper_adapter, tmp_path / "rank", config_changes={"r": 8})
    refused(changed, decoder.shapes, r"rank in adapter_config.json \(8 for")


def test_refuses_dora(tiny_checkpoint: Path, decoder: Decoder, tmp_path: Path) -> None:
    adapter = save_adapter(
        tiny_checkpoint, tmp_path / "dora", r=4, lora_alpha=8, use_dora=True, target_modules=PAPER_TARGETS
    )
    refused(adapter, decoder.shapes, "DoRA")


def test_refuses_embedding_lora(tiny_checkpoint: Path, decoder: Decoder, tmp_path: Path) -> None:
    adapter = save_adapter(
        tiny_checkpoint, tmp_path / "embedding", r=4, lora_alpha=8, target_modules=r".*language_model\.embed_tokens"
    )
    refused(adapter, decoder.shapes, r"embedding LoRA \(lora_embedding_A/B\)")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"peft_type": "IA3"}, "'IA3' adapter, not LoRA"),
        ({"lora_bias": True}, "lora_bias"),
        ({"bias": "all"}, "bias='all'"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"use_dora": True}, "DoRA"),
        ({"init_lora_weights": "pissa"}, "rewrites the base weights"),
        ({"r": "16"}, "r must be a positive integer"),
        # A nested quantifier backtracked for ever on the module paths: export hung.
        ({"rank_pattern": {"(.*)*X": 16}}, "is too complex a pattern"),
        ({"alpha_pattern": {".*a.*b.*c": 8}}, "is too complex a pattern"),
        # alpha 1e308 overflowed the adapter GGUF's float32 (a traceback); NaN merged as NaN.
        ({"lora_alpha": 1e308}, r"lora_alpha must be a number above 0 and at most 1e\+06"),
        ({"alpha_pattern": {"q_proj": float("inf")}}, "is not valid"),
    ],
)
def test_refuses_unsupported_config(
    changes: dict, fragment: str, paper_adapter: Path, decoder: Decoder, tmp_path: Path
) -> None:
    refused(rewrite_adapter(paper_adapter, tmp_path / "changed", config_changes=changes), decoder.shapes, fragment)


def test_refuses_several_adapter_names(paper_adapter: Path, decoder: Decoder, tmp_path: Path) -> None:
    def two_names(key: str) -> str:
        name = "default" if ".layers.0." in key else "other"
        return key.replace(".lora_A.", f".lora_A.{name}.").replace(".lora_B.", f".lora_B.{name}.")

    two = rewrite_adapter(paper_adapter, tmp_path / "two", two_names)
    refused(two, decoder.shapes, r"several adapters \(default, other\)")


def test_refuses_corrupt_safetensors(paper_adapter: Path, decoder: Decoder, tmp_path: Path) -> None:
    garbage = shutil.copytree(paper_adapter, tmp_path / "garbage")
    (garbage / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    refused(garbage, decoder.shapes, "not a readable safetensors file")
    truncated = shutil.copytree(paper_adapter, tmp_path / "truncated")
    data = (paper_adapter / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    refused(truncated, decoder.shapes, "not a readable safetensors file")


def test_refuses_invalid_config_json(paper_adapter: Path, decoder: Decoder, tmp_path: Path) -> None:
    broken = shutil.copytree(paper_adapter, tmp_path / "broken")
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA",')
    refused(broken, decoder.shapes, "adapter_config.json is not valid JSON")


def test_refuses_missing_config(paper_adapter: Path, decoder: Decoder, tmp_path: Path) -> None:
    no_config = shutil.copytree(paper_adapter, tmp_path / "no_config")
    (no_config / "adapter_config.json").unlink()
    refused(no_config, decoder.shapes, "it has no adapter_config.json")


def test_refuses_missing_folder(decoder: Decoder, tmp_path: Path) -> None:
    refused(tmp_path / "absent", decoder.shapes, "adapter folder not found")


def test_refuses_bin_only_folder(paper_adapter: Path, decoder: Decoder, tmp_path: Path) -> None:
    bin_only = shutil.copytree(paper_adapter, tmp_path / "bin_only")
    (bin_only / "adapter_model.safetensors").unlink()
    # Not a valid pickle: were it ever unpickled, the error would not be the refusal below.
    (bin_only / "adapter_model.bin").write_bytes(b"never unpickled")
    refused(bin_only, decoder.shapes, r"only pickle adapter weights \(adapter_model.bin\)")


def test_adapter_type(paper_adapter: Path, decoder: Decoder) -> None:
    adapter = open_adapter(paper_adapter, decoder.shapes)
    assert isinstance(adapter, LoraAdapter)
    with pytest.raises(AttributeError):
        adapter.rank = 4  # frozen
