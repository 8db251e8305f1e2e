"""One bundle, several compressors (issue 19): each compressor's graph and its LoRA as a llama.cpp
adapter over one unmerged decoder, chosen per run. Checked against transformers + peft (adapter
active, unmerged) and against single bundles with the adapter merged, at f32."""

import json
import shutil

import numpy as np
import pytest
from hf_reference import reference_answer, speechlike
from peft import PeftModel
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from edgelalm.cli import app
from edgelalm.compression import CompressorSpec
from edgelalm.errors import EdgelalmError
from edgelalm.export.bundle import ExportOptions, export_bundle
from edgelalm.manifest import read_manifest
from edgelalm.runtime.features import split_windows
from edgelalm.runtime.pipeline import AUTO, Runtime

WINDOW_SECONDS = 10  # the tiny checkpoint's encoder window
PROMPT = "Transcribe the audio."
# none, avg3 and unseg carry the tiny LoRA; sample3 carries none (the base weights).
CHOICES = (("none", 1, True), ("avg", 3, True), ("unseg", 1, True), ("sample", 3, False))


@pytest.fixture(scope="module")
def hf(tiny_checkpoint, tiny_lora_adapter):
    base = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    model = PeftModel.from_pretrained(base, tiny_lora_adapter).eval()
    return model, AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def multi_bundle(tiny_checkpoint, tiny_lora_adapter, tmp_path_factory):
    choices = tuple(
        (CompressorSpec(name, factor), tiny_lora_adapter if adapted else None) for name, factor, adapted in CHOICES
    )
    out = tmp_path_factory.mktemp("choices") / "bundle"
    options = ExportOptions(tiny_checkpoint, out, choices[0][0], quant="f32", choices=choices)
    return export_bundle(options)


def test_the_manifest_lists_each_choice_with_its_adapter(multi_bundle):
    manifest = read_manifest(multi_bundle)
    assert manifest.format_version == 2 and list(manifest.compressors) == ["none", "avg3", "unseg", "sample3"]
    assert manifest.compressor == manifest.compressors["none"].compressor  # the first is the default
    assert manifest.decoder is not None and manifest.decoder.adapter is None  # nothing merged
    adapter_files = {
        label: choice.adapter.file if choice.adapter else None for label, choice in manifest.compressors.items()
    }
    assert adapter_files == {
        "none": "adapter-none.gguf",
        "avg3": "adapter-avg3.gguf",
        "unseg": "adapter-unseg.gguf",
        "sample3": None,
    }
    assert all(f"compressor-{label}.onnx" in manifest.files for label in manifest.compressors)
    # One decoder: the adapters are a few percent of it, not a decoder each.
    adapters = sum(manifest.files[name].bytes for name in adapter_files.values() if name)
    assert adapters < 0.5 * manifest.files["decoder.gguf"].bytes


def test_a_clip_too_long_for_the_compressor_asked_names_the_bundle_s_own_that_fits(multi_bundle):
    """Ten minutes asked of `none` in a bundle that holds avg3: its advice was only to export a
    bundle with avg or sample K=2, where `--compressor avg3` (or the windows) would do."""
    clip = np.tile(speechlike(10.0, 3), 60)  # 15000 encoder frames, over the 8192-token context at none
    with Runtime(multi_bundle) as runtime:
        with pytest.raises(EdgelalmError) as refused:
            runtime.run(clip, compressor="none", max_tokens=8)
        assert str(refused.value).endswith(
            "; --compressor avg3, --windows each (window by window) or a bundle exported with avg or sample and a "
            "factor K=2 would fit it"
        )
        assert runtime.run(clip, compressor="avg3", max_tokens=1).compressor == "avg3"  # and it does
        # No window of it fits a budget of 100 either: --windows each would be refused as well.
        with pytest.raises(EdgelalmError) as refused:
            runtime.run(clip, compressor="none", max_tokens=8, max_audio_tokens=100)
        assert str(refused.value).endswith("; a bundle exported with avg or sample and a factor K=150 would fit it")
        # Within one window: no windows to name; avg3 over the budget, so no compressor either.
        assert runtime.features.window_seconds > 5
        with pytest.raises(EdgelalmError) as refused:  # 5 s: 125 tokens at none, 42 at avg3 and sample3
            runtime.run(clip[: 16000 * 5], compressor="none", max_tokens=8, max_audio_tokens=30)
        assert str(refused.value).endswith("; a bundle exported with avg or sample and a factor K=5 would fit it")


@pytest.mark.parametrize("label,name,factor", [("none", "none", 1), ("avg3", "avg", 3), ("unseg", "unseg", 1)])
def test_each_adapted_choice_equals_transformers_with_peft_unmerged_and_the_merged_bundle(
    hf, multi_bundle, tiny_bundles, label, name, factor
):
    audio = speechlike(3.3, 0)
    expected_text, expected_tokens = reference_answer(hf, audio, name, factor, 16, PROMPT, WINDOW_SECONDS)
    with Runtime(multi_bundle, kv_cache_type="f32") as runtime:
        result = runtime.run(audio, prompt=PROMPT, max_tokens=16, compressor=label)
    with Runtime(tiny_bundles(name, factor, "f32"), kv_cache_type="f32") as runtime:
        merged = runtime.run(audio, prompt=PROMPT, max_tokens=16)
    assert result.compressor == label and result.audio_tokens == expected_tokens
    assert result.text == expected_text == merged.text


def test_switching_in_one_runtime_gives_each_choice_its_own_answer(multi_bundle, tiny_checkpoint, tmp_path):
    """avg3 -> sample3 -> avg3 -> none in one loaded model, one context: every answer equals a fresh
    runtime's, so the adapter is switched (and the prefix cache dropped) each time."""
    audio = speechlike(4.1, 2)
    fresh = {}
    for label in ("avg3", "sample3", "none"):
        with Runtime(multi_bundle, kv_cache_type="f32", max_concurrent_runs=1) as runtime:
            fresh[label] = runtime.run(audio, prompt=PROMPT, max_tokens=12, compressor=label).text
    with Runtime(multi_bundle, kv_cache_type="f32", max_concurrent_runs=1) as runtime:
        answers = [
            runtime.run(audio, prompt=PROMPT, max_tokens=12, compressor=label).text
            for label in ("avg3", "sample3", "avg3", "none")
        ]
        assert runtime.contexts_made == 1
    assert answers == [fresh["avg3"], fresh["sample3"], fresh["avg3"], fresh["none"]]
    # The adapter changes the answer (so the equalities above test something).
    assert len({fresh["avg3"], fresh["sample3"], fresh["none"]}) > 1
    # sample3 has no adapter: the base weights, as a single bundle exported without one.
    single = export_bundle(ExportOptions(tiny_checkpoint, tmp_path / "s3", CompressorSpec("sample", 3), quant="f32"))
    with Runtime(single, kv_cache_type="f32") as runtime:
        assert runtime.run(audio, prompt=PROMPT, max_tokens=12).text == fresh["sample3"]


def test_auto_picks_the_least_compression_that_fits_and_says_so(multi_bundle):
    audio = speechlike(6.0, 4)
    with Runtime(multi_bundle) as runtime:
        tokens = {
            label: runtime.run(audio, max_tokens=2, compressor=label).audio_tokens for label in runtime.compressors
        }
        for budget in (tokens["none"], tokens["none"] - 1, min(tokens.values()), 10_000):
            result = runtime.run(audio, max_tokens=2, compressor=AUTO, max_audio_tokens=budget)
            fitting = {label: count for label, count in tokens.items() if count <= budget}
            assert result.audio_tokens == max(fitting.values())
            assert tokens[result.compressor] == result.audio_tokens
            assert result.compressor_choice.startswith(f"auto chose {result.compressor}:")
        with pytest.raises(EdgelalmError, match="budget of"):
            runtime.run(audio, max_tokens=2, compressor=AUTO, max_audio_tokens=min(tokens.values()) - 1)
        with pytest.raises(EdgelalmError, match=r"no compressor 'avg2'; it has none, avg3, unseg, sample3 \(or auto\)"):
            runtime.run(audio, compressor="avg2")


def test_the_cli_exports_a_list_and_runs_a_choice(tiny_checkpoint, tiny_lora_adapter, tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "bundle"
    adapters = f"avg2={tiny_lora_adapter},unseg={tiny_lora_adapter}"
    args = ["export", "--model", str(tiny_checkpoint), "--compressor", "none,avg2,unseg", "--adapter", adapters]
    result = CliRunner().invoke(app, [*args, "--quant", "f16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    inspected = CliRunner().invoke(app, ["inspect", str(out)])
    assert "adapter-avg2.gguf (rank 16, applied at run time)" in inspected.output
    assert "none       compressor-none.onnx  25.00 tokens/s, no adapter  (default)" in inspected.output
    clip = tmp_path / "clip.wav"
    import soundfile

    soundfile.write(clip, speechlike(3.0, 1), 16000)
    ran = CliRunner().invoke(app, ["run", str(clip), "--bundle", str(out), "--compressor", "auto", "--max-tokens", "4"])
    assert ran.exit_code == 0 and "auto chose none:" in ran.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--compressor", "avg2,avg2"], "compressors listed twice: avg2, avg2"),
        (["--compressor", "avg2,unseg", "--merge-adapter"], "--merge-adapter needs one compressor"),
        (["--compressor", "avg2,unseg", "--adapter", "DIR"], "LABEL=DIR pairs"),
        (["--compressor", "avg2,unseg", "--adapter", "avg3=DIR"], "names avg3, not among the compressors avg2, unseg"),
        (["--compressor", "avg2,pool"], "compressor 'pool' is not one of"),
        # A traceback (dict() of a one-item split); the last pair silently won, avg2 got avg3's adapter.
        (["--compressor", "avg2,unseg", "--adapter", "avg2=A,B"], "--adapter 'B' is not a LABEL=DIR pair"),
        (["--compressor", "avg2,unseg", "--adapter", "avg2=A,avg2=B"], "--adapter names avg2 twice"),
    ],
)
def test_bad_lists_are_one_line(tiny_checkpoint, tmp_path, monkeypatch, capsys, args, message):
    from test_export_cli import assert_one_line_error, in_process

    code, _, stderr = in_process(
        monkeypatch, capsys, "export", "--model", tiny_checkpoint, *args, "--out", tmp_path / "b"
    )
    assert_one_line_error(code, stderr, message)
    assert not (tmp_path / "b").exists()


def test_an_adapter_folder_whose_name_holds_an_equals_sign_is_a_folder(tmp_path):
    """--adapter 'runs/lr=1e-3' was read as a LABEL=DIR pair naming the compressor 'runs/lr'."""
    from edgelalm.cli import _adapter_folders
    from edgelalm.compression import CompressorSpec

    folder = tmp_path / "runs" / "lr=1e-3"
    folder.mkdir(parents=True)
    avg2 = [CompressorSpec.from_label("avg2")]
    assert _adapter_folders(str(folder), avg2, several=False, default_model=False) == [folder]
    pairs = f"avg2={folder},unseg={tmp_path}"
    specs = [CompressorSpec.from_label("avg2"), CompressorSpec.from_label("unseg")]
    assert _adapter_folders(pairs, specs, several=True, default_model=False) == [folder, tmp_path]


def test_a_version_1_manifest_with_choices_is_refused(multi_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(multi_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgelalmError, match="compressors need format version 2"):
        read_manifest(copy)
    manifest["format_version"] = 2
    manifest["compressors"]["avg3"]["compressor"]["factor"] = 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgelalmError, match="compressors.avg3 holds avg2"):
        read_manifest(copy)


def test_adapter_factors_differ_from_zero(multi_bundle):
    """The adapters written are the trained ones (peft starts B at zero: a zero adapter would make
    every parity above hold trivially)."""
    import gguf

    reader = gguf.GGUFReader(multi_bundle / "adapter-avg3.gguf")
    lora_b = [tensor for tensor in reader.tensors if tensor.name.endswith(".lora_b")]
    assert lora_b and all(np.abs(np.asarray(tensor.data)).max() > 0 for tensor in lora_b)


def test_export_checks_the_encoder_once_and_every_compressor_graph(tiny_checkpoint, tmp_path, monkeypatch):
    """The probe check runs the encoder graph once for a bundle of several, and still catches a
    broken compressor graph among them (here: avg3's graph written from a projector scaled by 2)."""
    import copy

    import torch

    from edgelalm.export import bundle

    encoder_checks = []
    real_check_encoder = bundle.check_encoder
    monkeypatch.setattr(
        bundle, "check_encoder", lambda *a, **k: encoder_checks.append(1) or real_check_encoder(*a, **k)
    )
    real_export_compressor = bundle.export_compressor_onnx

    def broken_avg3(compressor, width, path):
        if path.name == "compressor-avg3.onnx":
            compressor = copy.deepcopy(compressor)
            with torch.no_grad():
                for parameter in compressor.parameters():
                    parameter.mul_(2.0)
        real_export_compressor(compressor, width, path)

    choices = tuple((CompressorSpec(name, factor), None) for name, factor, _ in CHOICES[:3])
    export_bundle(ExportOptions(tiny_checkpoint, tmp_path / "good", choices[0][0], quant="f16", choices=choices))
    assert encoder_checks == [1]
    monkeypatch.setattr(bundle, "export_compressor_onnx", broken_avg3)
    with pytest.raises(EdgelalmError, match=r"compressor-avg3\.onnx differs from PyTorch by .* export is broken"):
        export_bundle(ExportOptions(tiny_checkpoint, tmp_path / "bad", choices[0][0], quant="f16", choices=choices))
    assert not (tmp_path / "bad").exists()


def test_auto_window_by_window_picks_for_a_full_window_and_answers_each_with_it(multi_bundle):
    """`windows="each"` with auto: the budget counts per window, so the choice is made for a full
    10 s window (none and unseg at most 250 tokens, avg3 and sample3 84; avg3 listed first), and
    every window is answered as that compressor answers the window alone."""
    audio = speechlike(23.0, 8)
    with Runtime(multi_bundle) as runtime:
        result = runtime.run(audio, max_tokens=3, compressor=AUTO, max_audio_tokens=200, windows="each")
        assert result.compressor == "avg3" and result.compressor_choice.startswith("auto chose avg3 for each window")
        windows = split_windows(audio, runtime.features, cut_at_pauses=True)
        alone = [runtime.run(window, max_tokens=3, compressor="avg3") for window in windows]
        assert result.windows == len(windows) == 3
        assert result.audio_tokens == sum(one.audio_tokens for one in alone)
        assert result.text == " ".join(one.text.strip() for one in alone if one.text.strip())
        with pytest.raises(
            EdgelalmError, match="a window of 10 s gives up to 84 audio tokens with avg3, over the budget of 83"
        ):
            runtime.run(audio, max_tokens=3, compressor=AUTO, max_audio_tokens=83, windows="each")


def test_unseg_alone_window_by_window_is_held_to_the_budget_by_what_it_gives(multi_bundle):
    """unseg's worst case (every frame a segment) refused a short clip that fits: a 3 s clip's
    22 tokens against a budget of 30 said "up to 72". Alone, it is held to the budget window by
    window, by the tokens each window gives."""
    audio = speechlike(23.0, 8)
    with Runtime(multi_bundle) as runtime:
        windows = split_windows(audio, runtime.features, cut_at_pauses=True)
        alone = [runtime.run(window, max_tokens=3, compressor="unseg") for window in windows]
        most = max(one.audio_tokens for one in alone)
        assert most < runtime.compressors["unseg"].spec.max_audio_tokens(250)  # below the worst case
        result = runtime.run(audio, max_tokens=3, compressor="unseg", max_audio_tokens=most, windows="each")
        assert result.audio_tokens == sum(one.audio_tokens for one in alone)
        with pytest.raises(EdgelalmError, match=f"gives {most} audio tokens with unseg, over the budget of {most - 1}"):
            runtime.run(audio, max_tokens=3, compressor="unseg", max_audio_tokens=most - 1, windows="each")


def test_an_adapter_is_held_to_the_manifest_s_alpha_and_refused_with_llama_cpp_s_reason(multi_bundle, tmp_path):
    """An adapter's alpha is how much of its delta llama.cpp adds: one edited to NaN (checksum
    fixed) answered "!!!!" with exit 0, and one llama.cpp refused was refused without its reason."""
    from edgelalm.files import sha256_of

    folder = tmp_path / "bundle"
    shutil.copytree(multi_bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    adapter = manifest["compressors"]["avg3"]["adapter"]
    written = adapter["gguf_alpha"]
    adapter["gguf_alpha"] = written * 2
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgelalmError, match=rf"adapter.lora.alpha is {written}; the manifest says {written * 2}$"):
        Runtime(folder)
    adapter["gguf_alpha"] = written
    adapter_file = folder / adapter["file"]
    adapter_file.write_bytes(adapter_file.read_bytes()[:-1000])  # its last factor cut short
    manifest["files"][adapter["file"]] = {"bytes": adapter_file.stat().st_size, "sha256": sha256_of(adapter_file)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgelalmError, match=r"could not load the LoRA adapter .*: .*not within the file bounds"):
        Runtime(folder)


def test_doctor_s_canary_runs_every_compressor_as_run_decodes(multi_bundle):
    """The canary ran the default compressor greedily: another compressor's adapter, or the
    bundle's advised decoding (beam, CTC head), could fail in `run` after doctor said ok."""
    from edgelalm.doctor import format_bundle
    from edgelalm.runtime.canary import run_bundle_canary

    canary = run_bundle_canary(multi_bundle)
    assert list(canary["compressors_run"]) == ["none", "avg3", "unseg", "sample3"]
    assert set(canary["compressors_run"].values()) == {"greedy"}  # what this bundle advises (nothing)
    report = {"path": "b", "model": "m", "compressor": "none", "quant": "f32", "files_verified": 9, "verify_ms": 1.0}
    assert "canary answers    ok as `run` decodes: none (greedy); avg3 (greedy); unseg (greedy); sample3 (greedy)" in (
        format_bundle({**report, "canary": canary})
    )
