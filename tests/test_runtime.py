"""`Runtime` end to end against a reference built from transformers' modules, peft (adapter
active, unmerged) and the paper's definitions (tests/reference.py) - never edgelalm's own path.

Features: edgelalm's numpy log-mel against WhisperFeatureExtractor, tolerance 1e-4 (measured
<= 3.1e-5, the extractor's torch STFT is float32).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from hf_reference import reference_answer, speechlike  # noqa: E402

from edgelalm.runtime.features import FeatureSettings, log_mel_window, split_windows  # noqa: E402
from edgelalm.runtime.pipeline import Runtime  # noqa: E402

WINDOW_SECONDS = 10  # the tiny checkpoint's encoder window
FEATURE_TOLERANCE = 1e-4
PROMPT = "Transcribe the audio."


@pytest.fixture(scope="module")
def hf(tiny_checkpoint, tiny_lora_adapter):
    base = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    model = peft.PeftModel.from_pretrained(base, tiny_lora_adapter).eval()
    processor = transformers.AutoProcessor.from_pretrained(tiny_checkpoint)
    return model, processor


@pytest.mark.parametrize("seconds", [0.05, 1.0, 3.337, WINDOW_SECONDS - 0.01, WINDOW_SECONDS])
def test_features_match_whisper_feature_extractor(hf, seconds):
    _, processor = hf
    extractor = processor.feature_extractor
    settings = FeatureSettings(
        16000, extractor.n_fft, extractor.hop_length, WINDOW_SECONDS * 16000, extractor.mel_filters
    )
    for audio in (speechlike(seconds, 3), np.zeros(int(seconds * 16000), np.float32)):
        expected = extractor(
            audio, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="np"
        )
        valid = int(expected["attention_mask"][0].sum())
        window = expected["input_features"][0]
        got = log_mel_window(audio, settings)
        assert got.mel.shape == (128, valid)
        assert np.abs(got.mel - window[:, :valid]).max() <= FEATURE_TOLERANCE
        context = np.pad(window, ((0, 0), (0, 2)))[:, valid : valid + 2]
        assert np.abs(got.right_context - context).max() <= FEATURE_TOLERANCE


@pytest.mark.parametrize(
    "compressor,factor",
    [("none", 1), ("avg", 2), ("avg", 3), ("sample", 3), ("unseg", 1), ("mean", 1)],
)
def test_greedy_run_equals_transformers(hf, tiny_bundles, compressor, factor):
    bundle = tiny_bundles(compressor, factor, "f32")
    with Runtime(bundle, kv_cache_type="f32") as runtime:
        for seconds, seed in ((3.3, 0), (23.0, 1)):
            audio = speechlike(seconds, seed)
            expected_text, expected_tokens = reference_answer(hf, audio, compressor, factor, 16, PROMPT, WINDOW_SECONDS)
            result = runtime.run(audio, prompt=PROMPT, max_tokens=16)
            assert result.audio_tokens == expected_tokens
            assert result.windows == int(np.ceil(seconds / WINDOW_SECONDS))
            assert result.text == expected_text
            assert result.generated_tokens >= 1


def test_streamed_pieces_make_the_answer(tiny_bundles):
    pieces = []
    with Runtime(tiny_bundles("unseg", 1, "q8_0")) as runtime:
        result = runtime.run(speechlike(2.0, 4), max_tokens=12, on_text=pieces.append)
        again = runtime.run(speechlike(2.0, 4), max_tokens=12)
    assert "".join(pieces) == result.text
    assert again.text == result.text, "a loaded bundle serves many clips, each from a clean context"
    timings = result.timings_ms
    assert set(timings) >= {"features", "encoder", "compressor", "prefill", "decode", "time_to_first_token", "total"}
    assert timings["total"] >= timings["time_to_first_token"] > 0
    assert result.peak_rss_mb > 0 and result.audio_seconds == 2.0


def test_the_cpu_arena_is_a_memory_setting_only(tiny_bundles):
    """By default the encoder's arena is shrunk after every run and the compressor has none (lower
    peak RSS on long windows: README "Encoder speed and memory"); kept between runs, the same answer."""
    bundle, audio = tiny_bundles("avg", 2, "q8_0"), speechlike(3.0, 6)
    with Runtime(bundle) as runtime:
        assert runtime.encoder.session.get_session_options().enable_cpu_mem_arena
        assert runtime.encoder.shrink_arena
        for option in runtime.compressors.values():
            assert not option.graph.session.get_session_options().enable_cpu_mem_arena
        without = runtime.run(audio, max_tokens=12)
    with Runtime(bundle, cpu_arena=True) as runtime:
        assert runtime.encoder.session.get_session_options().enable_cpu_mem_arena
        assert not runtime.encoder.shrink_arena
        with_arena = runtime.run(audio, max_tokens=12)
    assert with_arena.text == without.text and with_arena.audio_tokens == without.audio_tokens


def test_onnxruntime_s_fallback_banner_stays_off_stdout_and_its_cause_is_kept(tiny_bundles, capfd):
    """A session onnxruntime cannot create (here two threads with an affinity it cannot parse; under a pids limit,
    a thread it cannot start) made its Python side print a five-line "EP Error" banner on stdout,
    which carries answers and --json lines; and the one line, cut at 300 characters, lost the cause
    that onnxruntime puts last."""
    from edgelalm.errors import EdgelalmError, error_gist
    from edgelalm.runtime.onnx_backend import onnx_session

    encoder = tiny_bundles("avg", 2, "q8_0") / "encoder.onnx"
    with pytest.raises(EdgelalmError, match="Processor id must consist of only digits: garbage$"):
        onnx_session(
            encoder, ["CPUExecutionProvider"], 2, config_entries={"session.intra_op_thread_affinities": "garbage"}
        )
    assert capfd.readouterr().out == ""
    location = "/onnxruntime_src/onnxruntime/core/platform/posix/env.cc:" + "x" * 600
    gist = error_gist(f"{location} pthread_create failed, error code: 11 error msg: Resource temporarily unavailable")
    assert len(gist) <= 500 and gist.endswith("error code: 11 error msg: Resource temporarily unavailable")


def test_sampling_uses_the_seed(tiny_bundles):
    with Runtime(tiny_bundles("avg", 2, "q8_0")) as runtime:
        audio = speechlike(2.0, 5)
        first = runtime.run(audio, max_tokens=12, temperature=1.5, seed=7).text
        second = runtime.run(audio, max_tokens=12, temperature=1.5, seed=7).text
        others = {runtime.run(audio, max_tokens=12, temperature=1.5, seed=s).text for s in range(8, 14)}
    assert first == second
    assert len(others | {first}) > 1


def test_each_window_is_answered_as_transformers_answers_it_alone(hf, tiny_bundles):
    """`windows="each"`: a 23 s clip (the tiny model's window is 10 s) is cut at its two pauses
    and every window answered on its own; the answer is the windows' answers joined, each equal
    to transformers' answer to that window alone, and the streamed pieces read the same."""
    audio = speechlike(23.0, 7)
    for start, end in ((8.0, 8.3), (16.5, 16.8)):
        audio[int(start * 16000) : int(end * 16000)] = 0
    settings = FeatureSettings(16000, 400, 160, WINDOW_SECONDS * 16000, np.zeros((201, 128), np.float32))
    windows = split_windows(audio, settings, cut_at_pauses=True)
    assert [round(len(w) / 16000, 1) for w in windows] == [8.3, 8.5, 6.2]
    expected = [reference_answer(hf, w, "avg", 2, 8, PROMPT, WINDOW_SECONDS) for w in windows]
    assert all(text.strip() for text, _ in expected)
    pieces: list[str] = []
    events: list[object] = []  # the streamed pieces and each window's answer with its span, in order
    with Runtime(tiny_bundles("avg", 2, "f32"), kv_cache_type="f32") as runtime:
        result = runtime.run(
            audio,
            prompt=PROMPT,
            max_tokens=8,
            windows="each",
            on_text=lambda piece: (pieces.append(piece), events.append(piece)),
            on_timed_text=events.append,
        )
        joined = runtime.run(audio, prompt=PROMPT, max_tokens=8, on_timed_text=events.append)
    assert result.windows == 3 and joined.windows == 3
    assert result.audio_tokens == sum(tokens for _, tokens in expected)
    assert result.text == " ".join(text.strip() for text, _ in expected if text.strip())
    assert "".join(pieces) == result.text
    # Each window's answer is timed from its first sample to its last (the cuts above), and is
    # handed over as soon as it is complete: after its own streamed pieces, before the next window's.
    ends = np.cumsum([len(window) for window in windows]) / 16000
    spans = [
        (round(start, 3), round(end, 3), text.strip())
        for start, end, (text, _) in zip([0.0, *ends[:-1]], ends, expected, strict=True)
    ]
    assert [(t.start_seconds, t.end_seconds, t.text) for t in result.timed_text] == spans
    handed = [index for index, event in enumerate(events) if not isinstance(event, str)]
    assert [events[index] for index in handed] == [*result.timed_text, *joined.timed_text]
    streamed_before = [
        "".join(e for e in events[start + 1 : end] if isinstance(e, str)).strip()
        for start, end in zip([-1, *handed[:2]], handed[:3], strict=True)
    ]
    assert streamed_before == [text for _, _, text in spans]
    assert [(t.start_seconds, t.end_seconds, t.text) for t in joined.timed_text] == [(0.0, 23.0, joined.text.strip())]
    assert result.reused_prompt_tokens > 0, "windows after the first reuse the prompt's cached prefix"
