"""A CTC head with transformer layers of its own (edgelalm.export.ctc.CtcLayers): the layers
against torch's own TransformerEncoderLayer (pre-norm, GELU) loaded with the same tensors
(tests/hf_reference.py), a new stack as the identity, the head file written by training and read by
export and training alike, and every malformed file refused in one line before anything is built.
End to end through export and `run`: tests/test_joint_decoding.py (its checkpoint's head has two
layers)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_reference import transformer_layers  # noqa: E402
from random_layers import randomised  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from edgelalm.constants import CTC_ATTENTION_HEADS_KEY, CTC_ATTENTION_SPAN_KEY, CTC_HEAD_FILE  # noqa: E402
from edgelalm.errors import EdgelalmError  # noqa: E402
from edgelalm.export.ctc import CtcLayers, load_ctc_head  # noqa: E402
from edgelalm.training.train import TokenCtc  # noqa: E402

WIDTH, HEADS, FEED_FORWARD, VOCAB = 32, 4, 48, 50


def random_layers(count: int = 2, seed: int = 0, span: int = 0) -> CtcLayers:
    layers = CtcLayers(WIDTH, count, HEADS, FEED_FORWARD, attention_span=span)
    return randomised(layers, torch.Generator().manual_seed(seed), 0.3)


def head_tensors(layers: CtcLayers | None, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {"blank": torch.randn(WIDTH, generator=generator), "log_scale": torch.tensor(math.log(8.0))}
    return tensors | (layers.tensors() if layers is not None else {})


def write_head(folder: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / CTC_HEAD_FILE), metadata=metadata)
    return folder


@pytest.mark.parametrize("span", [0, 3], ids=["whole-window", "span-3"])
def test_the_layers_are_torchs_transformer_encoder_layers(tmp_path, span):
    """With a span, torch's layers get it as their attention mask (tests/hf_reference.py)."""
    layers = random_layers(span=span)
    folder = write_head(tmp_path / "head", head_tensors(layers), layers.metadata())
    rows = np.random.default_rng(0).normal(size=(23, WIDTH)).astype(np.float32)
    with torch.no_grad():
        got = layers(torch.from_numpy(rows)[None])[0].numpy()
    expected = transformer_layers(folder / CTC_HEAD_FILE, rows)
    # float32 rounding, relative to the values (up to ~13 here): summation order varies with torch's
    # thread count and kernels, 8e-7 of the largest value seen; a wrong layer is off by O(1).
    bound = 4e-6 * np.abs(expected).max()
    assert np.abs(got - expected).max() < bound and np.abs(got - rows).max() > 0.1
    # In a batch, padded positions are not attended to: each row as if alone.
    short = rows[:9]
    batch = torch.from_numpy(np.stack([rows, np.pad(short, ((0, 14), (0, 0)), constant_values=7.0)]))
    padding = torch.arange(23)[None] >= torch.tensor([23, 9])[:, None]
    with torch.no_grad():
        batched = layers(batch, padding).numpy()
    assert np.abs(batched[0] - expected).max() < bound
    assert np.abs(batched[1, :9] - transformer_layers(folder / CTC_HEAD_FILE, short)).max() < bound


def test_a_span_limits_what_each_position_reads():
    """Two layers of span 3: position 0 reads positions up to 6 and no further (a change at 7 leaves
    it as it was, a change at 6 does not); over the whole window, any change reaches it."""
    generator = torch.Generator().manual_seed(3)
    rows = torch.randn(1, 20, WIDTH, generator=generator)
    change = torch.randn(WIDTH, generator=generator)  # not a constant: LayerNorm removes one
    for span, reach in ((3, 6), (0, 19)):
        layers = random_layers(span=span).eval()
        with torch.no_grad():
            before = layers(rows)[0, 0]
            for position in range(1, 20):
                changed = rows.clone()
                changed[0, position] += change
                moved = not torch.allclose(layers(changed)[0, 0], before, atol=1e-6)
                assert moved == (position <= reach), (span, position)


def test_the_exported_graph_reads_the_span_as_torch_does(tmp_path):
    """export's ctc.onnx for a head whose layers have a span, run by onnxruntime on windows shorter
    and longer than the span, against torch's own layers with the span as their mask and the
    head's definition in numpy (tests/hf_reference.py)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from hf_reference import ctc_head_log_probs

    from edgelalm.export.ctc import export_ctc_onnx

    layers = random_layers(span=2)
    folder = write_head(tmp_path / "head", head_tensors(layers), layers.metadata())
    embeddings = torch.nn.Embedding(VOCAB, WIDTH)
    export_ctc_onnx(load_ctc_head(folder, embeddings.weight.detach()), WIDTH, tmp_path / "ctc.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "ctc.onnx"), providers=["CPUExecutionProvider"])

    class Model:
        def get_input_embeddings(self):
            return embeddings

    for count in (1, 4, 31):
        rows = np.random.default_rng(count).normal(size=(count, WIDTH)).astype(np.float32)
        got = session.run(None, {session.get_inputs()[0].name: rows})[0]
        assert np.abs(got - ctc_head_log_probs(folder / CTC_HEAD_FILE, Model(), rows)).max() < 1e-4


def test_new_layers_start_as_the_head_they_were_given():
    """Zero outputs: step 0 of training a head's layers is the head as it was."""
    embeddings = torch.nn.Embedding(VOCAB, WIDTH)
    plain = TokenCtc(embeddings, tokenizer=None)
    layered = TokenCtc(embeddings, tokenizer=None, layers=CtcLayers(WIDTH, 2, HEADS, FEED_FORWARD, dropout=0.1))
    layered.load_state_dict(plain.state_dict(), strict=False)
    rows = torch.randn(2, 11, WIDTH)
    padding = torch.zeros(2, 11, dtype=torch.bool)
    assert torch.allclose(layered.log_probs(rows, padding), plain.log_probs(rows))
    assert sum(p.numel() for p in layered.layers.parameters()) == 2 * (
        4 * WIDTH * WIDTH + 4 * WIDTH + 2 * WIDTH * FEED_FORWARD + FEED_FORWARD + 5 * WIDTH
    )


@pytest.mark.parametrize("span", [0, 4], ids=["whole-window", "span-4"])
@pytest.mark.parametrize("realigned", [False, True], ids=["checkpoint", "realigned"])
def test_training_writes_a_head_that_export_reads_as_training_computes_it(tmp_path, realigned, span):
    """TokenCtc.save_head with layers -> load_ctc_head (export's graph module) and
    TokenCtc.load_head (a later stage, wer_check.py; finetune realigning it) give the same
    log-probabilities as the head that was saved, one window [T, D] at a time; a head realigned
    to a compressor applies its map after the layers."""
    embeddings = torch.nn.Embedding(VOCAB, WIDTH)
    trained = TokenCtc(embeddings, tokenizer=None, realign=realigned, layers=random_layers(3, span=span)).eval()
    if realigned:
        with torch.no_grad():
            trained.transform.normal_(std=0.2, generator=torch.Generator().manual_seed(5))
    trained.save_head(tmp_path / CTC_HEAD_FILE, "avg3" if realigned else None)
    stored = load_file(str(tmp_path / CTC_HEAD_FILE))
    assert len([name for name in stored if name.startswith("layers.")]) == 3 * 12
    rows = torch.randn(17, WIDTH)
    with torch.no_grad():
        expected = trained.log_probs(rows)
        exported = load_ctc_head(tmp_path, embeddings.weight.detach())(rows)
        later = TokenCtc(embeddings, tokenizer=None, realign=realigned)
        later.load_head(tmp_path / CTC_HEAD_FILE)
        again = later.eval().log_probs(rows)
    assert later.layers is not None and len(later.layers.stack) == 3 and later.layers.attention_span == span
    assert torch.allclose(exported, expected, atol=1e-5) and torch.allclose(again, expected, atol=1e-6)
    plain = TokenCtc(embeddings, tokenizer=None, realign=realigned)
    plain.load_state_dict(trained.state_dict(), strict=False)
    assert not torch.allclose(plain.log_probs(rows), expected, atol=1e-2)  # the layers have a say


def test_layers_read_back_train_with_the_dropout_asked_for(tmp_path):
    """A later stage realigning a layered head (finetune) trains its layers with the run's dropout;
    evaluation and export read them without (the same values as a head read with none)."""
    layers = random_layers()
    folder = write_head(tmp_path / "head", head_tensors(layers), layers.metadata())
    embeddings = torch.nn.Embedding(VOCAB, WIDTH)
    rows = torch.randn(1, 13, WIDTH, generator=torch.Generator().manual_seed(4))
    evaluated = {}
    for dropout in (0.0, 0.5):
        head = TokenCtc(embeddings, tokenizer=None).train()
        head.load_head(folder / CTC_HEAD_FILE, layers_dropout=dropout)
        assert {module.p for module in head.layers.modules() if isinstance(module, torch.nn.Dropout)} == {dropout}
        with torch.no_grad():
            first, second = head.log_probs(rows), head.log_probs(rows)
            evaluated[dropout] = head.eval().log_probs(rows)
        assert torch.equal(first, second) == (dropout == 0.0)
    assert torch.equal(evaluated[0.0], evaluated[0.5])


def test_a_realigned_head_is_not_read_as_a_plain_one(tmp_path):
    """A head realigned to a compressor read by a TokenCtc that does not realign (wer_check.py
    --ctc-head over uncompressed frames): refused, not scored without its map."""
    tensors = head_tensors(None) | {"transform": torch.zeros(WIDTH, WIDTH)}
    folder = write_head(tmp_path / "head", tensors, {"edgelalm_realigned_to": "avg3"})
    with pytest.raises(EdgelalmError, match="realigned to a compressor"):
        TokenCtc(torch.nn.Embedding(VOCAB, WIDTH), tokenizer=None).load_head(folder / CTC_HEAD_FILE)


def test_a_span_that_is_not_a_count_is_refused_when_layers_are_made():
    """Before anything trains: a span of -1 would block every other position, and its file could
    not be read back."""
    for span in (-1, 100_001):
        with pytest.raises(EdgelalmError, match="attention span is a count of positions"):
            CtcLayers(WIDTH, 1, HEADS, FEED_FORWARD, attention_span=span)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: _broken(t, "blank", torch.zeros(WIDTH + 1)), "blank must be [32] (the decoder's width)"),
        (lambda t: _broken(t, "log_scale", torch.zeros(1)), "log_scale a scalar"),
        (lambda t: _broken(t, "log_scale", torch.tensor(math.nan)), "the head's values must be finite"),
        (lambda t: _broken(t, "log_scale", torch.tensor(25.0)), "log_scale at most 20"),
        (lambda t: {k: v for k, v in t.items() if k != "log_scale"}, "found blank"),
        (lambda t: _broken(t, "scale", torch.zeros(())), "found blank, log_scale, scale"),
        (lambda t: _broken(t, "transform", torch.zeros(WIDTH, 3)), "transform [32, 32]"),
    ],
)
def test_a_malformed_head_is_refused_in_one_line_by_export_and_by_training(tmp_path, change, words):
    """The head's own tensors: training's reader (a later stage, wer_check.py, finetune) checks
    them as export's does, one line naming the file, never a torch shape error."""
    folder = write_head(tmp_path / "head", change(head_tensors(None)), None)
    embeddings = torch.nn.Embedding(VOCAB, WIDTH)
    for read in (
        lambda: load_ctc_head(folder, embeddings.weight.detach()),
        lambda: TokenCtc(embeddings, tokenizer=None, realign=True).load_head(folder / CTC_HEAD_FILE),
    ):
        with pytest.raises(EdgelalmError) as refused:
            read()
        assert str(refused.value).startswith(f"{folder / CTC_HEAD_FILE}: ") and "\n" not in str(refused.value)
        assert words in str(refused.value)


def _broken(tensors: dict, name: str, value) -> dict:
    return {**tensors, name: value}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t, m: (t, {}), "names their attention heads in its metadata"),
        (lambda t, m: (t, {CTC_ATTENTION_HEADS_KEY: "5"}), "a count that divides the width 32); found '5'"),
        (lambda t, m: (t, {CTC_ATTENTION_HEADS_KEY: "-4"}), "found '-4'"),
        (lambda t, m: (t, {CTC_ATTENTION_HEADS_KEY: "\u00b2"}), "found '\u00b2'"),
        (lambda t, m: (t, m | {CTC_ATTENTION_SPAN_KEY: "-1"}), "a count of positions from 0 (the whole window)"),
        (lambda t, m: (t, m | {CTC_ATTENTION_SPAN_KEY: "near"}), "to 100000; found 'near'"),
        (lambda t, m: (t, m | {CTC_ATTENTION_SPAN_KEY: "100001"}), "found '100001'"),
        (lambda t, m: (t, m | {CTC_ATTENTION_SPAN_KEY: "\u00b2"}), "found '\u00b2'"),
        (lambda t, m: (t, m | {CTC_ATTENTION_SPAN_KEY: "1\n2"}), "found '1\\n2'"),
        (lambda t, m: (t, m | {CTC_ATTENTION_SPAN_KEY: "9" * 5000}), "found '9999"),
        (
            lambda t, m: ({k: v for k, v in t.items() if not k.startswith("layers.stack.0.")}, m),
            "its layer tensors are not layers.stack.0.* to .N.*",
        ),
        (
            lambda t, m: (_broken(t, "layers.stack.7.qkv.weight", torch.zeros(3 * WIDTH, WIDTH)), m),
            "its layer tensors are not layers.stack.0.* to .N.*",
        ),
        (lambda t, m: (_broken(t, "layers.stack.1.extra", torch.zeros(1)), m), "first odd one: layers.stack.1.extra"),
        (
            lambda t, m: ({k: v for k, v in t.items() if k != "layers.stack.1.qkv.bias"}, m),
            "first odd one: layers.stack.1.qkv.bias",
        ),
        (
            lambda t, m: (_broken(t, "layers.stack.1.qkv.weight", torch.zeros(WIDTH, WIDTH)), m),
            "layers.stack.1.qkv.weight must be of shape [96, 32]",
        ),
        (
            lambda t, m: (_broken(t, "layers.stack.0.feed_forward_up.weight", torch.zeros(FEED_FORWARD)), m),
            "feed_forward_up.weight must be [feed-forward width, 32]",
        ),
        (
            lambda t, m: (_broken(t, "layers.stack.1.attention_norm.bias", torch.full((WIDTH,), math.nan)), m),
            "layers.stack.1.attention_norm.bias must hold finite numbers",
        ),
        (
            lambda t, m: (_broken(t, "layers.stack.1.attention_norm.bias", torch.zeros(WIDTH, dtype=torch.int32)), m),
            "layers.stack.1.attention_norm.bias must hold finite numbers",
        ),
    ],
)
def test_a_malformed_layered_head_is_refused_in_one_line(tmp_path, change, words):
    layers = random_layers()
    tensors, metadata = change(head_tensors(layers), layers.metadata())
    folder = write_head(tmp_path / "head", tensors, metadata)
    embeddings = torch.nn.Embedding(VOCAB, WIDTH)
    for read in (
        lambda: load_ctc_head(folder, embeddings.weight.detach()),
        lambda: TokenCtc(embeddings, tokenizer=None).load_head(folder / CTC_HEAD_FILE),
    ):
        with pytest.raises(EdgelalmError) as refused:
            read()
        assert str(refused.value).startswith(f"{folder / CTC_HEAD_FILE}: ") and "\n" not in str(refused.value)
        assert words in str(refused.value)


def test_a_file_claiming_many_wide_layers_is_refused_before_they_are_built(tmp_path):
    """64 layer indices of one small tensor each: the names are checked against empty (meta)
    layers first, so 64 whole layers are never built for a file that holds almost nothing."""
    tensors = head_tensors(None)
    tensors |= {f"layers.stack.{index}.qkv.bias": torch.zeros(3 * WIDTH) for index in range(64)}
    tensors["layers.stack.0.feed_forward_up.weight"] = torch.zeros(1, WIDTH)
    folder = write_head(tmp_path / "head", tensors, {CTC_ATTENTION_HEADS_KEY: "4"})
    with pytest.raises(EdgelalmError, match="first odd one"):
        load_ctc_head(folder, torch.zeros(VOCAB, WIDTH))
