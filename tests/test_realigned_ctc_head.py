"""A CTC head realigned to a compressor: `finetune` trains it beside the LoRA (or alone, into an
existing adapter folder), export takes the adapter's head over the checkpoint's (one compressor:
ctc.onnx; several: each choice's own ctc-LABEL.onnx), and `run` decodes each compressor with its
own. References: the head's definition in numpy (tests/hf_reference.py), transformers + peft for
the decoder, peft's own adapter loading for the LoRA."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from bundle_edits import edited_copy  # noqa: E402
from hf_reference import ctc_head_log_probs, reference_inputs, speechlike  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from edgelalm.compression import CompressorSpec  # noqa: E402
from edgelalm.constants import (  # noqa: E402
    CTC_FILE,
    CTC_HEAD_FILE,
    DECODING_ADVICE_FILE,
    FINETUNE_RECORD_FILE,
    REALIGNED_HEADS_FORMAT_VERSION,
    REALIGNED_TO_KEY,
)
from edgelalm.errors import EdgelalmError  # noqa: E402
from edgelalm.export.bundle import ExportOptions, export_bundle  # noqa: E402
from edgelalm.manifest import read_manifest  # noqa: E402
from edgelalm.runtime.ctc import CtcPrefixScorer  # noqa: E402
from edgelalm.runtime.pipeline import Runtime  # noqa: E402
from edgelalm.runtime.search import beam_search  # noqa: E402
from edgelalm.training.finetune import CTC_HEAD_LOG_FILE, FinetuneOptions, finetune  # noqa: E402
from edgelalm.training.model import torch_advance  # noqa: E402

# Minutes of export and training: `pytest -m 'not slow'` skips them locally; CI runs all.
pytestmark = pytest.mark.slow

WINDOW_SECONDS = 10  # the tiny checkpoint's encoder window
PROMPT = "Transcribe the audio."
BEAM, WEIGHT = 3, 0.5
# These bundles' heads read the compressor's audio tokens (realigned heads); export's default reads
# the encoder's frames (test_by_default_the_head_reads_the_frames_and_realigned_heads_stay_out).
TOKENS = "audio-tokens"


def random_head(hidden: int, seed: int, realigned: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    head = {"blank": torch.randn(hidden, generator=generator), "log_scale": torch.tensor(math.log(12.0))}
    if realigned:
        head["transform"] = 0.3 * torch.randn(hidden, hidden, generator=generator)
    return head


@pytest.fixture(scope="module")
def hidden(tiny_checkpoint) -> int:
    return json.loads((tiny_checkpoint / "config.json").read_text())["text_config"]["hidden_size"]


@pytest.fixture(scope="module")
def headed_checkpoint(tiny_checkpoint, hidden, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("headed") / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    save_file(random_head(hidden, 3, realigned=False), str(folder / CTC_HEAD_FILE))
    (folder / DECODING_ADVICE_FILE).write_text(json.dumps({"beam_size": BEAM, "ctc_weight": WEIGHT}))
    return folder


@pytest.fixture(scope="module")
def realigned_adapter(tiny_lora_adapter, hidden, tmp_path_factory) -> Path:
    """The tiny LoRA with a head realigned to avg2 (random: a map far from the identity, so a run
    that read the checkpoint's head instead would answer otherwise)."""
    folder = tmp_path_factory.mktemp("realigned") / "avg2"
    shutil.copytree(tiny_lora_adapter, folder)
    save_file(random_head(hidden, 5, realigned=True), str(folder / CTC_HEAD_FILE))
    return folder


@pytest.fixture(scope="module")
def hf(headed_checkpoint, tiny_lora_adapter):
    base = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(headed_checkpoint)
    return peft.PeftModel.from_pretrained(base, tiny_lora_adapter).eval(), transformers.AutoProcessor.from_pretrained(
        headed_checkpoint
    )


def reference_joint_answer(hf, head_file: Path, audio: np.ndarray, compressor: str, factor: int) -> str:
    model, processor = hf
    inputs_embeds, audio_embeddings, end_ids = reference_inputs(hf, audio, compressor, factor, PROMPT, WINDOW_SECONDS)
    scorer = CtcPrefixScorer(ctc_head_log_probs(head_file, model, audio_embeddings.numpy()))
    tokens, _ = beam_search(torch_advance(model, inputs_embeds[0]), frozenset(end_ids), 10, BEAM, scorer, WEIGHT)
    return processor.tokenizer.decode(tokens)


def assert_edit_refused(bundle: Path, edit, words: str, edited: Path) -> None:
    """A copy of `bundle` with its manifest edited by `edit` is refused, in words matching `words`."""
    with pytest.raises(EdgelalmError, match=words):
        read_manifest(edited_copy(bundle, edited, edit))


def test_one_compressor_bundle_decodes_with_its_adapters_head(hf, headed_checkpoint, realigned_adapter, tmp_path):
    out = tmp_path / "avg2"
    options = ExportOptions(
        headed_checkpoint, out, CompressorSpec("avg", 2), "fp32", "f32", realigned_adapter, ctc_reads=TOKENS
    )
    export_bundle(options)
    manifest = read_manifest(out)
    assert manifest.ctc is not None and (manifest.ctc.file, manifest.ctc.realigned_to) == (CTC_FILE, "avg2")
    shown = subprocess.run([sys.executable, "-m", "edgelalm", "inspect", str(out)], capture_output=True, text=True)
    assert f"CTC head {CTC_FILE} (realigned to avg2)" in shown.stdout
    answers = set()
    with Runtime(out, kv_cache_type="f32") as runtime:
        for seconds, seed in ((3.3, 0), (6.1, 2)):
            audio = speechlike(seconds, seed)
            got = runtime.run(audio, prompt=PROMPT, max_tokens=10).text
            assert got == reference_joint_answer(hf, realigned_adapter / CTC_HEAD_FILE, audio, "avg", 2)
            answers.add((got, reference_joint_answer(hf, headed_checkpoint / CTC_HEAD_FILE, audio, "avg", 2)))
    assert any(realigned != unaligned for realigned, unaligned in answers)  # the heads differ in what they say


def test_a_bundle_of_several_gives_each_compressor_its_own_head(hf, headed_checkpoint, realigned_adapter, tmp_path):
    """avg2 with its adapter's realigned head (ctc-avg2.onnx), sample2 without an adapter on the
    checkpoint's (ctc.onnx): each compressor's embeddings through its own head's definition."""
    out = tmp_path / "several"
    choices = ((CompressorSpec("avg", 2), realigned_adapter), (CompressorSpec("sample", 2), None))
    export_bundle(
        ExportOptions(
            headed_checkpoint, out, CompressorSpec("avg", 2), "fp32", "f32", choices=choices, ctc_reads=TOKENS
        )
    )
    manifest = read_manifest(out)
    assert manifest.ctc is not None and (manifest.ctc.file, manifest.ctc.realigned_to) == (CTC_FILE, None)
    own = manifest.compressors["avg2"].ctc
    assert own is not None and (own.file, own.realigned_to) == ("ctc-avg2.onnx", "avg2")
    assert manifest.compressors["sample2"].ctc is None
    # A version-2 reader would decode avg2 with the bundle's head: the bundle says it needs version 3.
    assert manifest.format_version == REALIGNED_HEADS_FORMAT_VERSION == 3
    # The reader holds the heads to what they are: a choice's its adapter's, the bundle's the checkpoint's.
    for edit, words in (
        (lambda m: m["compressors"]["avg2"]["ctc"].update(realigned_to=None), "must say which compressor"),
        (lambda m: m["ctc"].update(realigned_to="avg2"), "realigned to none of them"),
        (lambda m: m["compressors"]["avg2"]["ctc"].update(vocab_size=3), r"compressors.avg2.ctc.vocab_size is 3"),
        (lambda m: m.update(format_version=2), "these compressors need format version 3, got 2"),
    ):
        assert_edit_refused(out, edit, words, tmp_path / "edited")
    model = hf[0].get_base_model()
    embeddings = np.random.default_rng(0).normal(size=(9, model.config.text_config.hidden_size)).astype(np.float32)
    with Runtime(out, kv_cache_type="f32") as runtime:
        for label, head_file in (("avg2", realigned_adapter), ("sample2", headed_checkpoint)):
            expected = ctc_head_log_probs(head_file / CTC_HEAD_FILE, model, embeddings)
            assert np.abs(runtime.compressors[label].ctc(embeddings) - expected).max() < 1e-4
        audio = speechlike(4.2, 7)
        got = runtime.run(audio, prompt=PROMPT, max_tokens=10, compressor="avg2").text
        assert got == reference_joint_answer(hf, realigned_adapter / CTC_HEAD_FILE, audio, "avg", 2)


def test_by_default_the_head_reads_the_frames_and_realigned_heads_stay_out(
    headed_checkpoint, realigned_adapter, tmp_path, capsys
):
    """export's default (the head over the encoder's frames, for every compressor): the checkpoint's
    head in ctc.onnx, no choice's own, the adapters' realigned heads named as unused; the reader holds
    a frames head to what it is."""
    out = tmp_path / "several"
    choices = ((CompressorSpec("avg", 2), realigned_adapter), (CompressorSpec("sample", 2), None))
    export_bundle(ExportOptions(headed_checkpoint, out, CompressorSpec("avg", 2), "fp32", "q8_0", choices=choices))
    assert f"{realigned_adapter}: its realigned CTC head is not used" in capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest.ctc is not None and manifest.ctc.reads_frames and manifest.ctc.realigned_to is None
    assert all(choice.ctc is None for choice in manifest.compressors.values())
    assert not (out / "ctc-avg2.onnx").exists() and manifest.format_version == 2
    with Runtime(out) as runtime:  # one head over the frames for every compressor, `auto` too
        head = runtime.compressors["avg2"].ctc
        assert head is not None and head.reads_frames and runtime.compressors["sample2"].ctc is head
        for compressor in ("avg2", "sample2", "auto"):
            result = runtime.run(speechlike(4.2, 7), prompt=PROMPT, max_tokens=3, ctc_weight=0.3, compressor=compressor)
            assert result.decoding.endswith("CTC weight 0.3")
    for edit, words in (
        (lambda m: m["ctc"].update(realigned_to="avg2"), "realigned to none of them"),
        (
            lambda m: (m["compressors"]["avg2"].update(ctc=m["ctc"]), m.update(format_version=3)),
            r"compressors.avg2.ctc.inputs is \['audio_frames'\]",
        ),
        (lambda m: m["ctc"].update(inputs={"audio_frames": "[L, audio_width]", "x": "[1]"}), r"ctc.inputs is"),
    ):
        assert_edit_refused(out, edit, words, tmp_path / "edited")
    one = tmp_path / "one"
    options = ExportOptions(headed_checkpoint, one, CompressorSpec("avg", 2), "fp32", "q8_0", realigned_adapter)
    export_bundle(options)
    single = read_manifest(one)
    assert single.ctc is not None and single.ctc.reads_frames and single.ctc.realigned_to is None
    written = json.loads((one / "manifest.json").read_text())
    written["ctc"]["realigned_to"] = "avg2"
    (one / "manifest.json").write_text(json.dumps(written))
    with pytest.raises(EdgelalmError, match="reads the encoder's frames, so it is realigned to no compressor"):
        read_manifest(one, verify_files=False)


def test_export_warns_naming_what_says_an_adapter_is_for(realigned_adapter, hidden, tmp_path, capsys):
    """Exported with another compressor than it was realigned to: the warning names the file that
    says so, the finetune record or (the shipped adapters keep none) the head's metadata."""
    from edgelalm.cli import _warn_if_realigned_to_another
    from edgelalm.training.finetune import adapter_realignment

    adapter = tmp_path / "avg2"
    shutil.copytree(realigned_adapter, adapter)
    assert adapter_realignment(adapter) is None  # a head without metadata, no record: nothing says
    save_file(random_head(hidden, 5, realigned=True), str(adapter / CTC_HEAD_FILE), {REALIGNED_TO_KEY: "avg2"})
    _warn_if_realigned_to_another(CompressorSpec("unseg", 1), adapter)
    warning = f"{adapter} was realigned to avg2 ({CTC_HEAD_FILE}); exporting it with unseg"
    assert warning in capsys.readouterr().err
    (adapter / FINETUNE_RECORD_FILE).write_text(json.dumps({"compressor": "avg3"}))  # the record comes first
    assert adapter_realignment(adapter) == ("avg3", FINETUNE_RECORD_FILE)
    _warn_if_realigned_to_another(CompressorSpec("avg", 3), adapter)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "record", [{"ctc_head": "avg2"}, {"compressor": ["avg2"]}, {"compressor": "avg3", "ctc_head": 1}]
)
def test_a_record_from_elsewhere_neither_warns_nor_stops_export(realigned_adapter, record, tmp_path, capsys):
    """A finetune record edited by hand or written by another tool: finetune's realignment refuses
    it in one line; export's warning has nothing to say and the export goes on (AttributeError
    before: `"ctc_head": "avg2"` stopped the export with a traceback)."""
    from edgelalm.cli import _warn_if_realigned_to_another
    from edgelalm.training.finetune import adapter_realignment

    adapter = tmp_path / "adapter"
    shutil.copytree(realigned_adapter, adapter)
    (adapter / FINETUNE_RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(EdgelalmError, match=f"{FINETUNE_RECORD_FILE} is not a finetune record"):
        adapter_realignment(adapter)
    _warn_if_realigned_to_another(CompressorSpec("unseg", 1), adapter)
    assert capsys.readouterr().err == ""


def test_a_record_that_may_not_be_read_does_not_stop_export(realigned_adapter, unprivileged, tmp_path):
    """An adapter whose finetune record its reader may not open: the warning cannot say, and the
    export goes on (a PermissionError traceback before)."""
    adapter = tmp_path / "adapter"
    shutil.copytree(realigned_adapter, adapter)
    record = adapter / FINETUNE_RECORD_FILE
    record.write_text(json.dumps({"compressor": "avg2"}))
    record.chmod(0)
    code = (
        "import sys; from pathlib import Path; from edgelalm.cli import _warn_if_realigned_to_another;"
        "from edgelalm.compression import CompressorSpec;"
        "_warn_if_realigned_to_another(CompressorSpec('unseg', 1), Path(sys.argv[1])); print('went on')"
    )
    done = subprocess.run(unprivileged(sys.executable, "-c", code, str(adapter)), capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "went on\n", done.stderr
    assert done.stderr == ""


def test_a_weight_needs_a_head_for_every_compressor(tiny_checkpoint, realigned_adapter, tmp_path):
    """A checkpoint without a head: only avg2's adapter has one, so sample2 has none."""
    out = tmp_path / "some-heads"
    choices = ((CompressorSpec("avg", 2), realigned_adapter), (CompressorSpec("sample", 2), None))
    export_bundle(
        ExportOptions(tiny_checkpoint, out, CompressorSpec("avg", 2), "fp32", "q8_0", choices=choices, ctc_reads=TOKENS)
    )
    manifest = read_manifest(out)
    assert manifest.ctc is None and manifest.compressors["avg2"].ctc is not None
    assert manifest.headless_compressors() == ["sample2"]
    # A bundle of one compressor names it by its label, as a bundle of several does.
    one = dataclasses.replace(manifest, compressors={}, ctc=None, format_version=1)
    assert one.headless_compressors() == ["avg2"]
    with Runtime(out) as runtime:
        for compressor in ("sample2", "auto"):
            with pytest.raises(EdgelalmError, match=r"has no CTC head for sample2 \("):
                runtime.run(speechlike(1.0, 0), ctc_weight=0.3, compressor=compressor)
        assert runtime.run(speechlike(1.0, 0), ctc_weight=0.3, compressor="avg2", max_tokens=3).decoding.endswith("0.3")


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("a transform of another shape", r"transform \[\d+, \d+\]; got \[\d+\], \[\], \[3, 3\]"),
        ("a NaN transform", "the head's values must be finite"),
        ("a tensor it does not know", "found bias, blank, log_scale"),
    ],
)
def test_a_malformed_realigned_head_is_refused_at_export(
    case, words, headed_checkpoint, realigned_adapter, hidden, tmp_path
):
    broken = tmp_path / "adapter"
    shutil.copytree(realigned_adapter, broken)
    extra = {
        "a transform of another shape": {"transform": torch.zeros(3, 3)},
        "a NaN transform": {"transform": torch.full((hidden, hidden), float("nan"))},
        "a tensor it does not know": {"bias": torch.zeros(2)},
    }[case]
    save_file({**random_head(hidden, 5, realigned=False), **extra}, str(broken / CTC_HEAD_FILE))
    out = tmp_path / "out"
    with pytest.raises(EdgelalmError, match=words):
        export_bundle(
            ExportOptions(headed_checkpoint, out, CompressorSpec("avg", 2), "fp32", "q8_0", broken, ctc_reads=TOKENS)
        )
    assert not out.exists()


# -- finetune ---------------------------------------------------------------------------------


def finetune_options(checkpoint: Path, data: Path, out: Path, **more) -> FinetuneOptions:
    return FinetuneOptions(
        checkpoint, data, out, CompressorSpec("avg", 2), steps=16, batch_size=4, learning_rate=1e-2, **more
    )


@pytest.fixture(scope="module")
def finetuned(headed_checkpoint, paired_tsv, tmp_path_factory) -> tuple[Path, Path]:
    """The same finetune with and without the head's realignment."""
    root = tmp_path_factory.mktemp("finetuned")
    with_head = finetune(finetune_options(headed_checkpoint, paired_tsv, root / "with", ctc_head=True), progress=False)
    # Not asked (the default): a bundle's head reads the encoder's frames and needs no realignment.
    without = finetune(finetune_options(headed_checkpoint, paired_tsv, root / "without"), progress=False)
    return with_head, without


def test_finetune_realigns_the_checkpoints_head_beside_the_lora(finetuned, headed_checkpoint, hidden):
    with_head, without = finetuned
    assert not (without / CTC_HEAD_FILE).exists()
    head, start = load_file(with_head / CTC_HEAD_FILE), load_file(headed_checkpoint / CTC_HEAD_FILE)
    assert set(head) == {"blank", "log_scale", "transform"} and head["transform"].shape == (hidden, hidden)
    assert head["transform"].abs().max() > 0 and not torch.equal(head["blank"], start["blank"])
    # From the checkpoint's head, toward the data: the CTC loss falls.
    log = [json.loads(line) for line in (with_head / CTC_HEAD_LOG_FILE).read_text().splitlines()]
    assert log[-1]["ctc_loss"] < log[0]["ctc_loss"]
    from edgelalm.export.ctc import head_realigned_to

    assert head_realigned_to(with_head) == "avg2"  # in the head file's metadata, for export
    record = json.loads((with_head / FINETUNE_RECORD_FILE).read_text())
    assert record["ctc_head"]["compressor"] == "avg2" and record["ctc_head"]["final_ctc_loss"] == log[-1]["ctc_loss"]
    # The head trains after the LoRA, on nothing the LoRA reads: the LoRA is the one made without it.
    lora_with, lora_without = (load_file(folder / "adapter_model.safetensors") for folder in (with_head, without))
    assert lora_with.keys() == lora_without.keys()
    assert all(torch.equal(lora_with[key], lora_without[key]) for key in lora_with)


def test_ctc_head_only_realigns_an_existing_adapter_and_nothing_else(
    finetuned, headed_checkpoint, paired_tsv, tmp_path
):
    _, without = finetuned
    folder = tmp_path / "adapter"
    shutil.copytree(without, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    finetune(finetune_options(headed_checkpoint, paired_tsv, folder, ctc_head_only=True), progress=False)
    after = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert set(after) == set(before) | {CTC_HEAD_FILE, CTC_HEAD_LOG_FILE}
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {FINETUNE_RECORD_FILE}  # the LoRA, its log and plot untouched
    record = json.loads(after[FINETUNE_RECORD_FILE])
    assert record["compressor"] == "avg2" and record["ctc_head"]["steps"] == 16
    assert set(load_file(folder / CTC_HEAD_FILE)) == {"blank", "log_scale", "transform"}


def run_finetune_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgelalm", "finetune", *args], capture_output=True, text=True)


def test_head_realignment_refusals_are_one_line_and_write_nothing(
    finetuned, tiny_checkpoint, headed_checkpoint, paired_tsv, tmp_path
):
    with_head, without = finetuned
    adapter = tmp_path / "adapter"
    shutil.copytree(without, adapter)
    recordless = tmp_path / "recordless"  # as the shipped adapters: only the head says what it is for
    shutil.copytree(with_head, recordless)
    (recordless / FINETUNE_RECORD_FILE).unlink()
    stray = tmp_path / "stray"
    shutil.copytree(without, stray)
    (stray / "notes.txt").write_text("mine")
    common = ["--data", str(paired_tsv), "--steps", "2", "--batch-size", "2"]
    for model, extra, words in (
        (tiny_checkpoint, ["--compressor", "avg", "--out", str(adapter), "--ctc-head-only"], "has no CTC head"),
        (tiny_checkpoint, ["--compressor", "avg", "--out", str(tmp_path / "new"), "--ctc-head"], "has no CTC head"),
        (headed_checkpoint, ["--compressor", "unseg", "--out", str(adapter), "--ctc-head-only"], "realigned to avg2"),
        (
            headed_checkpoint,
            ["--compressor", "unseg", "--out", str(recordless), "--ctc-head-only"],
            "realigned to avg2",
        ),
        (
            headed_checkpoint,
            ["--compressor", "avg", "--out", str(tmp_path), "--ctc-head-only"],
            "not an adapter folder",
        ),
        (headed_checkpoint, ["--compressor", "avg", "--out", str(stray), "--ctc-head-only"], "notes.txt"),
        (
            headed_checkpoint,
            ["--compressor", "avg", "--out", str(adapter), "--ctc-head-only", "--no-ctc-head"],
            "cannot be turned off",
        ),
    ):
        done = run_finetune_cli("--model", str(model), *common, *extra)
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert not (adapter / CTC_HEAD_FILE).exists() and not (tmp_path / "new").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter", "recordless", "stray"]


def test_a_head_that_could_align_no_clip_is_refused(headed_checkpoint, paired_tsv, tmp_path):
    """At avg25 the clips (1 to 2.5 s: 1 or 2 audio tokens) are shorter than their transcripts'
    tokens; CTC's loss was infinite on each, zero_infinity made it 0, and the head "realigned" on
    nothing: loss 0.0 at every step, exit 0, the head saved as it was."""
    out = tmp_path / "avg25"
    done = run_finetune_cli(
        "--model", str(headed_checkpoint), "--data", str(paired_tsv), "--steps", "2", "--batch-size", "2",
        "--compressor", "avg25", "--ctc-head", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # after transformers' own loading bar
    assert last.startswith("edgelalm: error: ") and "4 of 4 clips have fewer audio tokens with avg25" in last
    assert "a smaller factor, or --no-ctc-head" in last and not out.exists()
