"""The model shipped inside the package, end to end: `edgelalm export` with no --model takes it,
`edgelalm run` transcribes the example clips (sentences not trained on; seven of the eight voices
never heard in training, four of them from a synthesizer training never used), and the exported
pipeline says what transformers says."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelalm.files import read_tsv
from edgelalm.pretrained import DEFAULT_MODEL_NAME, default_model_dir, shipped_adapters
from edgelalm.runtime.audio import read_audio
from edgelalm.runtime.features import encoder_output_frames
from edgelalm.training.evaluate import score, transcribe_bundle, transcribe_torch
from edgelalm.training.texts import normalize_transcript

# Minutes of export, training or benchmarking: `pytest -m 'not slow'` skips them locally; CI runs all.
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The shipped model's WER table on its held-out voices and texts, decoded as its bundles advise
# (recipes/default_model/wer_table.py; run_all.sh steps 33-34: its decoder and CTC head trained on two
# games' recorded lines too, averaged with the synthetic-only ones, and its adapters realigned to it).
HELD_OUT_WER = (
    Path(__file__).resolve().parents[1]
    / "recipes"
    / "default_model"
    / "results"
    / "decoder-steel-sky-averaged"
    / "test"
    / "wer.json"
)


def example_transcripts() -> dict[str, str]:
    """examples/transcripts.tsv: clip file name -> its true transcript, in the table's order."""
    return {row["file"]: row["transcript"] for row in read_tsv(EXAMPLES / "transcripts.tsv")}


def examples() -> tuple[list, list[str]]:
    transcripts = example_transcripts()
    return [read_audio(EXAMPLES / file, 16000) for file in transcripts], list(transcripts.values())


def examples_twice_with_pauses():
    """46 s: the example clips twice over, 0.8 s of silence after each (past the 30 s window)."""
    clips, references = examples()
    pause = np.zeros(int(0.8 * 16000), np.float32)
    return np.concatenate([part for clip in clips + clips for part in (clip, pause)]), references * 2


def shipped_decoding_advice() -> dict:
    """How the shipped model advises `run` to decode (recipes/default_model/ship.py writes it)."""
    from edgelalm.constants import DECODING_ADVICE_FILE

    return json.loads((default_model_dir() / DECODING_ADVICE_FILE).read_text())


def pytorch_default_model():
    """transformers' own model of the shipped checkpoint in float32, its processor, and the prompt
    its bundles feed: the reference."""
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    from edgelalm.training.model import PromptIds

    model_dir = default_model_dir()
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).float().eval()
    processor = Qwen2AudioProcessor.from_pretrained(model_dir)
    return model, processor, PromptIds.for_checkpoint(processor, model_dir)


def export(out: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "export", *args, "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result


def test_the_package_ships_the_default_model_as_safetensors():
    model_dir = default_model_dir()
    assert model_dir.name == DEFAULT_MODEL_NAME
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt"))
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2AudioForConditionalGeneration"]
    assert shipped_adapters() == ["avg2", "avg3", "sample3", "unseg"]


@pytest.fixture(scope="module")
def none_f16_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default") / "bundle"
    result = export(out, "--compressor", "none", "--quant", "f16")
    assert "warning" not in result.stderr  # `none` needs no realignment
    return out


def test_measurements_decode_max_tokens_where_the_model_ends_its_answer_at_once(none_f16_bundle):
    """The bench's and doctor's synthetic clip is no speech: the default model ends its answer at
    once, and both reported 0 tokens, a decode rate of 0.0 (the PyTorch reference decodes all)."""
    from edgelalm.bench import synthetic_clip
    from edgelalm.runtime.canary import bundle_canary
    from edgelalm.runtime.pipeline import Runtime

    with Runtime(none_f16_bundle) as runtime:
        answer = runtime.run(synthetic_clip(3.0), max_tokens=8, beam_size=1, ctc_weight=0.0)
        assert answer.generated_tokens == 0  # the case: an answer ended at once
        runtime.stop_at_end_of_answer = False
        measured = runtime.run(synthetic_clip(3.0), max_tokens=8, beam_size=1, ctc_weight=0.0)
        assert measured.generated_tokens == 8 and measured.decode_tokens_per_second > 0
    canary = bundle_canary(none_f16_bundle)
    assert canary["generated_tokens"] == 8 and canary["decode_tokens_per_second"] > 0


def test_default_export_takes_the_shipped_model(none_f16_bundle):
    manifest = json.loads((none_f16_bundle / "manifest.json").read_text())
    assert manifest["model"]["name"] == DEFAULT_MODEL_NAME
    assert manifest["decoder"]["adapter"] is None
    # --encoder-precision auto: the shipped tower is float16, so its MatMul weights stay float16.
    assert manifest["encoder"]["precision"] == "fp16w"
    # Its advice for long clips and for decoding (recipes/default_model/ship.py), which `run`
    # follows unless told, and the CTC head that the decoding advice weighs.
    assert manifest["windows"] == {"mode": "each", "seconds": 8.0}
    assert manifest["decoding"] == shipped_decoding_advice() and manifest["decoding"]["ctc_weight"] > 0
    assert manifest["ctc"]["file"] == "ctc.onnx" and manifest["ctc"]["vocab_size"] == manifest["decoder"]["vocab_size"]


@pytest.mark.parametrize(("beam_size", "ctc_weight"), [(1, 0.0), (4, 0.5)])
def test_bundle_transcripts_equal_pytorch_transcripts(none_f16_bundle, beam_size, ctc_weight):
    """Transcripts of the example clips through onnxruntime + llama.cpp (f16: the shipped weights
    exactly) equal transformers' on the same model: greedy (its own generate), and the bundle's
    advice, a beam of 4 joint with the CTC head (the same search over transformers' logits, the
    head as training defines it: TokenCtc with the shipped head's two tensors)."""
    from torch import nn

    from edgelalm.constants import CTC_HEAD_FILE
    from edgelalm.training.train import TokenCtc

    model, processor, prompt = pytorch_default_model()
    head = TokenCtc(model.get_input_embeddings(), processor.tokenizer)
    head.load_head(default_model_dir() / CTC_HEAD_FILE)
    clips, references = examples()
    reference_texts, reference_tokens = transcribe_torch(
        model, processor, prompt, nn.Identity(), clips, beam_size=beam_size, ctc_weight=ctc_weight,
        ctc_head=lambda audio: head.log_probs(audio).detach(),
    )  # fmt: skip
    texts, tokens = transcribe_bundle(none_f16_bundle, clips, 16000, beam_size=beam_size, ctc_weight=ctc_weight)
    assert tokens == reference_tokens
    assert [t.strip() for t in texts] == [t.strip() for t in reference_texts]
    assert all(text.strip() for text in texts)
    seconds = sum(len(c) for c in clips) / 16000
    # Both say the same words, so both score the same against the true transcripts.
    assert (
        score(references, texts, tokens, seconds).errors == score(references, reference_texts, tokens, seconds).errors
    )


@pytest.mark.parametrize("ctc_reads", ["frames", "audio-tokens"])
def test_the_unseg_bundle_decodes_jointly_as_pytorch_does(tmp_path, ctc_reads):
    """unseg's f16 bundle decodes the example clips jointly as transformers does with peft's LoRA
    merged and the paper's unsupervised segmentation (tests/reference.py): by default with the
    checkpoint's head over the encoder's frames, projected (recipes/default_model/README.md, "How it
    is made": the CTC head over the encoder's frames); with `--ctc-reads audio-tokens` with the head
    the shipped adapter realigned to unseg (TokenCtc with its layers and the residual map) over
    unseg's tokens."""
    import torch
    from peft import PeftModel
    from reference import unsupervised_segmentation
    from safetensors.torch import load_file

    from edgelalm.compression import CompressorSpec
    from edgelalm.constants import CTC_HEAD_FILE
    from edgelalm.pretrained import default_adapter_dir
    from edgelalm.training.train import TokenCtc

    adapter = default_adapter_dir(CompressorSpec("unseg"))
    # the checkpoint's head (its layers too), realigned, and the residual map
    realigned = set(load_file(default_model_dir() / CTC_HEAD_FILE)) | {"transform"}
    assert adapter is not None and set(load_file(adapter / CTC_HEAD_FILE)) == realigned
    bundle = tmp_path / "unseg"
    export(bundle, "--compressor", "unseg", "--quant", "f16", "--ctc-reads", ctc_reads)
    manifest = json.loads((bundle / "manifest.json").read_text())
    advice = shipped_decoding_advice()
    reads_frames = ctc_reads == "frames"
    assert manifest["ctc"]["realigned_to"] == (None if reads_frames else "unseg") and manifest["decoding"] == advice
    assert list(manifest["ctc"]["inputs"]) == ["audio_frames" if reads_frames else "audio_embeddings"]
    base, processor, prompt = pytorch_default_model()
    model = PeftModel.from_pretrained(base, adapter).merge_and_unload().eval()
    head = TokenCtc(model.get_input_embeddings(), processor.tokenizer, realign=not reads_frames)
    head.load_head((default_model_dir() if reads_frames else adapter) / CTC_HEAD_FILE)

    def paper_unseg(frames: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(unsupervised_segmentation(frames.numpy().astype(np.float64)).astype(np.float32))

    clips, references = examples()
    reference_texts, reference_tokens = transcribe_torch(
        model, processor, prompt, paper_unseg, clips, beam_size=advice["beam_size"], ctc_weight=advice["ctc_weight"],
        ctc_head=lambda audio: head.log_probs(audio).detach(), ctc_reads_frames=reads_frames,
    )  # fmt: skip
    texts, tokens = transcribe_bundle(bundle, clips, 16000)
    assert tokens == reference_tokens
    assert [t.strip() for t in texts] == [t.strip() for t in reference_texts]
    seconds = sum(len(c) for c in clips) / 16000
    assert score(references, texts, tokens, seconds).wer < 0.5  # and they are mostly right


def test_cli_run_prints_a_transcript(none_f16_bundle):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgelalm.cli",
            "run",
            str(EXAMPLES / "set-a-timer.wav"),
            "--bundle",
            str(none_f16_bundle),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    samples = read_audio(EXAMPLES / "set-a-timer.wav", 16000)
    # `none` keeps every encoder frame: 25 per second, by transformers' length formula.
    assert record["audio_tokens"] == encoder_output_frames(-(-len(samples) // 160))
    assert record["text"].strip()


def test_example_clips_score_no_worse_than_the_held_out_set(none_f16_bundle):
    """The example clips (53 words: requests, a name and a city never trained on, a free word sequence,
    four clips of the never-heard synthesizer) score no worse through the f16 bundle (transformers'
    transcripts, by the test above) than the shipped model's WER in PyTorch on its 200-clip held-out
    set, as measured by wer_table.py and reported in the README.
    The examples are mostly requests, which the model gets right far more often than free words
    (README: the default model's weak spots), so this bounds a broken bundle, not the model."""
    clips, references = examples()
    texts, tokens = transcribe_bundle(none_f16_bundle, clips, 16000)
    result = score(references, texts, tokens, sum(len(c) for c in clips) / 16000)
    held_out = json.loads(HELD_OUT_WER.read_text())["results"]["none"]["pytorch"]
    assert result.words == 53
    assert result.wer <= held_out["wer"], list(zip(references, texts, strict=True))


def test_a_clip_past_the_window_comes_back_whole_in_the_windows_the_model_advises(none_f16_bundle, tmp_path):
    """`edgelalm run` on 46 s of the example clips, twice over with pauses between them, with no
    --windows: the shipped model's advice in the bundle (edgelalm_windows.json: each, 8 s) cuts it
    at pauses into windows of 4-8 s, each answered on its own. The joined transcript scores no worse
    than the shipped model's measured WER in 8 s windows on held-out clips of several sentences
    (15-30 s, results/decoder-steel-sky-averaged/test-long-each-8s, README): the windowing loses nothing
    it was measured with."""
    import soundfile

    samples, references = examples_twice_with_pauses()
    soundfile.write(tmp_path / "long.wav", samples, 16000, subtype="PCM_16")
    result = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "run", str(tmp_path / "long.wav"), "--bundle", str(none_f16_bundle)]
        + ["--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["window_mode"] == "each" and 6 <= record["windows"] <= 12, record
    scored = score([" ".join(references)], [record["text"]], record["audio_tokens"], len(samples) / 16000)
    in_8s_windows = json.loads(HELD_OUT_WER.parent.with_name("test-long-each-8s").joinpath("wer.json").read_text())
    assert scored.words == 106
    assert scored.wer <= in_8s_windows["results"]["none"]["bundle_q8_0"]["wer"], record["text"]
    # Each window's answer is timed from the clip's start to its cut, and every cut falls in one of
    # the 0.8 s pauses between the clips (what `run --subtitles` writes as cue times).
    clips, _ = examples()
    clip_ends = np.cumsum([len(clip) / 16000 + 0.8 for clip in clips + clips]) - 0.8
    pauses = [(end, end + 0.8) for end in clip_ends]
    spans = record["timed_text"]
    cuts = [span["end_seconds"] for span in spans[:-1]]
    assert [span["start_seconds"] for span in spans] == [0.0, *cuts], spans
    assert all(any(start <= cut <= end for start, end in pauses) for cut in cuts), (cuts, pauses)
    assert spans[-1]["end_seconds"] == record["audio_seconds"] == round(len(samples) / 16000, 3)


def test_bundle_windows_each_cut_as_pytorch_cuts_not_as_the_bundle_advises(none_f16_bundle):
    """wer_table's bundle columns with --windows each and no --window-seconds compare with PyTorch
    cut at the encoder's 30 s window: transcribe_bundle must not take the bundle's advice (8 s) for
    it. 46 s of the example clips with pauses: the same windows give the same transcripts."""
    from torch import nn

    model, processor, prompt = pytorch_default_model()
    samples, _ = examples_twice_with_pauses()
    expected, expected_tokens = transcribe_torch(model, processor, prompt, nn.Identity(), [samples], 320, "each")
    texts, tokens = transcribe_bundle(
        none_f16_bundle, [samples], 16000, max_new_tokens=320, windows="each", beam_size=1, ctc_weight=0
    )
    assert tokens == expected_tokens
    assert [t.strip() for t in texts] == [t.strip() for t in expected]


def test_the_readme_set_up_command_gives_the_right_transcript(tmp_path):
    """README set-up command 1: `edgelalm export --compressor unseg` (the shipped model with its unseg
    adapter, q8_0), then `edgelalm run examples/kids-room.wav` with the newest bundle under ./export."""
    result = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "export", "--compressor", "unseg"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "export" / "edgelalm-default-unseg-q8_0" / "manifest.json").read_text())
    assert manifest["decoder"]["quant"] == "q8_0" and manifest["decoder"]["adapter"] is not None
    result = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "run", str(EXAMPLES / "kids-room.wav")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert normalize_transcript(result.stdout) == normalize_transcript(example_transcripts()["kids-room.wav"])


def test_compressor_without_a_shipped_adapter_warns(tmp_path):
    result = export(tmp_path / "bundle", "--compressor", "avg", "--factor", "4", "--quant", "f16")
    assert "edgelalm: warning: the default model has no adapter realigned to avg4" in result.stderr
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["compressor"]["factor"] == 4


def test_adapter_and_no_adapter_exclude_each_other(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgelalm.cli",
            "export",
            "--adapter",
            str(tmp_path),
            "--no-adapter",
            "--out",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "exclude each other" in result.stderr
    assert not (tmp_path / "b").exists()
