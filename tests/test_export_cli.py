"""`edgelalm export` and `edgelalm inspect` through the console entry point."""

import datetime
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
import onnx
import onnxruntime
import torch
from bundle_edits import edited_copy

from edgelalm.compression import COMPRESSOR_NAMES
from edgelalm.constants import MANIFEST_FILE, WINDOWS_ADVICE_FILE
from edgelalm.errors import printable
from edgelalm.files import sha256_of
from edgelalm.manifest import read_manifest


def edgelalm(*args, cwd=None):
    """Run the CLI as a user would; returns (exit code, stdout, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("private", ["config.json", "model.safetensors"])
def test_an_input_export_may_not_read_is_named_not_the_output(tiny_checkpoint, tmp_path, unprivileged, private):
    """A config.json that may not be read was "writing the bundle ... failed: Permission denied",
    the weights "not a readable safetensors file: No such file or directory" (safetensors' words)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    (model / private).chmod(0)
    out = tmp_path / "bundle"
    command = unprivileged(sys.executable, "-m", "edgelalm.cli", "export", "--model", str(model), "--out", str(out))
    done = subprocess.run([*command, "--compressor", "none"], capture_output=True, text=True, timeout=600)
    assert_one_line_error(done.returncode, done.stderr, f"cannot read {model / private}: Permission denied")
    assert not out.exists()


def test_names_with_control_characters_are_shown_escaped(tiny_checkpoint, tmp_path):
    """The bundle's path went to stdout as it is (a terminal obeyed its escape code) and a line
    break split its progress line in two; `run` shows them escaped."""
    model = tmp_path / "mo\nd\x1b[31mel"
    shutil.copytree(tiny_checkpoint, model)
    out = tmp_path / "b\x1b[2Jundle"
    code, stdout, stderr = edgelalm("export", "--model", model, "--compressor", "none", "--out", out)
    assert code == 0, stderr
    assert stdout == printable(str(out)) + "\n" and printable(str(out)) == str(out).replace("\x1b", "\\x1b")
    assert "\x1b" not in stdout + stderr and f"Reading checkpoint {printable(str(model))} done" in stderr
    assert read_manifest(out).model.name == model.name


def in_process(monkeypatch, capsys, *args):
    """Same, in this process (torch is imported once): for the many successful exports."""
    from edgelalm import cli

    monkeypatch.setattr(sys, "argv", ["edgelalm", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, stderr, *fragments):
    """Exit != 0, no traceback, and one error line (after any steps that completed)."""
    assert code != 0
    # completed steps and their notes (indented) stay visible above the error
    lines = [line for line in stderr.strip().splitlines() if not re.match(r"^(\[\d+/\d+\] .* done \(|\s+\S)", line)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("edgelalm: error: ")
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("compressor", COMPRESSOR_NAMES)
def test_export_writes_a_valid_bundle(tiny_checkpoint, tmp_path, monkeypatch, capsys, compressor):
    out = tmp_path / "bundle"
    factor = ["--factor", "3"] if compressor in ("avg", "sample") else []
    code, stdout, stderr = in_process(
        monkeypatch, capsys, "export", "--model", tiny_checkpoint, "--compressor", compressor, *factor, "--out", out
    )
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    assert "[8/8] Writing the manifest done" in stderr
    # The decoder check ran real multi-token batches, in a child process.
    assert "llama.cpp decoded 48 tokens in batches and generated" in stderr
    manifest = read_manifest(out)
    assert manifest.compressor.name == compressor
    assert set(manifest.files) == {
        "encoder.onnx",
        "encoder.onnx.data",
        "compressor.onnx",
        "decoder.gguf",
        "mel_filters.npy",
    }
    assert manifest.decoder.quant == "q8_0" and manifest.decoder.adapter is None
    for name in ("encoder.onnx", "compressor.onnx"):
        onnx.checker.check_model(str(out / name))
    # No staging folder left beside the bundle.
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    # The two graphs chain: a 2 s clip's mel frames -> audio embeddings in the LLM's width.
    encoder = onnxruntime.InferenceSession(str(out / "encoder.onnx"))
    compressor_session = onnxruntime.InferenceSession(str(out / "compressor.onnx"))
    mel = np.random.default_rng(0).standard_normal((128, 200)).astype(np.float32)
    frames = encoder.run(None, {"mel": mel, "mel_right_context": np.zeros((128, 2), np.float32)})[0]
    embeddings = compressor_session.run(None, {"audio_frames": frames})[0]
    assert frames.shape == (50, 64)
    assert embeddings.shape[1] == manifest.model.hidden_size
    expected_tokens = {"none": 50, "avg": 17, "sample": 17, "mean": 1, "max": 1}
    if compressor in expected_tokens:
        assert embeddings.shape[0] == expected_tokens[compressor]
    else:
        assert 1 <= embeddings.shape[0] < 50


def test_a_decoder_that_crashes_llama_cpp_fails_export_in_one_line(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """llama.cpp dying by a signal in the decode check (as on AMX CPUs with its AMX buffer) is one
    error line naming what to try, and leaves no bundle behind."""
    from edgelalm.isolation import ChildResult
    from edgelalm.runtime import canary

    monkeypatch.setattr(canary, "run_json_job", lambda module, job, timeout=None: ChildResult(-11, "", ""))
    out = tmp_path / "bundle"
    code, _, stderr = in_process(
        monkeypatch, capsys, "export", "--model", tiny_checkpoint, "--compressor", "none", "--out", out
    )
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("edgelalm: ")]
    assert errors == [
        "edgelalm: error: llama.cpp crashed (SIGSEGV) decoding decoder.gguf in a test run in a child process; "
        "try --llama-extra-buffers off"
    ]
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("stderr", "advice"),
    [
        (
            "terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n",
            "out of memory",
        ),
        ("ggml.c:1644: GGML_ASSERT(ctx->mem_buffer != NULL) failed\n", "out of memory"),
        ("", "try --llama-extra-buffers off"),
    ],
    ids=["bad_alloc", "ggml-buffer", "no-words"],
)
def test_a_canary_that_ran_out_of_memory_is_not_sent_to_the_extra_buffers(monkeypatch, stderr, advice):
    """Under a memory limit the child aborts (SIGABRT after std::bad_alloc): `doctor` advised
    --llama-extra-buffers off, the advice for the AMX crash."""
    from edgelalm.errors import EdgelalmError
    from edgelalm.isolation import ChildResult
    from edgelalm.runtime import canary

    monkeypatch.setattr(canary, "run_json_job", lambda module, job, timeout=None: ChildResult(-6, "", stderr))
    with pytest.raises(EdgelalmError) as failed:
        canary._in_child("decode", {}, "llama.cpp {failure} decoding decoder.gguf", "auto", 10.0)
    assert str(failed.value).startswith("llama.cpp crashed (SIGABRT) decoding decoder.gguf in a test run")
    assert advice in str(failed.value)


def test_manifest_describes_the_model(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    code, _, stderr = in_process(
        monkeypatch, capsys, "export", "--model", tiny_checkpoint, "--compressor", "avg", "--out", out
    )
    assert code == 0, stderr
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["compressor"] | {} == manifest["compressor"]
    assert manifest["compressor"]["factor"] == 2  # the default K
    assert manifest["compressor"]["audio_tokens_per_second"] == 12.5
    assert manifest["features"]["window_seconds"] == 10
    assert manifest["features"]["window_mel_frames"] == 1000
    prompt = manifest["prompt"]
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "text", "text": "Say it."}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == prompt["before_audio"] + "<|AUDIO|>" + prompt["after_audio"] + "Say it." + prompt["after_prompt"]
    tokens = manifest["special_tokens"]
    assert tokens["audio"]["id"] == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert tokens["im_end"]["id"] in tokens["end_of_turn_ids"]
    assert manifest["tools"]["torch"] and manifest["tools"]["onnxruntime"]
    for name, record in manifest["files"].items():
        assert record["sha256"] == sha256_of(out / name)
    assert "windows" not in manifest  # the checkpoint advises nothing: run's default (joined)


def test_auto_encoder_precision_keeps_the_towers_own_width(tiny_checkpoint, published_checkpoint):
    """--encoder-precision auto (the default) reads the safetensors headers: a tower stored in
    float16 (the shipped model) or bfloat16 (the published 7B layout) gets fp16w, its own values in
    16 bits; a float32 one keeps fp32, never rounded without being asked; a folder that is no
    checkpoint gets fp32, and export then names its fault."""
    from safetensors import safe_open

    from edgelalm.export.checkpoint import auto_encoder_precision
    from edgelalm.pretrained import default_model_dir

    def tower_dtypes(folder):
        dtypes = set()
        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as weights:
                dtypes |= {str(weights.get_tensor(k).dtype) for k in weights.keys() if k.startswith("audio_tower.")}
        return dtypes

    cases = [(default_model_dir(), "fp16w"), (published_checkpoint, "fp16w"), (tiny_checkpoint, "fp32")]
    assert [tower_dtypes(folder) for folder, _ in cases] == [{"torch.float16"}, {"torch.bfloat16"}, {"torch.float32"}]
    for folder, expected in cases:
        assert auto_encoder_precision(folder) == expected, folder
    assert auto_encoder_precision(tiny_checkpoint / "config.json") == "fp32"


def test_default_bundle_names_say_the_precision_when_it_is_not_the_checkpoints_own(tiny_checkpoint, tmp_path):
    """export/<model>-<compressor>-<quant> for an encoder at the checkpoint's own width (what auto
    picks, or the same named), -encoder-<precision> for any other: one name for one content."""
    from edgelalm.export.checkpoint import auto_encoder_precision
    from edgelalm.manifest import bundle_name
    from edgelalm.pretrained import default_model_dir

    cases = ([], "avg2-q8_0", "fp32"), (["--encoder-precision", "fp32"], "avg2-q8_0", "fp32")
    cases += ((["--encoder-precision", "fp16w"], "avg2-q8_0-encoder-fp16w", "fp16w"),)
    for number, (args, folder, precision) in enumerate(cases):
        (tmp_path / str(number)).mkdir()
        code, _, stderr = edgelalm("export", "--model", tiny_checkpoint, *args, cwd=tmp_path / str(number))
        assert code == 0, stderr
        bundle = tmp_path / str(number) / "export" / f"{tiny_checkpoint.name}-{folder}"
        assert read_manifest(bundle).encoder.precision == precision
    # The shipped model's own width is fp16w: its fp32 bundle is the one with a suffix.
    shipped = auto_encoder_precision(default_model_dir())
    assert bundle_name("unseg", "q8_0", "fp16w", shipped) == "unseg-q8_0"
    assert bundle_name("unseg", "q8_0", "fp32", shipped) == "unseg-q8_0-encoder-fp32"


def test_the_checkpoints_window_advice_goes_into_the_manifest(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    model = tmp_path / "advising"
    shutil.copytree(tiny_checkpoint, model)
    (model / WINDOWS_ADVICE_FILE).write_text(json.dumps({"mode": "each", "seconds": 4}))
    code, _, stderr = in_process(monkeypatch, capsys, "export", "--model", model, "--compressor", "none", "--out",
                                 tmp_path / "b")  # fmt: skip
    assert code == 0, stderr
    assert json.loads((tmp_path / "b" / MANIFEST_FILE).read_text())["windows"] == {"mode": "each", "seconds": 4.0}


def test_inspect_verifies_checksums(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    assert (
        in_process(monkeypatch, capsys, "export", "--model", tiny_checkpoint, "--compressor", "unseg", "--out", out)[0]
        == 0
    )
    code, stdout, _ = in_process(monkeypatch, capsys, "inspect", out)
    assert code == 0
    assert "unseg" in stdout and "checksums verified" in stdout
    with (out / "compressor.onnx").open("ab") as stream:
        stream.write(b"\0")
    code, _, stderr = in_process(monkeypatch, capsys, "inspect", out)
    assert_one_line_error(code, stderr, "compressor.onnx does not match the checksums")
    (out / "encoder.onnx.data").unlink()
    code, _, stderr = in_process(monkeypatch, capsys, "inspect", out)
    assert_one_line_error(code, stderr, "missing encoder.onnx.data", "compressor.onnx does not match")


def test_existing_out_needs_force(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # --force replaces an earlier bundle (or an empty folder), never a folder of other files: a
    # mistyped --out (say `.`) must not delete the user's work. Without --force, --force is not
    # advised there (it was, and then refused).
    for force in ([], ["--force"]):
        code, _, stderr = in_process(monkeypatch, capsys, "export", "--model", tiny_checkpoint, "--out", out, *force)
        assert_one_line_error(code, stderr, "holds files and no manifest.json", "not replaced even with --force")
    assert (out / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    code, _, stderr = in_process(monkeypatch, capsys, "export", "--model", tiny_checkpoint, "--out", tmp_path / "empty")
    assert_one_line_error(code, stderr, "empty already exists (--force replaces it)")
    (tmp_path / "empty").rmdir()  # untouched
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    code, _, stderr = in_process(monkeypatch, capsys, "export", "--model", tiny_checkpoint, "--out", out, "--force")
    assert code == 0, stderr
    code, _, stderr = in_process(monkeypatch, capsys, "export", "--model", tiny_checkpoint, "--out", out, "--force")
    assert code == 0, stderr  # an earlier bundle, and nothing else: replaced
    # A file the bundle does not list (the user's, beside it) is never deleted with it: it was.
    (out / "extra.txt").write_text("left by the user in a bundle")
    code, _, stderr = in_process(monkeypatch, capsys, "export", "--model", tiny_checkpoint, "--out", out, "--force")
    assert_one_line_error(code, stderr, "holds extra.txt beside an earlier output", "not replaced even with --force")
    assert (out / "extra.txt").exists() and (out / MANIFEST_FILE).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def _not_qwen2_audio(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))


def _pickle_only(path, source):
    shutil.copytree(source, path)
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not really a pickle")


def _no_config(path):
    path.mkdir()


def _corrupt_weights(path, source):
    shutil.copytree(source, path)
    (path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")


def _wrong_shapes(path, source):
    # Valid files, but the config promises a narrower encoder than the weights hold.
    shutil.copytree(source, path)
    config = json.loads((path / "config.json").read_text())
    config["audio_config"]["d_model"] = 32
    config["audio_config"]["encoder_attention_heads"] = 4
    (path / "config.json").write_text(json.dumps(config))


def _two_layouts(copied_prefix, as_prefix):
    """A copy whose weights also hold every `copied_prefix` tensor again under `as_prefix`, zeroed:
    the zeros were exported (the last name read won), exit 0."""

    def make(path, source):
        from safetensors.torch import load_file, save_file

        shutil.copytree(source, path)
        weights = load_file(path / "model.safetensors")
        copies = {
            as_prefix + k.removeprefix(copied_prefix): torch.zeros_like(v)
            for k, v in weights.items()
            if k.startswith(copied_prefix)
        }
        save_file({**weights, **copies}, path / "model.safetensors", metadata={"format": "pt"})

    return make


def _without_lm_head(path, source):
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, path)
    weights = load_file(path / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if "lm_head" not in k}, path / "model.safetensors", metadata={"format": "pt"}
    )


def _config_edited(section, field, value):
    """A copy whose config.json gives `field` of `section` the value `value`."""

    def make(path, source):
        shutil.copytree(source, path)
        config = json.loads((path / "config.json").read_text())
        config[section][field] = value
        (path / "config.json").write_text(json.dumps(config))

    return make


def _generation_config(text):
    """A copy whose generation_config.json holds `text`."""

    def make(path, source):
        shutil.copytree(source, path)
        (path / "generation_config.json").write_text(text)

    return make


def _extractor_edited(field, change):
    """A copy whose feature extractor's `field` becomes change(value), in every processor file."""

    def make(path, source):
        shutil.copytree(source, path)
        for name in ("preprocessor_config.json", "processor_config.json"):
            if (path / name).is_file():
                data = json.loads((path / name).read_text())
                for section in (data, data.get("feature_extractor")):
                    if isinstance(section, dict) and field in section:
                        section[field] = change(section[field])
                (path / name).write_text(json.dumps(data))

    return make


def _template(text):
    def make(path, source):
        shutil.copytree(source, path)
        (path / "chat_template.jinja").write_text(text)

    return make


def _shards_with_a_pickle(path, source):
    """Two shards and an index that names a pickle for one tensor: transformers' loader (finetune)
    would torch.load it; export read every *.safetensors and never looked at the index."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, path)
    weights = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    keys = sorted(weights)
    shards = {
        name: keys[i::2]
        for i, name in enumerate(("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"))
    }
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({key: weights[key] for key in shard_keys}, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard_keys, name))
    torch.save({keys[0]: weights[keys[0]]}, path / "00-weights.bin")
    weight_map[keys[0]] = "00-weights.bin"
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _empty_index(path, source):
    """An index whose weight_map is empty beside the one shard: "has no *.safetensors weight files"."""
    shutil.copytree(source, path)
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {}}))


def _integer_tensor(path, source):
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, path)
    weights = load_file(path / "model.safetensors")
    key = next(k for k in sorted(weights) if k.endswith("bias"))
    weights[key] = weights[key].to(torch.int32)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


def _bad_window_advice(path, source):
    shutil.copytree(source, path)
    (path / WINDOWS_ADVICE_FILE).write_text(json.dumps({"mode": "each", "seconds": 40}))


@pytest.mark.parametrize(
    "case,make,fragments",
    [
        ("missing", None, ["model folder not found"]),
        (
            "bad-window-advice",
            _bad_window_advice,
            [WINDOWS_ADVICE_FILE, "windows.seconds must be from 1 to the encoder's window of 10 s, got 40"],
        ),
        ("no-config", _no_config, ["no config.json"]),
        ("not-qwen2-audio", _not_qwen2_audio, ["'llama'", "not Qwen2-Audio"]),
        ("pickle-only", _pickle_only, ["only pickle weights", "pytorch_model.bin"]),
        ("corrupt-weights", _corrupt_weights, ["not a readable safetensors file"]),
        ("wrong-shapes", _wrong_shapes, ["has shape (64,), the config says (32,)"]),
        (
            "negative-mel-bins",
            _config_edited("audio_config", "num_mel_bins", -3),
            ["audio_config.num_mel_bins must be a positive integer, not -3"],
        ),
        (
            "heads-that-do-not-divide",
            _config_edited("audio_config", "encoder_attention_heads", 5),
            ["audio_config.d_model (64) is not a multiple of audio_config.encoder_attention_heads (5)"],
        ),
        ("a-word-for-a-size", _config_edited("text_config", "num_hidden_layers", "two"), ["num_hidden_layers", "int"]),
        # 10^9 positions would be 256 GB of float32: refused from the headers before anything is allocated.
        (
            "positions-past-the-weights",
            _config_edited("audio_config", "max_source_positions", 10**9),
            ["embed_positions.weight has shape (500, 64), the config says (1000000000, 64)"],
        ),
        # transformers' config makes a list entry per layer: 10^9 layers hung it for minutes.
        (
            "layers-past-llama-cpp",
            _config_edited("text_config", "num_hidden_layers", 10**9),
            ["text_config.num_hidden_layers is 1000000000; llama.cpp loads up to 512"],
        ),
        (
            "layers-the-weights-lack",
            _config_edited("audio_config", "encoder_layers", 3),
            ["audio_config.encoder_layers is 3; its weights hold 2 layers"],
        ),
        (
            "scaled-rope",
            _config_edited(
                "text_config",
                "rope_parameters",
                {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 2048},
            ),
            ["rope_type 'yarn': edgelalm exports plain RoPE only"],
        ),
        ("unknown-activation", _config_edited("text_config", "hidden_act", "garbage"), ["hidden_act is 'garbage'"]),
        # Exported with exit 0, and llama.cpp's qwen2 graph computed SiLU over the GELU-trained weights.
        (
            "gelu-activation",
            _config_edited("text_config", "hidden_act", "gelu"),
            ["text_config.hidden_act is 'gelu'; the GGUF's qwen2 decoder computes silu"],
        ),
        (
            "no-positions",
            _config_edited("text_config", "max_position_embeddings", 0),
            ["text_config.max_position_embeddings must be a positive integer, not 0"],
        ),
        # A struct.error traceback while the GGUF was written (step 6).
        (
            "positions-past-int32",
            _config_edited("text_config", "max_position_embeddings", 10**15),
            ["max_position_embeddings must be at most 2147483647"],
        ),
        (
            "rope-theta-past-float32",
            _config_edited("text_config", "rope_parameters", {"rope_type": "default", "rope_theta": 1e300}),
            ["rope_theta must be a positive number, not 1e+300"],
        ),
        (  # 0 in the float32 GGUF, exit 0
            "eps-below-float32",
            _config_edited("text_config", "rms_norm_eps", 1e-50),
            ["rms_norm_eps must be a positive float32, not 1e-50"],
        ),
        # llama.cpp's own check_tensor_dims, at step 7, naming the deleted staging folder.
        ("head-dim", _config_edited("text_config", "head_dim", 32), ["text_config.head_dim is 32"]),
        # Tracebacks at step 8, or a bundle the manifest reader then refused.
        ("generation-config-not-json", _generation_config("{not json"), ["generation_config.json is not valid JSON"]),
        ("generation-config-list", _generation_config("[]"), ["generation_config.json must hold a JSON object"]),
        (
            "generation-config-names",
            _generation_config('{"eos_token_id": ["<|im_end|>"]}'),
            ["eos_token_id must be a token id or a list of them"],
        ),
        (
            "generation-config-negative-id",
            _generation_config('{"eos_token_id": [3, -5]}'),
            ["eos_token_id must be a token id or a list of them, each from 0 to", "not [3, -5]"],
        ),
        # The filterbank is computed as the extractor loads: 10^7 took gigabytes before the kernel's kill.
        ("fft-of-gigabytes", _extractor_edited("n_fft", lambda _: 10**7), ["n_fft must be an integer from 1 to 16384"]),
        ("hop-of-zero", _extractor_edited("hop_length", lambda _: 0), ["hop_length must be an integer from 1"]),
        (
            "mel-bins-the-tower-does-not-read",
            _extractor_edited("feature_size", lambda bins: bins + 8),
            ["its feature extractor makes", "mel bins; the audio tower reads"],
        ),
        ("template-syntax", _template("{% for %}"), ["its chat template cannot be rendered"]),
        (
            "template-for-ever",
            _template("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
            ["its chat template cannot be rendered: rendering took more than 5 s"],
        ),
        ("index-naming-a-pickle", _shards_with_a_pickle, ["'00-weights.bin' is not a .safetensors file in the folder"]),
        ("empty-index", _empty_index, ["weight_map is empty; it must name the shard of each tensor"]),
        ("integer-weights", _integer_tensor, ["is I32; weights are F32, F16, BF16 or F64"]),
        # Tied silently before: llama.cpp read the embeddings as the output layer, transformers' model had its own.
        ("no-lm-head", _without_lm_head, ["hold no lm_head.weight and text_config.tie_word_embeddings is false"]),
        (
            "llama-decoder",
            _config_edited("text_config", "model_type", "llama"),
            ["text_config.model_type is 'llama'; Qwen2-Audio's decoder is qwen2"],
        ),
        (
            "two-decoders",
            _two_layouts("language_model.model.", "model.language_model."),
            ["is stored twice, as", "two copies of the decoder (keep one layout)"],
        ),
        (
            "two-towers",
            _two_layouts("audio_tower.", "model.audio_tower."),
            ["tensors named both audio_tower.* and model.audio_tower.*: two copies of one part"],
        ),
        # Refused in the decoder's own words, not as a GGUF that llama.cpp cannot load.
        (
            "decoder-heads",
            _config_edited("text_config", "num_attention_heads", 8),
            ["decoder tensor model.layers.0.self_attn.k_proj", "has shape (32,), the config says (16,)"],
        ),
    ],
)
def test_bad_model_folder(tiny_checkpoint, tmp_path, case, make, fragments):
    model = tmp_path / case
    if make in (_not_qwen2_audio, _no_config):
        make(model)
    elif make is not None:
        make(model, tiny_checkpoint)
    out = tmp_path / "out" / "bundle"
    code, stdout, stderr = edgelalm("export", "--model", model, "--out", out)
    assert_one_line_error(code, stderr, *fragments)
    assert not (tmp_path / "out").exists(), "a failed export must leave no output folder"


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--compressor", "avg", "--factor", "0"], ["--factor", "greater than or equal to 1"]),
        (["--compressor", "sample", "--factor", "-3"], ["greater than or equal to 1"]),
        (["--compressor", "pool"], ["pool"]),
        (["--compressor", "unseg", "--factor", "2"], ["applies to avg and sample"]),
        (["--encoder-precision", "int4"], ["int4"]),
    ],
)
def test_bad_options(tiny_checkpoint, tmp_path, args, fragments):
    code, _, stderr = edgelalm("export", "--model", tiny_checkpoint, *args, "--out", tmp_path / "b")
    assert_one_line_error(code, stderr, *fragments)
    assert not (tmp_path / "b").exists()


def test_unwritable_out(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, stderr = edgelalm("export", "--model", tiny_checkpoint, "--out", blocker / "bundle")
    # "File exists" or "Not a directory" is what the OS says; the line names the file in the way.
    assert_one_line_error(code, stderr, f"cannot write to {blocker}: it is not a folder")
    code, _, stderr = edgelalm("export", "--model", tiny_checkpoint, "--out", blocker / "deeper" / "bundle")
    assert_one_line_error(code, stderr, f"cannot write to {blocker / 'deeper'}: {blocker} is not a folder")
    assert blocker.read_text() == ""


def test_help_explains_every_option():
    code, stdout, _ = edgelalm("export", "--help")
    assert code == 0
    stdout = " ".join(re.sub("[│╭╮╰╯─]", " ", stdout).split())  # undo rich's box and wrapping
    for option in ("--model", "--compressor", "--factor", "--encoder-precision", "--out", "--force"):
        assert option in stdout
    assert "unsupervised segmentation" in stdout


def test_complete_bundle_with_adapter_and_k_quant(tiny_checkpoint, tiny_lora_adapter, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    # Realigned to unseg by its record, exported with avg3 (swapped LABEL=DIR pairs): said, not refused.
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_lora_adapter, adapter)
    (adapter / "edgelalm_finetune.json").write_text('{"compressor": "unseg"}')
    code, _, stderr = in_process(
        monkeypatch,
        capsys,
        "export",
        "--model",
        tiny_checkpoint,
        "--adapter",
        adapter,
        "--compressor",
        "avg",
        "--factor",
        "3",
        "--quant",
        "q4_k_m",
        "--out",
        out,
    )
    assert code == 0, stderr
    assert "with the LoRA merged" in stderr and "decoder.gguf:" in stderr
    assert (
        f"edgelalm: warning: {adapter} was realigned to unseg (edgelalm_finetune.json); exporting it with avg3"
        in stderr
    )
    manifest = read_manifest(out)
    decoder = manifest.decoder
    assert decoder.quant == "q4_k_m" and decoder.architecture == "qwen2"
    assert decoder.adapter["rank"] == 16 and decoder.adapter["alpha"] == 32
    assert decoder.adapter["sha256"] == sha256_of(tiny_lora_adapter / "adapter_model.safetensors")
    code, stdout, _ = in_process(monkeypatch, capsys, "inspect", out)
    assert code == 0 and "q4_k_m" in stdout and "LoRA merged (rank 16, alpha 32)" in stdout


def _corrupt_adapter(path, adapter):
    shutil.copytree(adapter, path)
    (path / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")


def _audio_tower_adapter(path, adapter):
    shutil.copytree(adapter, path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "adapter_model.safetensors")
    renamed = {k.replace("language_model.layers", "audio_tower.layers"): v for k, v in tensors.items()}
    save_file(renamed, path / "adapter_model.safetensors")


def _other_model_adapter(path, adapter):
    shutil.copytree(adapter, path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "adapter_model.safetensors")
    widened = {k: (v.repeat(1, 2) if "lora_A" in k else v) for k, v in tensors.items()}
    save_file(widened, path / "adapter_model.safetensors")


@pytest.mark.parametrize(
    "case,make,fragments",
    [
        ("corrupt-adapter", _corrupt_adapter, ["not a readable safetensors file"]),
        ("audio-tower-adapter", _audio_tower_adapter, ["audio_tower", "only the language model"]),
        ("other-model-adapter", _other_model_adapter, ["adapter for another model"]),
    ],
)
def test_bad_adapter(tiny_checkpoint, tiny_lora_adapter, tmp_path, case, make, fragments):
    adapter = tmp_path / case
    make(adapter, tiny_lora_adapter)
    out = tmp_path / "out" / "bundle"
    code, _, stderr = edgelalm("export", "--model", tiny_checkpoint, "--adapter", adapter, "--out", out)
    assert_one_line_error(code, stderr, *fragments)
    assert not (tmp_path / "out").exists()


def test_unknown_quant(tiny_checkpoint, tmp_path):
    code, _, stderr = edgelalm("export", "--model", tiny_checkpoint, "--quant", "q3_x", "--out", tmp_path / "b")
    assert_one_line_error(code, stderr, "q3_x")
    assert not (tmp_path / "b").exists()


def test_terminated_export_leaves_nothing(tiny_checkpoint, tmp_path):
    """SIGTERM mid-export (as a job scheduler or `kill` sends it) removes the staging folder."""
    import signal
    import time

    out = tmp_path / "out" / "bundle"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgelalm.cli", "export", "--model", str(tiny_checkpoint), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not list((tmp_path / "out").glob(".bundle.partial-*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list((tmp_path / "out").glob(".bundle.partial-*")), "the export never started writing"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    # stderr in each message: a failure here depends on when the signal lands, so say what happened.
    assert process.returncode == 130, f"exit {process.returncode}, stderr:\n{stderr}"
    assert stderr.strip().splitlines()[-1] == "edgelalm: error: interrupted", stderr
    assert not (tmp_path / "out").exists(), f"left behind: {sorted((tmp_path / 'out').rglob('*'))}"


@pytest.fixture(scope="module")
def shared_bundles(tiny_checkpoint, tmp_path_factory):
    """A none bundle, an avg3 bundle exported with --share-from it, and an avg3 bundle exported
    on its own (the reference the shared one must match)."""
    from edgelalm.compression import CompressorSpec
    from edgelalm.export.bundle import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("shared")
    first = export_bundle(ExportOptions(tiny_checkpoint, root / "none", CompressorSpec("none", 1)))
    shared = export_bundle(ExportOptions(tiny_checkpoint, root / "avg3", CompressorSpec("avg", 3), share_from=first))
    alone = export_bundle(ExportOptions(tiny_checkpoint, root / "avg3-alone", CompressorSpec("avg", 3)))
    return first, shared, alone


def test_share_from_reuses_what_is_the_same(shared_bundles):
    first, shared, alone = shared_bundles
    # The encoder is copied (onnx refuses external weights with several hard links), the decoder linked.
    for name in ("encoder.onnx", "encoder.onnx.data"):
        assert not (shared / name).samefile(first / name)
        assert sha256_of(shared / name) == sha256_of(first / name)
    assert (shared / "decoder.gguf").samefile(first / "decoder.gguf")
    manifest = read_manifest(shared)  # verifies every checksum
    assert manifest.compressor.factor == 3 and manifest.encoder.precision == "fp32"
    # Exported on its own, the decoder is byte for byte the one shared, and the encoder computes the same.
    assert sha256_of(alone / "decoder.gguf") == sha256_of(shared / "decoder.gguf")
    from edgelalm.constants import ENCODER_INPUT, ENCODER_RIGHT_CONTEXT_INPUT, RIGHT_CONTEXT_FRAMES

    rng = np.random.default_rng(0)
    mel_bins = manifest.features.num_mel_bins
    inputs = {
        ENCODER_INPUT: rng.standard_normal((mel_bins, 300)).astype(np.float32),
        ENCODER_RIGHT_CONTEXT_INPUT: rng.standard_normal((mel_bins, RIGHT_CONTEXT_FRAMES)).astype(np.float32),
    }
    outputs = [
        onnxruntime.InferenceSession(str(bundle / "encoder.onnx"), providers=["CPUExecutionProvider"]).run(
            None, inputs
        )[0]
        for bundle in (shared, alone)
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_share_from_on_the_command_line(
    tiny_checkpoint, tiny_lora_adapter, shared_bundles, tmp_path, monkeypatch, capsys
):
    """Another adapter: only the encoder is reused; the decoder is written with the LoRA merged."""
    first, _, _ = shared_bundles
    out = tmp_path / "b"
    code, _, stderr = in_process(
        monkeypatch,
        capsys,
        "export",
        "--model",
        tiny_checkpoint,
        "--adapter",
        tiny_lora_adapter,
        "--compressor",
        "unseg",
        "--share-from",
        first,
        "--out",
        out,
    )
    assert code == 0, stderr
    assert (
        "Copying the audio encoder (fp32)" in stderr
        and "Writing the decoder to GGUF (q8_0) with the LoRA merged" in stderr
    )
    assert sha256_of(out / "encoder.onnx.data") == sha256_of(first / "encoder.onnx.data")
    assert not (out / "decoder.gguf").samefile(first / "decoder.gguf")
    assert read_manifest(out).decoder.adapter["rank"] == 16


def test_share_from_shares_nothing_that_a_changed_config_or_prompt_format_wrote(tiny_checkpoint, tmp_path):
    """config.json, the tokenizer and the chat template are written into the decoder's GGUF too:
    only the weights' times were checked, and a rope_theta changed since was shared stale (the
    answers changed, exit 0). Another prompt format writes another template into the GGUF."""
    import gguf

    from edgelalm.compression import CompressorSpec
    from edgelalm.errors import EdgelalmError
    from edgelalm.export.bundle import ExportOptions, export_bundle

    model = shutil.copytree(tiny_checkpoint, tmp_path / "model")
    first = export_bundle(ExportOptions(model, tmp_path / "first", CompressorSpec("none", 1)))
    base = export_bundle(
        ExportOptions(model, tmp_path / "base", CompressorSpec("avg", 3), share_from=first, prompt_format="base")
    )
    assert sha256_of(base / "encoder.onnx.data") == sha256_of(first / "encoder.onnx.data")
    assert not (base / "decoder.gguf").samefile(first / "decoder.gguf")
    templates = [
        gguf.GGUFReader(bundle / "decoder.gguf").get_field("tokenizer.chat_template") for bundle in (first, base)
    ]
    assert templates[0] is not None and templates[1] is None  # the base format has none
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["rope_parameters"]["rope_theta"] = 1e6
    (model / "config.json").write_text(json.dumps(config))
    created = read_manifest(first).created_utc
    later = datetime.datetime.fromisoformat(created).timestamp() + 5
    os.utime(model / "config.json", (later, later))
    with pytest.raises(EdgelalmError, match=r"checkpoint changed since that bundle was exported \(config.json\)"):
        export_bundle(ExportOptions(model, tmp_path / "stale", CompressorSpec("avg", 3), share_from=first))
    assert not (tmp_path / "stale").exists()
    os.utime(model / "config.json", (later - 100, later - 100))  # back before the bundles below
    # Bundles exported inside the checkpoint folder are no change of it: the one shared from (its
    # manifest is written after created_utc, seconds later for a 7B's hashing) nor the others.
    inside = export_bundle(ExportOptions(model, model / "bundles" / "none", CompressorSpec("none", 1)))
    export_bundle(ExportOptions(model, model / "bundles" / "avg2", CompressorSpec("avg", 2), share_from=inside))
    later = datetime.datetime.fromisoformat(read_manifest(inside).created_utc).timestamp() + 5
    for path in [inside / MANIFEST_FILE, *(model / "bundles" / "avg2").iterdir()]:
        os.utime(path, (later, later))
    export_bundle(ExportOptions(model, model / "bundles" / "avg3", CompressorSpec("avg", 3), share_from=inside))
    assert (model / "bundles" / "avg3" / "decoder.gguf").samefile(inside / "decoder.gguf")


def _damaged_copy(bundle, path, name):
    """A copy of `bundle` whose file `name` has its second half's bytes inverted (its size kept)."""
    shutil.copytree(bundle, path)
    data = bytearray((path / name).read_bytes())
    half = len(data) // 2
    data[half:] = bytes(255 - byte for byte in data[half:])
    (path / name).write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "case, make, options, fragments",
    [
        (
            "nothing in common",
            lambda first, path: first,
            ["--quant", "f16", "--encoder-precision", "int8"],
            ["nothing to share", "fp32 vs int8", "q8_0 vs f16"],
        ),
        (
            "other checkpoint",
            lambda first, path: edited_copy(first, path, lambda m: m["model"].update(source="/elsewhere")),
            [],
            ["exported from /elsewhere"],
        ),
        (
            "checkpoint changed",
            lambda first, path: edited_copy(first, path, lambda m: m.update(created_utc="2000-01-01T00:00:00+00:00")),
            [],
            ["checkpoint changed since"],
        ),
        (
            "file replaced",
            lambda first, path: edited_copy(first, path, lambda m: m["files"]["decoder.gguf"].update(bytes=1)),
            [],
            ["decoder.gguf is missing or does not match"],
        ),
        (
            # Same size, other bytes: the encoder's parity check failed first and blamed the export.
            "encoder weights damaged",
            lambda first, path: _damaged_copy(first, path, "encoder.onnx.data"),
            [],
            ["encoder.onnx.data does not match the checksum in that bundle's manifest"],
        ),
        (
            "decoder damaged",
            lambda first, path: _damaged_copy(first, path, "decoder.gguf"),
            [],
            ["decoder.gguf does not match the checksum in that bundle's manifest"],
        ),
        ("not a bundle", lambda first, path: path, [], ["bundle folder not found"]),
    ],
)
def test_share_from_refusals(
    tiny_checkpoint, shared_bundles, tmp_path, monkeypatch, capsys, case, make, options, fragments
):
    source = make(shared_bundles[0], tmp_path / "source")
    out = tmp_path / "b"
    code, _, stderr = in_process(
        monkeypatch,
        capsys,
        "export",
        "--model",
        tiny_checkpoint,
        "--compressor",
        "none",
        *options,
        "--share-from",
        source,
        "--out",
        out,
    )
    assert_one_line_error(code, stderr, "--share-from", *fragments)
    assert not out.exists()


def test_finetune_reads_the_files_export_checks(tiny_checkpoint, tmp_path, monkeypatch):
    """finetune loads through transformers' from_pretrained, which follows the shard index: the
    index's names are checked first, so nothing is ever handed to torch.load."""
    from edgelalm.errors import EdgelalmError
    from edgelalm.training.finetune import load_for_training

    model = tmp_path / "sharded"
    _shards_with_a_pickle(model, tiny_checkpoint)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(EdgelalmError, match=r"'00-weights\.bin' is not a \.safetensors file"):
        load_for_training(model, "cpu")


@pytest.mark.parametrize(
    ("part", "stored", "named"),
    [
        ("decoder", "mlp.up_proj.weight", "decoder tensor {key}"),
        ("audio tower", "audio_tower.layers.0.fc1.weight", "audio tower tensor {short}"),
        ("projector", "multi_modal_projector.linear.weight", "projector tensor {short}"),
    ],
)
def test_non_finite_weights_are_named(tiny_checkpoint, tmp_path, part, stored, named):
    """q8_0's quantizer refuses NaN in two lines of its own; f32 and f16 wrote it with exit 0. In
    the tower or the projector, NaN made the export's self-check blame the export ("export is
    broken")."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "nan"
    shutil.copytree(tiny_checkpoint, model)
    weights = load_file(model / "model.safetensors")
    key = next(k for k in sorted(weights) if stored in k)
    weights[key].view(-1)[0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    code, _, stderr = edgelalm("export", "--model", model, "--quant", "f16", "--out", tmp_path / "out" / "b")
    short = key.split("audio_tower.")[-1].split("multi_modal_projector.")[-1]
    assert_one_line_error(code, stderr, named.format(key=key, short=short) + " holds NaN or infinite values")
    assert not (tmp_path / "out").exists()


def test_a_bundle_inside_another_is_refused_and_a_web_app_s_manifest_is_no_bundle(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """`export --out bundle/inner` exited 0, and the outer bundle was refused from then on (its
    manifest does not list inner/). Only an edgelalm manifest makes a folder a bundle: a project
    holding a web app's manifest.json, and `--out ../sibling` from inside a bundle, export."""
    common = ("export", "--model", tiny_checkpoint, "--compressor", "none", "--out")
    outer = tmp_path / "outer"
    assert in_process(monkeypatch, capsys, *common, outer)[0] == 0
    code, _, stderr = in_process(monkeypatch, capsys, *common, outer / "deeper" / "inner")
    assert_one_line_error(code, stderr, f"inner is inside the bundle {outer}: name a folder outside it")
    assert not (outer / "deeper").exists()
    project = tmp_path / "project"
    project.mkdir()
    (project / MANIFEST_FILE).write_text('{"name": "my web app", "start_url": "/"}')
    assert in_process(monkeypatch, capsys, *common, project / "export" / "bundle")[0] == 0
    monkeypatch.chdir(outer)
    assert in_process(monkeypatch, capsys, *common, "../sibling")[0] == 0
    assert read_manifest(tmp_path / "sibling").files and read_manifest(outer).files
