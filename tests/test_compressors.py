"""Compressors against the paper's definitions (tests/reference.py), in PyTorch and in ONNX."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import reference  # noqa: E402

from edgelalm.compression import COMPRESSOR_NAMES, CompressorSpec  # noqa: E402
from edgelalm.errors import EdgelalmError  # noqa: E402
from edgelalm.export.compressor import (  # noqa: E402
    CompressorProjector,
    build_compressor,
    export_compressor_onnx,
    segment_starts,
)

SPECS = [
    CompressorSpec("none"),
    CompressorSpec("avg", 1),
    CompressorSpec("avg", 2),
    CompressorSpec("avg", 3),
    CompressorSpec("avg", 7),
    CompressorSpec("sample", 2),
    CompressorSpec("sample", 3),
    CompressorSpec("sample", 5),
    CompressorSpec("unseg"),
    CompressorSpec("mean"),
    CompressorSpec("max"),
]
LENGTHS = [1, 2, 3, 4, 7, 10, 31, 250]


def run(spec: CompressorSpec, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return build_compressor(spec)(torch.from_numpy(frames)).numpy()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
@pytest.mark.parametrize("num_frames", LENGTHS)
def test_matches_reference_on_random_frames(spec, num_frames):
    frames = np.random.default_rng(num_frames).standard_normal((num_frames, 24)).astype(np.float32)
    expected = reference.compress(spec.name, spec.factor, frames)
    got = run(spec, frames)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    tokens = reference.expected_tokens(spec.name, spec.factor, num_frames)
    if tokens is not None:
        assert got.shape[0] == tokens
    assert got.shape[0] <= spec.max_audio_tokens(num_frames)


def test_unseg_finds_known_segments_exactly():
    # Piecewise-constant frames along different directions: inside a segment d_t = 0, at a
    # change d_t > 0 with zero neighbours, so every change is a peak.
    rng = np.random.default_rng(1)
    lengths = [3, 2, 5, 4, 2, 6]
    directions = rng.standard_normal((len(lengths), 16)).astype(np.float32)
    frames = np.concatenate(
        [np.repeat(direction[None], n, axis=0) for direction, n in zip(directions, lengths, strict=True)]
    )
    got = run(CompressorSpec("unseg"), frames)
    np.testing.assert_allclose(got, directions, rtol=1e-6)
    starts = segment_starts(torch.from_numpy(frames)).nonzero().flatten().tolist()
    assert starts == list(np.cumsum([0] + lengths[:-1]))


def test_unseg_averages_segments_with_varying_frames():
    # Each segment alternates two close vectors (u, w, u, w): every within-segment d_t is
    # the same number, so none is a strict peak, and the segment token must be their mean,
    # not one of them. Segments point in unrelated directions, so each change is a peak.
    rng = np.random.default_rng(2)
    lengths = [4, 5, 3]
    tokens, parts = [], []
    for n in lengths:
        u = rng.standard_normal(32).astype(np.float32)
        w = u + np.float32(0.05) * rng.standard_normal(32).astype(np.float32)
        segment = np.stack([u if i % 2 == 0 else w for i in range(n)])
        parts.append(segment)
        tokens.append(segment.mean(axis=0))
    frames = np.concatenate(parts)
    got = run(CompressorSpec("unseg"), frames)
    np.testing.assert_allclose(got, np.stack(tokens), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, reference.unsupervised_segmentation(frames), rtol=1e-5, atol=1e-6)


def test_unseg_first_and_last_distances_are_never_peaks():
    # A one-frame first segment: its boundary is d_0, which has no left neighbour.
    a, b = np.eye(8, dtype=np.float32)[:2]
    frames = np.stack([a, b, b, b, b])
    got = run(CompressorSpec("unseg"), frames)
    assert got.shape == (1, 8)
    np.testing.assert_allclose(got[0], frames.mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("num_frames", [1, 2, 9])
def test_unseg_constant_sequence_is_one_token(num_frames):
    frames = np.tile(np.arange(1, 9, dtype=np.float32), (num_frames, 1))
    got = run(CompressorSpec("unseg"), frames)
    np.testing.assert_allclose(got, frames[:1])


def test_unseg_survives_zero_frames():
    frames = np.zeros((6, 4), dtype=np.float32)
    frames[3:] = 1.0
    got = run(CompressorSpec("unseg"), frames)
    assert np.isfinite(got).all()


def test_avg_ragged_tail_averages_what_is_there():
    frames = np.arange(7, dtype=np.float32)[:, None]
    got = run(CompressorSpec("avg", 3), frames)
    np.testing.assert_allclose(got[:, 0], [1.0, 4.0, 6.0])


def test_sample_keeps_the_first_frame_of_each_group():
    frames = np.arange(7, dtype=np.float32)[:, None]
    got = run(CompressorSpec("sample", 3), frames)
    np.testing.assert_allclose(got[:, 0], [0.0, 3.0, 6.0])


def test_token_rates():
    assert CompressorSpec("none").audio_tokens_per_second == 25.0
    assert CompressorSpec("avg", 2).audio_tokens_per_second == 12.5
    assert CompressorSpec("sample", 3).audio_tokens_per_second == pytest.approx(25 / 3)
    assert CompressorSpec("unseg").audio_tokens_per_second is None


@pytest.mark.parametrize(
    "name,factor,message",
    [
        ("avg", 0, "from 1 to 1000"),
        ("sample", -2, "from 1 to 1000"),
        ("avg", 10**20, "from 1 to 1000"),  # torch overflowed in the exporter, a traceback
        ("pool", 1, "unknown compressor"),
        ("unseg", 3, "applies to"),
    ],
)
def test_spec_refuses_bad_input(name, factor, message):
    with pytest.raises(EdgelalmError, match=message):
        CompressorSpec(name, factor)


@pytest.mark.parametrize("name", COMPRESSOR_NAMES)
def test_onnx_compressor_projector_matches_pytorch(name, tmp_path):
    spec = CompressorSpec(name, 3 if name in ("avg", "sample") else 1)
    torch.manual_seed(0)
    module = CompressorProjector(build_compressor(spec), torch.nn.Linear(24, 40)).eval()
    path = tmp_path / "compressor.onnx"
    export_compressor_onnx(module, 24, path)
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    counts = set()
    for num_frames in LENGTHS:
        frames = np.random.default_rng(num_frames + 7).standard_normal((num_frames, 24)).astype(np.float32)
        got = session.run(None, {"audio_frames": frames})[0]
        with torch.no_grad():
            expected = module(torch.from_numpy(frames)).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        # The projector is applied after the paper's compressor.
        compressed = reference.compress(spec.name, spec.factor, frames)
        np.testing.assert_allclose(
            got, module.projector(torch.from_numpy(compressed)).detach().numpy(), rtol=1e-4, atol=1e-5
        )
        counts.add(got.shape[0])
    if name == "unseg":
        assert len(counts) > 3, "the segment count must follow the input, not be frozen at trace time"


def test_unseg_probe_check_avoids_near_ties_and_still_catches_a_wrong_graph(tmp_path):
    """Export's probe check of the unseg graph (verify.check_compressor) runs on frames whose
    neighbouring dissimilarities are clear of float rounding: on near-identical frames (as a
    random-weights 7B tower gives) the peak decisions are ties that onnxruntime and PyTorch may
    break differently. A graph of a different projector still fails."""
    from edgelalm.export.verify import PEAK_TIE_MARGIN, check_compressor, peak_margin, untied_probe

    rng = np.random.default_rng(3)
    base = rng.standard_normal(32).astype(np.float32)
    alike = np.stack([base + 1e-7 * rng.standard_normal(32).astype(np.float32) for _ in range(40)])
    assert peak_margin(alike) < PEAK_TIE_MARGIN
    probe = untied_probe(alike)
    assert peak_margin(probe) > PEAK_TIE_MARGIN
    np.testing.assert_array_equal(probe, untied_probe(alike))  # seeded: the same nudge each time
    # peak_margin measures what segment_starts decides on: its d_t in float64
    d = probe.astype(np.float64)
    dissimilarity = 1 - (d[:-1] * d[1:]).sum(-1) / (np.linalg.norm(d[:-1], axis=-1) * np.linalg.norm(d[1:], axis=-1))
    assert peak_margin(probe) == pytest.approx(float(np.abs(np.diff(dissimilarity)).min()), rel=1e-9)

    torch.manual_seed(0)
    module = CompressorProjector(build_compressor(CompressorSpec("unseg")), torch.nn.Linear(32, 40)).eval()
    export_compressor_onnx(module, 32, tmp_path / "compressor.onnx")
    result = check_compressor(alike, module, tmp_path, "compressor.onnx")
    assert result["compressor_max_abs_diff"] < 1e-4
    wrong = CompressorProjector(build_compressor(CompressorSpec("unseg")), torch.nn.Linear(32, 40)).eval()
    with pytest.raises(EdgelalmError, match="differs from PyTorch"):
        check_compressor(alike, wrong, tmp_path, "compressor.onnx")
