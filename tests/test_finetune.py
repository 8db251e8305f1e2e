"""`edgelalm finetune`: LoRA realignment with a compressor in place, written as a peft folder that
peft itself loads and `export --adapter` merges; the WER scorer against hand-counted edits."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PAIRED_TEXTS
from safetensors.torch import load_file
from transformers import AutoConfig

from edgelalm.compression import CompressorSpec
from edgelalm.training.evaluate import score, word_errors
from edgelalm.training.finetune import FinetuneOptions, finetune

# Minutes of export, training or benchmarking: `pytest -m 'not slow'` skips them locally; CI runs all.
pytestmark = pytest.mark.slow

TEXTS = PAIRED_TEXTS


@pytest.fixture(scope="module")
def adapter(tiny_checkpoint, paired_tsv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finetuned") / "unseg"
    options = FinetuneOptions(
        tiny_checkpoint, paired_tsv, out, CompressorSpec("unseg", 1), steps=12, batch_size=4, learning_rate=1e-2
    )
    return finetune(options, progress=False)


def test_finetune_writes_a_peft_adapter_on_language_model_q_and_k(adapter):
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 32)
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert tensors and all("language_model" in name and ("q_proj" in name or "k_proj" in name) for name in tensors)
    # peft initialises B to zero; training moved it.
    assert any(float(t.abs().max()) > 0 for name, t in tensors.items() if "lora_B" in name)
    meta = json.loads((adapter / "edgelalm_finetune.json").read_text())
    assert meta["compressor"] == "unseg" and meta["clips"] == len(TEXTS)
    assert meta["prompt_format"] == "instruct"  # what export checks the bundle's against


def test_finetune_adapts_the_named_projections_of_the_language_model_only(tiny_checkpoint, paired_tsv, tmp_path):
    options = FinetuneOptions(
        tiny_checkpoint,
        paired_tsv,
        tmp_path / "adapter",
        CompressorSpec("avg", 2),
        steps=2,
        batch_size=4,
        lora_modules=("v_proj", "o_proj", "down_proj"),
    )
    tensors = load_file(finetune(options, progress=False) / "adapter_model.safetensors")
    # The tower has v_proj too, and out_proj/fc2 where the decoder has o_proj/down_proj: none adapted.
    adapted = {name.split(".lora_")[0] for name in tensors}
    layers = AutoConfig.from_pretrained(tiny_checkpoint).text_config.num_hidden_layers
    assert adapted == {
        f"base_model.model.model.language_model.layers.{layer}.{part}"
        for layer in range(layers)
        for part in ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")
    }
    meta = json.loads((tmp_path / "adapter" / "edgelalm_finetune.json").read_text())
    assert meta["lora_modules"] == ["v_proj", "o_proj", "down_proj"]


def test_finetune_lowers_the_loss(adapter):
    records = [json.loads(line) for line in (adapter / "train_log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 12
    first = json.loads((adapter / "train_log.jsonl").read_text().splitlines()[0])
    assert records[-1]["answer_loss"] < first["answer_loss"]


def test_peft_loads_the_adapter_and_export_merges_it(adapter, tiny_checkpoint, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2AudioForConditionalGeneration

    base = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    reference = base.model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    assert not torch.equal(merged.model.language_model.layers[0].self_attn.q_proj.weight, reference)

    out = tmp_path / "bundle"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgelalm.cli",
            "export",
            "--model",
            str(tiny_checkpoint),
            "--compressor",
            "unseg",
            "--adapter",
            str(adapter),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decoder"]["adapter"]["rank"] == 16


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgelalm.cli", "finetune", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_data", "training data not found"),
        ("data_a_device", "/dev/null is no file or folder"),  # "not found"
        ("bad_tsv", "'file' and 'transcript'"),
        ("missing_clip", "audio file not found"),
        ("not_audio", "cannot read audio"),
        # Not "already exists (--force replaces it)": --force would refuse a folder of the user's files too.
        ("out_exists", "holds files and no adapter_config.json: not an earlier output"),
        ("not_a_checkpoint", "config.json"),
        ("unknown_lora_module", "lm_head; choose among q_proj, k_proj"),
        # An infinite or NaN rate trained every weight to NaN and saved it with exit 0.
        ("learning_rate_inf", "the learning rate must be above 0 and at most 1, got inf"),
        ("learning_rate_nan", "the learning rate must be above 0 and at most 1, got nan"),
        ("alpha_inf", "alpha above 0 and at most 1e+06"),
        ("rank_past_width", "--rank 100000 is past the adapted projections' smaller side"),
        # A row short of a field gave None for its transcript: an AttributeError traceback.
        ("short_row", "line 3 has 1 fields; the header names 2"),
        # 100000-character transcripts trained for ever (2 GB and growing).
        ("huge_transcript", "transcript is"),
        ("adapter_in_a_working_folder", "holds keep.txt beside an earlier output"),
        # only folders of the frozen tower's output join (a TSV's audio would need the tower)
        ("more_data_beside_a_tsv", "--more-data joins folders of the frozen tower's output"),
        # export takes a list of compressors (one bundle, several adapters); an adapter realigns to one
        ("compressor_list", "finetune realigns to one compressor at a time"),
        ("compressor_factor_conflict", "compressor 'avg3' says K=3 but the factor given is 2"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(case, expected, tiny_checkpoint, paired_tsv, tmp_path):
    out = tmp_path / "adapter"
    data, model = str(paired_tsv), str(tiny_checkpoint)
    if case == "missing_data":
        data = str(tmp_path / "nothing.tsv")
    elif case == "data_a_device":
        data = "/dev/null"
    elif case == "bad_tsv":
        (tmp_path / "bad.tsv").write_text("path\ttext\nclip0.wav\thello\n")
        data = str(tmp_path / "bad.tsv")
    elif case in ("missing_clip", "not_audio"):
        # every file is checked before training starts, though samples are read lazily
        shutil.copy(paired_tsv.parent / "clip0.wav", tmp_path / "clip0.wav")
        if case == "not_audio":
            (tmp_path / "clip1.wav").write_text("not audio")
        (tmp_path / "pairs.tsv").write_text("file\ttranscript\nclip0.wav\tcall anna\nclip1.wav\tset a timer\n")
        data = str(tmp_path / "pairs.tsv")
    elif case == "out_exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "not_a_checkpoint":
        model = str(tmp_path)
    elif case in ("short_row", "huge_transcript"):
        shutil.copy(paired_tsv.parent / "clip0.wav", tmp_path / "clip0.wav")
        second = "clip0.wav" if case == "short_row" else "clip0.wav\t" + "word " * 20000
        (tmp_path / "pairs.tsv").write_text(f"file\ttranscript\nclip0.wav\tcall anna\n{second}\n")
        data = str(tmp_path / "pairs.tsv")
    elif case == "adapter_in_a_working_folder":
        out.mkdir()
        (out / "adapter_config.json").write_text("{}")
        (out / "keep.txt").write_text("mine")
    extra = {
        "unknown_lora_module": ["--lora-modules", "q_proj,lm_head"],
        "learning_rate_inf": ["--learning-rate", "inf"],
        "learning_rate_nan": ["--learning-rate", "nan"],
        "alpha_inf": ["--alpha", "inf"],
        "rank_past_width": ["--rank", "100000"],
        "adapter_in_a_working_folder": ["--force"],
        "more_data_beside_a_tsv": ["--more-data", str(paired_tsv)],
        "compressor_list": ["--compressor", "avg3,unseg"],
        "compressor_factor_conflict": ["--compressor", "avg3", "--factor", "2"],
    }.get(case, [])
    result = run_cli("--model", model, "--data", data, "--out", str(out), "--steps", "1", "--batch-size", "1", *extra)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("edgelalm: error:") and expected in lines[-1], result.stderr
    # refused before the weights load and transformers' progress bar (the data's contents and the
    # rank were checked after it: minutes for a 7B)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    if case == "out_exists":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    elif case == "adapter_in_a_working_folder":
        assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "keep.txt"]
    else:
        assert not out.exists()


def test_a_factor_written_in_the_compressor_name_as_export_takes_it(tiny_checkpoint, paired_tsv, tmp_path):
    """`finetune --compressor avg3` is avg with K=3, as `export --compressor avg3` (it was refused)."""
    out = tmp_path / "adapter"
    result = run_cli(
        "--model", str(tiny_checkpoint), "--data", str(paired_tsv), "--out", str(out),
        "--steps", "1", "--batch-size", "4", "--compressor", "avg3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "edgelalm_finetune.json").read_text())["compressor"] == "avg3"


def test_word_errors_counts_substitutions_insertions_and_deletions():
    assert word_errors("set a timer", "set a timer") == 0
    assert word_errors("set a timer", "set the timer") == 1
    assert word_errors("set a timer", "set timer") == 1
    assert word_errors("set a timer", "please set a timer now") == 2
    assert word_errors("a b c d", "") == 4
    result = score(
        ["Set a timer for 20 minutes."], ["set a timer for twenty minutes"], audio_tokens=50, audio_seconds=2.0
    )
    assert (result.errors, result.words, result.wer, result.audio_tokens_per_second) == (0, 6, 0.0, 25.0)


def test_more_data_trains_on_the_folders_as_one_set(tiny_checkpoint, tmp_path):
    """--more-data: folders of the frozen tower's output (recorded voices beside synthetic clips, say)
    read as one set: every clip of both counted, both folders recorded."""
    from edgelalm.training.encoded import build_encoded

    options = {"workers": 1, "progress": False, "max_seconds": 10}
    first = build_encoded(tmp_path / "first", "train", 3, 0, tiny_checkpoint, **options)
    second = build_encoded(tmp_path / "second", "train", 2, 1, tiny_checkpoint, **options)
    out = tmp_path / "adapter"
    result = run_cli(
        "--model", str(tiny_checkpoint), "--data", str(first), "--more-data", str(second), "--out", str(out),
        "--steps", "1", "--batch-size", "5", "--compressor", "unseg",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "edgelalm_finetune.json").read_text())
    assert record["clips"] == 5 and record["data"] == [str(first), str(second)]


def test_a_second_finetune_into_one_folder_is_refused_before_the_model_loads(
    tiny_checkpoint, paired_tsv, tmp_path, another_writer
):
    """finetune reached its staging folder after the weights loaded (minutes at 7B sizes): a second
    one into the folder another process is writing is refused first, in one line."""
    from edgelalm.files import atomic_folder

    out = tmp_path / "adapter"
    _, stop = another_writer(out)
    result = run_cli("--model", str(tiny_checkpoint), "--data", str(paired_tsv), "--out", str(out), "--steps", "1")
    stop()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"edgelalm: error: {out} is being written by another process now"), lines
    with atomic_folder(out, force=True):  # its process gone, the folder is free
        pass


def test_more_data_that_cannot_join_is_refused_before_the_model_loads(tiny_checkpoint, paired_tsv, tmp_path):
    """--more-data beside an encoded --data: a TSV, the same folder again (each clip trained twice)
    and another split's folder are each refused in one line, before the model's load."""
    from edgelalm.training.encoded import build_encoded

    options = {"workers": 1, "progress": False, "max_seconds": 10}
    first = build_encoded(tmp_path / "first", "train", 2, 0, tiny_checkpoint, **options)
    other_split = build_encoded(tmp_path / "other", "test", 2, 1, tiny_checkpoint, **options)
    out = tmp_path / "adapter"
    cases = {
        str(paired_tsv): "--more-data joins folders of the frozen tower's output",
        str(first): "given twice",
        str(other_split): "another tower or split",
    }
    for more, expected in cases.items():
        result = run_cli(
            "--model", str(tiny_checkpoint), "--data", str(first), "--more-data", more, "--out", str(out),
            "--steps", "1", "--batch-size", "1",
        )  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert lines[0].startswith("edgelalm: error:") and expected in lines[0], result.stderr
        assert not out.exists()
