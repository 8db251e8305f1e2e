"""A checkpoint with a CTC head, end to end: export writes it as ctc.onnx with the checkpoint's
decoding advice, and `run` decodes by a beam search joint with it: by default the head reads the
encoder's frames through the projector (every compressor's audio at its full rate), with
`ctc_reads="audio-tokens"` the compressor's tokens the decoder reads. The reference is
transformers' model (peft's adapter active) with the paper's compressors (tests/hf_reference.py),
and CTC log-probabilities computed here from the head's definition (its own transformer layers by
torch's TransformerEncoderLayer, each window on its own; then, in numpy, scaled cosine to the blank
and to each input embedding and a log-softmax), not from edgelalm's graph."""

from __future__ import annotations

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

from hf_reference import (  # noqa: E402
    ctc_head_log_probs,
    reference_answer,
    reference_inputs,
    reference_window_embeddings,
    speechlike,
)
from random_layers import randomised  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from edgelalm.compression import CompressorSpec  # noqa: E402
from edgelalm.constants import CTC_FILE, CTC_HEAD_FILE, DECODING_ADVICE_FILE  # noqa: E402
from edgelalm.errors import EdgelalmError  # noqa: E402
from edgelalm.export.bundle import ExportOptions, export_bundle  # noqa: E402
from edgelalm.export.ctc import CtcLayers  # noqa: E402
from edgelalm.manifest import read_manifest  # noqa: E402
from edgelalm.runtime.ctc import CtcPrefixScorer  # noqa: E402
from edgelalm.runtime.pipeline import Runtime  # noqa: E402
from edgelalm.runtime.search import beam_search  # noqa: E402
from edgelalm.training.model import torch_advance  # noqa: E402

WINDOW_SECONDS = 10  # the tiny checkpoint's encoder window
PROMPT = "Transcribe the audio."
BEAM, WEIGHT = 3, 0.5


@pytest.fixture(scope="module")
def headed_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with a CTC head (random, as a trained one would be to this random
    decoder) that has two transformer layers of its own, and the advice to decode jointly with it."""
    folder = tmp_path_factory.mktemp("headed") / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    hidden = json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"]
    generator = torch.Generator().manual_seed(3)
    layers = randomised(CtcLayers(hidden, 2, 4, 2 * hidden), generator, 0.2)
    save_file(
        {
            "blank": torch.randn(hidden, generator=generator),
            "log_scale": torch.tensor(math.log(12.0)),
            **layers.tensors(),
        },
        str(folder / CTC_HEAD_FILE),
        layers.metadata(),
    )
    (folder / DECODING_ADVICE_FILE).write_text(json.dumps({"beam_size": BEAM, "ctc_weight": WEIGHT}))
    return folder


@pytest.fixture(scope="module")
def headed_bundle(headed_checkpoint, tiny_lora_adapter, tmp_path_factory) -> Path:
    """avg2 with its LoRA merged, the head over the encoder's frames (export's default)."""
    out = tmp_path_factory.mktemp("headed-bundle") / "avg2-f32"
    export_bundle(ExportOptions(headed_checkpoint, out, CompressorSpec("avg", 2), "fp32", "f32", tiny_lora_adapter))
    return out


@pytest.fixture(scope="module")
def tokens_headed_bundle(headed_checkpoint, tiny_lora_adapter, tmp_path_factory) -> Path:
    """The same, the head over avg2's audio tokens."""
    out = tmp_path_factory.mktemp("headed-bundle") / "avg2-f32-audio-tokens"
    options = ExportOptions(
        headed_checkpoint, out, CompressorSpec("avg", 2), "fp32", "f32", tiny_lora_adapter, ctc_reads="audio-tokens"
    )
    export_bundle(options)
    return out


@pytest.fixture(scope="module")
def hf(headed_checkpoint, tiny_lora_adapter):
    base = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(headed_checkpoint)
    model = peft.PeftModel.from_pretrained(base, tiny_lora_adapter).eval()
    return model, transformers.AutoProcessor.from_pretrained(headed_checkpoint)


def head_log_probs(checkpoint: Path, model, audio_embeddings: np.ndarray | list[np.ndarray]) -> np.ndarray:
    return ctc_head_log_probs(checkpoint / CTC_HEAD_FILE, model, audio_embeddings)


def reference_joint_answer(hf, checkpoint, audio, max_tokens, beam_size, ctc_weight, reads_frames=True) -> str:
    model, processor = hf
    inputs_embeds, _, end_ids = reference_inputs(hf, audio, "avg", 2, PROMPT, WINDOW_SECONDS)
    # The projector over every frame (the paper's `none`) or avg2's tokens, each window on its own.
    read = ("none", 1) if reads_frames else ("avg", 2)
    windows = [window.numpy() for window in reference_window_embeddings(hf, audio, *read, WINDOW_SECONDS)]
    scorer = CtcPrefixScorer(head_log_probs(checkpoint, model, windows)) if ctc_weight else None
    tokens, _ = beam_search(
        torch_advance(model, inputs_embeds[0]), frozenset(end_ids), max_tokens, beam_size, scorer, ctc_weight
    )
    return processor.tokenizer.decode(tokens)


def test_export_writes_the_head_and_the_advice(headed_bundle):
    manifest = read_manifest(headed_bundle)
    assert manifest.ctc is not None and manifest.ctc.file == CTC_FILE
    assert manifest.ctc.vocab_size == manifest.decoder.vocab_size
    assert (manifest.decoding.beam_size, manifest.decoding.ctc_weight) == (BEAM, WEIGHT)
    shown = subprocess.run(
        [sys.executable, "-m", "edgelalm", "inspect", str(headed_bundle)], capture_output=True, text=True, check=True
    ).stdout
    assert f"beam search of {BEAM}, CTC weight {WEIGHT:g} (the checkpoint's advice" in shown
    assert f"CTC head {CTC_FILE} (over the encoder's frames, for every compressor)" in shown


@pytest.mark.parametrize("reads_frames", [True, False], ids=["frames", "audio-tokens"])
def test_the_bundles_head_equals_the_heads_definition(
    hf, headed_checkpoint, headed_bundle, tokens_headed_bundle, reads_frames
):
    import onnxruntime

    model, _ = hf
    base = model.get_base_model()
    bundle = headed_bundle if reads_frames else tokens_headed_bundle
    width = model.config.audio_config.d_model if reads_frames else model.config.text_config.hidden_size
    rows = np.random.default_rng(0).normal(size=(17, width)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(bundle / CTC_FILE), providers=["CPUExecutionProvider"])
    got = session.run(None, {"audio_frames" if reads_frames else "audio_embeddings": rows})[0]
    embeddings = rows
    if reads_frames:
        with torch.no_grad():
            embeddings = base.model.multi_modal_projector(torch.from_numpy(rows)).numpy()
    expected = head_log_probs(headed_checkpoint, base, embeddings)
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
    assert list(read_manifest(bundle).ctc.inputs) == ["audio_frames" if reads_frames else "audio_embeddings"]


@pytest.mark.parametrize("reads_frames", [True, False], ids=["frames", "audio-tokens"])
def test_run_decodes_as_advised_and_as_the_reference(
    hf, headed_checkpoint, headed_bundle, tokens_headed_bundle, reads_frames
):
    """The advice (beam 3, CTC weight 0.5) by default; every choice gives the reference's answer,
    and the joint answers differ from the decoder's alone (the head has a say)."""
    answers = {}
    with Runtime(headed_bundle if reads_frames else tokens_headed_bundle, kv_cache_type="f32") as runtime:
        for seconds, seed in ((3.3, 0), (14.0, 1), (6.1, 2)):  # 14 s: two windows joined
            audio = speechlike(seconds, seed)
            advised = runtime.run(audio, prompt=PROMPT, max_tokens=12)
            assert advised.decoding == f"beam search of {BEAM}, CTC weight {WEIGHT:g}"
            expected = reference_joint_answer(hf, headed_checkpoint, audio, 12, BEAM, WEIGHT, reads_frames)
            assert advised.text == expected
            beam_only = runtime.run(audio, prompt=PROMPT, max_tokens=12, ctc_weight=0)
            assert beam_only.text == reference_joint_answer(hf, headed_checkpoint, audio, 12, BEAM, 0.0)
            greedy = runtime.run(audio, prompt=PROMPT, max_tokens=12, beam_size=1, ctc_weight=0)
            assert greedy.decoding == "greedy"
            assert greedy.text == reference_answer(hf, audio, "avg", 2, 12, PROMPT, WINDOW_SECONDS)[0]
            answers[seed] = (advised.text, beam_only.text)
            if seconds < WINDOW_SECONDS:  # one window: answered on its own, the same answer
                each = runtime.run(audio, prompt=PROMPT, max_tokens=12, windows="each")
                assert each.text.strip() == advised.text.strip()
            # After a search the prompt's cells are still there for the next run (the prefix cache).
            assert beam_only.reused_prompt_tokens > 0 and greedy.reused_prompt_tokens > 0
    assert any(joint != alone for joint, alone in answers.values())


def test_decoding_choices_are_refused_in_one_line(headed_bundle, tiny_bundles):
    with Runtime(headed_bundle) as runtime:
        for kwargs, words in (
            ({"beam_size": 0}, "beam_size must be a whole number from 1 to 16, got 0"),
            ({"beam_size": 2.5}, "beam_size must be a whole number"),
            ({"ctc_weight": 1.5}, "ctc_weight must be a number from 0 to 1, got 1.5"),
            ({"ctc_weight": float("nan")}, "ctc_weight must be a number from 0 to 1"),
            ({"temperature": 0.8, "beam_size": 2}, "sampling (temperature > 0) draws one answer"),
            ({"temperature": 0.8, "beam_size": "4"}, "beam_size must be a whole number"),
            ({"temperature": 0.8, "ctc_weight": float("nan")}, "ctc_weight must be a number from 0 to 1"),
            ({"beam_size": True}, "beam_size must be a whole number"),
        ):
            with pytest.raises(EdgelalmError, match=words.replace("(", r"\(").replace(")", r"\)")):
                runtime.run(speechlike(1.0, 0), **kwargs)
        sampled = runtime.run(speechlike(1.0, 0), max_tokens=4, temperature=0.8)  # the advice gives way
        assert sampled.decoding.startswith("sampled")
    with Runtime(tiny_bundles("avg", 2, "q8_0")) as runtime, pytest.raises(EdgelalmError, match="has no CTC head"):
        runtime.run(speechlike(1.0, 0), ctc_weight=0.3)


def test_cli_run_takes_the_choices_and_refuses_a_weight_without_a_head(headed_bundle, tiny_bundles, tmp_path):
    clip = tmp_path / "clip.wav"
    import soundfile

    soundfile.write(clip, speechlike(2.0, 4), 16000)
    command = [sys.executable, "-m", "edgelalm", "run", str(clip), "--max-tokens", "6", "--json"]
    done = subprocess.run(
        [*command, "--bundle", str(headed_bundle), "--beam-size", "2"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["decoding"] == f"beam search of 2, CTC weight {WEIGHT:g}"
    refused = subprocess.run(
        [*command, "--bundle", str(tiny_bundles("avg", 2, "q8_0")), "--ctc-weight", "0.4"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "has no CTC head" in refused.stderr


def test_a_malformed_head_or_advice_is_refused_at_export(headed_checkpoint, tmp_path):
    for name, content, words in (
        (CTC_HEAD_FILE, b"not safetensors", "not a readable safetensors file"),
        (DECODING_ADVICE_FILE, b'{"beam_size": 40}', "beam_size must be from 1 to 16, got 40"),
    ):
        broken = tmp_path / name.split(".")[0]
        shutil.copytree(headed_checkpoint, broken)
        (broken / name).write_bytes(content)
        with pytest.raises(EdgelalmError, match=words):
            export_bundle(ExportOptions(broken, tmp_path / f"{broken.name}-out", CompressorSpec("none", 1)))
        assert not (tmp_path / f"{broken.name}-out").exists()
    no_head = tmp_path / "advice-without-head"
    shutil.copytree(headed_checkpoint, no_head)
    (no_head / CTC_HEAD_FILE).unlink()
    with pytest.raises(EdgelalmError, match="needs a CTC head, and there is none"):
        export_bundle(ExportOptions(no_head, tmp_path / "no-head-out", CompressorSpec("none", 1)))
    realigned = tmp_path / "checkpoint-head-realigned"  # a transform: it reads a compressor's tokens
    shutil.copytree(headed_checkpoint, realigned)
    hidden = json.loads((realigned / "config.json").read_text())["text_config"]["hidden_size"]
    save_file(
        {"blank": torch.ones(hidden), "log_scale": torch.tensor(1.0), "transform": torch.zeros(hidden, hidden)},
        str(realigned / CTC_HEAD_FILE),
    )
    with pytest.raises(EdgelalmError, match="not the encoder's frames; export it with --ctc-reads audio-tokens"):
        export_bundle(ExportOptions(realigned, tmp_path / "realigned-out", CompressorSpec("none", 1)))
    assert not (tmp_path / "realigned-out").exists()
    with pytest.raises(EdgelalmError, match="ctc_reads must be one of frames, audio-tokens, got 'tokens'"):
        export_bundle(
            ExportOptions(headed_checkpoint, tmp_path / "typo-out", CompressorSpec("none", 1), ctc_reads="tokens")
        )


def test_a_head_over_frames_narrower_than_the_decoder(tmp_path):
    """Encoder width 32, decoder width 64 (as the 7B: 1280 and 4096): the frames head's graph takes
    the encoder's width, holds the projector, and equals the head's definition over the projected
    frames; `run` feeds it the frames, joined and each window on its own."""
    import onnxruntime
    from safetensors.torch import load_file

    from edgelalm.scaffold import PRESETS, SAMPLE_TEXTS, model_config, train_tokenizer, write_checkpoint

    tokenizer = train_tokenizer(SAMPLE_TEXTS, vocab_size=600)
    config = model_config(tokenizer, **{**PRESETS["tiny"], "encoder_d_model": 32})
    checkpoint = write_checkpoint(tmp_path / "narrow", config, tokenizer)
    save_file({"blank": torch.ones(64), "log_scale": torch.tensor(math.log(12.0))}, str(checkpoint / CTC_HEAD_FILE))
    bundle = tmp_path / "narrow-avg2"
    export_bundle(ExportOptions(checkpoint, bundle, CompressorSpec("avg", 2), "fp32", "f32"))
    assert read_manifest(bundle).ctc.inputs == {"audio_frames": "[L, audio_width]"}
    model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint).eval()
    frames = np.random.default_rng(1).normal(size=(17, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(bundle / CTC_FILE), providers=["CPUExecutionProvider"])
    got = session.run(None, {"audio_frames": frames})[0]
    weights = load_file(str(checkpoint / "model.safetensors"))
    projector_weight = next(v for k, v in weights.items() if k.endswith("multi_modal_projector.linear.weight"))
    projector_bias = next(v for k, v in weights.items() if k.endswith("multi_modal_projector.linear.bias"))
    projected = frames @ projector_weight.float().numpy().T + projector_bias.float().numpy()
    expected = head_log_probs(checkpoint, model, projected)
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
    with Runtime(bundle) as runtime:
        for windows in ("joined", "each"):
            result = runtime.run(speechlike(14.0, 3), max_tokens=4, beam_size=2, ctc_weight=0.5, windows=windows)
            assert result.decoding == "beam search of 2, CTC weight 0.5"


def test_a_head_of_another_vocabulary_is_refused_at_load(headed_bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(headed_bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["ctc"]["vocab_size"] += 3
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgelalmError, match=r"ctc.vocab_size is \d+; this edgelalm reads \d+"):
        read_manifest(folder)
