"""recipes/default_model/stage_weights.py: a stage kept in git rebuilds its checkpoint, and two
stages of one init average tensor by tensor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "default_model" / "stage_weights.py"


def stage_weights(*arguments: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, arguments)], capture_output=True, text=True)


def trained_copy(init: Path, out: Path, seed: int) -> dict[str, torch.Tensor]:
    """`init` with every tensor outside the audio tower moved, as training would (fp16-exact values)."""
    shutil.copytree(init, out)
    generator = torch.Generator().manual_seed(seed)
    weights = load_file(init / "model.safetensors")
    for name, tensor in weights.items():
        if "audio_tower." not in name:
            moved = tensor + 0.01 * torch.randn(tensor.shape, generator=generator)
            weights[name] = moved.to(torch.float16).to(tensor.dtype)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return weights


def test_a_stage_packs_unpacks_and_two_average(tiny_checkpoint, tmp_path):
    first = trained_copy(tiny_checkpoint, tmp_path / "a", 0)
    second = trained_copy(tiny_checkpoint, tmp_path / "b", 1)
    init = ("--init", tiny_checkpoint)
    assert stage_weights("pack", tmp_path / "a", *init, "--out", tmp_path / "stage").returncode == 0
    assert stage_weights("unpack", tmp_path / "stage", *init, "--out", tmp_path / "again").returncode == 0
    rebuilt = load_file(tmp_path / "again" / "model.safetensors")
    assert rebuilt.keys() == first.keys() and all(torch.equal(rebuilt[n], first[n]) for n in first)

    done = stage_weights("average", tmp_path / "a", "--with", tmp_path / "b", "--out", tmp_path / "mean")
    assert done.returncode == 0, done.stderr
    mean = load_file(tmp_path / "mean" / "model.safetensors")
    for name, tensor in first.items():
        torch.testing.assert_close(mean[name], (tensor.double() + second[name].double()).div(2).to(tensor.dtype))
    assert (tmp_path / "mean" / "tokenizer.json").read_bytes() == (tmp_path / "a" / "tokenizer.json").read_bytes()
    # the tower stays the init's, so the mean packs as a stage of its own
    assert stage_weights("pack", tmp_path / "mean", *init, "--out", tmp_path / "mean-stage").returncode == 0

    weighed = stage_weights(
        "average", tmp_path / "a", "--with", tmp_path / "b", "--share", "0.3", "--out", tmp_path / "w"
    )
    assert weighed.returncode == 0, weighed.stderr
    mix = load_file(tmp_path / "w" / "model.safetensors")
    for name, tensor in first.items():
        expected = (0.3 * tensor.double() + 0.7 * second[name].double()).to(tensor.dtype)
        torch.testing.assert_close(mix[name], expected)
    # the runs' CTC heads beside their checkpoints average the same way, beside the output
    heads = []
    for run, folder, seed in (("run-a", "a", 2), ("run-b", "b", 3)):
        shutil.copytree(tmp_path / folder, tmp_path / run / "final")
        generator = torch.Generator().manual_seed(seed)
        head = {"blank": torch.randn(8, generator=generator), "log_scale": torch.randn((), generator=generator)}
        save_file(head, tmp_path / run / "ctc_head.safetensors")
        heads.append(head)
    both = ("--with", tmp_path / "run-b" / "final", "--share", "0.3", "--out", tmp_path / "run-w" / "final")
    assert stage_weights("average", tmp_path / "run-a" / "final", *both).returncode == 0
    mean_head = load_file(tmp_path / "run-w" / "ctc_head.safetensors")
    for name, tensor in heads[0].items():
        torch.testing.assert_close(mean_head[name], 0.3 * tensor + 0.7 * heads[1][name])
    assert mean_head["log_scale"].shape == ()  # as TokenCtc saves and loads it
    # a head with layers keeps the metadata that says their shape; heads of two shapes are refused
    shape = {"edgelalm_ctc_attention_span": "8", "edgelalm_ctc_attention_heads": "2"}
    for run, head in zip(("run-a", "run-b"), heads, strict=True):
        save_file({**head, "layers.norm.weight": torch.ones(8)}, tmp_path / run / "ctc_head.safetensors", shape)
    assert stage_weights("average", tmp_path / "run-a" / "final", *both).returncode == 0
    with safe_open(tmp_path / "run-w" / "ctc_head.safetensors", "pt") as layered:
        assert layered.metadata() == shape and "layers.norm.weight" in layered.keys()
    save_file(heads[1], tmp_path / "run-b" / "ctc_head.safetensors")
    unlike = ("--with", tmp_path / "run-b" / "final", "--out", tmp_path / "run-x" / "final")
    refused_heads = stage_weights("average", tmp_path / "run-a" / "final", *unlike)
    assert refused_heads.returncode != 0 and "different shapes" in refused_heads.stderr
    assert not (tmp_path / "run-x").exists()
    headless = stage_weights("average", tmp_path / "a", *both[:2], "--out", tmp_path / "half" / "final")
    assert headless.returncode == 0 and "starts a fresh one" in headless.stdout
    assert not (tmp_path / "half" / "ctc_head.safetensors").exists()

    out_of_range = stage_weights(
        "average", tmp_path / "a", "--with", tmp_path / "b", "--share", "1.5", "--out", tmp_path / "bad"
    )
    assert out_of_range.returncode != 0 and "--share" in out_of_range.stderr
    assert not (tmp_path / "bad").exists()

    (tmp_path / "b" / "tokenizer.json").write_text("{}")
    refused = stage_weights("average", tmp_path / "a", "--with", tmp_path / "b", "--out", tmp_path / "bad")
    assert refused.returncode != 0 and "different tokenizers" in refused.stderr
    assert not (tmp_path / "bad").exists()
    missing = stage_weights("average", tmp_path / "a", "--out", tmp_path / "bad")
    assert missing.returncode != 0 and "--with" in missing.stderr
