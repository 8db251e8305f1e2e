"""The clip-length encoder ONNX against transformers' own Qwen2-Audio path.

Reference: the checkpoint's processor pads the clip to the full window and the full model's
forward runs the audio tower with its attention mask; we capture the tower's output and keep
the valid frames. The ONNX graph sees only the clip's mel frames plus two frames of right
context. Tolerance (fp32): max |diff| <= 5e-5 on layer-normed outputs of magnitude ~3;
measured 1.4e-6 (width 64) and 3.6e-6 (width 1280).
"""

import copy
import ctypes

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnxruntime = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from hf_reference import TransformersAudioTower, speechlike  # noqa: E402

from edgelalm.errors import EdgelalmError  # noqa: E402
from edgelalm.export.encoder import (  # noqa: E402
    FEED_FORWARD_BLOCKS,
    QUERY_BLOCKS,
    ClipLengthAudioEncoder,
    export_encoder_onnx,
)
from edgelalm.runtime.features import encoder_output_frames  # noqa: E402
from edgelalm.runtime.onnx_backend import release_freed_heap  # noqa: E402

FP32_TOLERANCE = 5e-5


def anonymous_mb() -> float:
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    return int(status["RssAnon"].split()[0]) / 1024


def run_encoder(session, mel, right_context):
    return session.run(None, {"mel": mel.astype(np.float32), "mel_right_context": right_context.astype(np.float32)})[0]


def check_parity(model, processor, tmp_path, window_seconds: float, precision="fp32"):
    path = tmp_path / f"encoder-{precision}.onnx"
    export_encoder_onnx(model.model.audio_tower, path, precision)
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = TransformersAudioTower(model, processor)
    worst = 0.0
    for seed, seconds in enumerate([0.05, 1.0, 3.33, window_seconds - 0.02, window_seconds]):
        expected, mel, right_context = reference(speechlike(seconds, seed))
        got = run_encoder(session, mel, right_context)
        # The graph ran on the clip's own length, not the padded window.
        assert mel.shape[1] == int(np.ceil(seconds * 100)) or seconds == window_seconds
        assert got.shape == expected.shape == (encoder_output_frames(mel.shape[1]), expected.shape[1])
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst, path


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    processor = transformers.AutoProcessor.from_pretrained(tiny_checkpoint)
    return model, processor


def test_tiny_encoder_matches_transformers(tiny, tmp_path):
    worst, _ = check_parity(*tiny, tmp_path, window_seconds=10.0)
    assert worst <= FP32_TOLERANCE


@pytest.mark.parametrize("precision,tolerance", [("fp16", 2e-2), ("int8", 2e-1)])
def test_reduced_precision_stays_close_and_shrinks(tiny, tmp_path, precision, tolerance):
    worst, path = check_parity(*tiny, tmp_path, window_seconds=10.0, precision=precision)
    assert worst <= tolerance
    fp32_path = tmp_path / "reference.onnx"
    export_encoder_onnx(tiny[0].model.audio_tower, fp32_path, "fp32")
    size = lambda p: sum(f.stat().st_size for f in p.parent.glob(p.name + "*"))  # noqa: E731
    assert size(path) < 0.8 * size(fp32_path)
    assert not list(tmp_path.glob("*.fp32.onnx*")), "int8 export must not leave its fp32 intermediate"
    if precision == "int8":  # every MatMul weight quantized, fc1 and fc2 (read by each FFN block) too
        graph = onnx.load(str(path), load_external_data=False).graph
        weights = {weight.name for weight in graph.initializer}
        assert not [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]
        quantized = {node.input[1] for node in graph.node if node.op_type == "MatMulInteger"}
        assert len(quantized & weights) == 6 * len(tiny[0].model.audio_tower.layers)  # q, k, v, out, fc1, fc2


def test_fp16_weights_compute_in_fp32_and_are_not_widened_at_load(tiny, tmp_path):
    """fp16w: against transformers' tower with the same weights rounded to float16, the fp32
    bound holds (the arithmetic is float32); onnxruntime's optimized graph keeps them float16."""
    model, processor = tiny
    rounded = copy.deepcopy(model)
    matmul_weights = [
        linear.weight
        for layer in rounded.model.audio_tower.layers
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
        + (layer.self_attn.out_proj, layer.fc1, layer.fc2)
    ]
    with torch.no_grad():
        for weight in matmul_weights:
            weight.copy_(weight.half().float())
    worst, path = check_parity(rounded, processor, tmp_path, window_seconds=10.0, precision="fp16w")
    assert worst <= FP32_TOLERANCE
    graph = onnx.load(str(path), load_external_data=False).graph
    stored_fp16 = {weight.name for weight in graph.initializer if weight.data_type == onnx.TensorProto.FLOAT16}
    assert len(stored_fp16) == len(matmul_weights)
    # What onnxruntime runs: constant folding would turn each Cast back into a float32 weight.
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    float32_bytes = lambda g: sum(  # noqa: E731
        int(np.prod(weight.dims)) * 4 for weight in g.initializer if weight.data_type == onnx.TensorProto.FLOAT
    )
    assert {w.name for w in optimized.initializer if w.data_type == onnx.TensorProto.FLOAT16} == stored_fp16
    assert float32_bytes(optimized) <= float32_bytes(graph)


def test_fp16_weights_refuse_a_weight_beyond_float16s_range(tiny, tmp_path):
    huge = copy.deepcopy(tiny[0])
    with torch.no_grad():
        huge.model.audio_tower.layers[0].fc1.weight[0, 0] = 1e5
    with pytest.raises(EdgelalmError, match="float16's range"):
        export_encoder_onnx(huge.model.audio_tower, tmp_path / "encoder.onnx", "fp16w")


@pytest.mark.slow
def test_real_width_encoder_matches_transformers(tmp_path):
    """Whisper-large-v3's width (d_model 1280, 20 heads) with 2 layers, a 30 s window, random weights."""
    from edgelalm import scaffold

    tokenizer = scaffold.train_tokenizer(scaffold.SAMPLE_TEXTS[:20], vocab_size=300)
    config = scaffold.model_config(
        tokenizer,
        window_seconds=30,
        encoder_layers=2,
        encoder_d_model=1280,
        encoder_heads=20,
        encoder_ffn_dim=5120,
        decoder_layers=1,
        decoder_hidden=64,
        decoder_heads=4,
        decoder_kv_heads=2,
        decoder_ffn_dim=128,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2AudioForConditionalGeneration(config).eval()
    processor = transformers.Qwen2AudioProcessor(
        scaffold.feature_extractor(30), tokenizer, chat_template=scaffold.CHAT_TEMPLATE
    )
    worst, _ = check_parity(model, processor, tmp_path, window_seconds=30.0)
    assert worst <= FP32_TOLERANCE


def test_tiny_clip_gives_one_frame_and_dynamic_length_is_one_graph(tiny, tmp_path):
    path = tmp_path / "encoder.onnx"
    export_encoder_onnx(tiny[0].model.audio_tower, path, "fp32")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tower = tiny[0].model.audio_tower
    layers = len(tower.layers)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert sum(node.op_type == "Attention" for node in graph.node) == layers * QUERY_BLOCKS
    # fc1 and fc2 each read FEED_FORWARD_BLOCKS times, from weights stored transposed (no Transpose
    # left on a weight); no intermediate shapes, so onnxruntime frees each activation after its
    # last reader (the runtime's encoder memory, README "Encoder speed and memory").
    weights = {weight.name for weight in graph.initializer}
    assert not [node for node in graph.node if node.op_type == "Transpose" and node.input[0] in weights]
    matmuls = [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]
    assert len(matmuls) == layers * (4 + 2 * FEED_FORWARD_BLOCKS)  # q, k, v, out; fc1, fc2 per block
    assert len({node.input[1] for node in matmuls}) == layers * 6  # each weight stored once
    assert not graph.value_info
    rng = np.random.default_rng(0)
    unblocked = ClipLengthAudioEncoder(tower).eval()  # transformers' own SDPA, all queries at once
    # 3 and 4 mel frames: 2 and 3 positions, fewer than the query blocks
    for mel_frames in (3, 4, 5, 6, 101, 1000):
        mel, context = rng.standard_normal((128, mel_frames)), rng.standard_normal((128, 2))
        out = run_encoder(session, mel, context)
        assert out.shape == (encoder_output_frames(mel_frames), 64)
        with torch.no_grad():
            expected = unblocked(torch.from_numpy(mel).float(), torch.from_numpy(context).float()).numpy()
        assert np.abs(out - expected).max() <= FP32_TOLERANCE


def test_freed_heap_goes_back_to_the_system():
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc: release_freed_heap does nothing")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 KB blocks come from the heap (under glibc's mmap threshold); the last one stays allocated,
    # so free() cannot shrink the heap from its top by itself.
    blocks = [libc.malloc(64 * 1024) for _ in range(2048)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in blocks[:-1]:
        libc.free(block)
    held = anonymous_mb()
    release_freed_heap()
    released = held - anonymous_mb()
    libc.free(blocks[-1])
    assert released > 100  # of the 128 MB freed


def test_fp16_export_leaves_the_callers_tower_in_fp32(tiny, tmp_path):
    """The fp16 graph is traced from a copy: the tower export checks against keeps its weights,
    bit for bit (an in-place .half().float() would round them to fp16)."""
    model, _ = tiny
    tower = model.model.audio_tower
    before = {name: tensor.clone() for name, tensor in tower.state_dict().items()}
    export_encoder_onnx(tower, tmp_path / "encoder.onnx", "fp16")
    after = tower.state_dict()
    assert all(after[name].dtype == torch.float32 and torch.equal(after[name], before[name]) for name in before)


def test_export_refuses_an_encoder_graph_that_computes_something_else(tiny_checkpoint, tmp_path, monkeypatch):
    """A broken fp32 encoder graph of the right shape (here: traced from a tower with every weight
    scaled by 1.5) is caught by export's probe check, not written as a bundle."""
    import copy

    from edgelalm.compression import CompressorSpec
    from edgelalm.errors import EdgelalmError
    from edgelalm.export import bundle

    real_export = bundle.export_encoder_onnx

    def broken_export(tower, path, precision):
        wrong = copy.deepcopy(tower)
        with torch.no_grad():
            for parameter in wrong.parameters():
                parameter.mul_(1.5)
        real_export(wrong, path, precision)

    monkeypatch.setattr(bundle, "export_encoder_onnx", broken_export)
    out = tmp_path / "bundle"
    with pytest.raises(EdgelalmError, match=r"encoder ONNX \(fp32\) differs from PyTorch fp32 by .* export is broken"):
        bundle.export_bundle(bundle.ExportOptions(tiny_checkpoint, out, CompressorSpec("none")))
    assert not out.exists()
