"""The typed manifest: what export writes reads back equal; a bundle written before still loads;
a malformed manifest is refused with one line naming the file and the field, never a traceback,
and nothing it names can lead the reader outside the bundle folder."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_edits import edited_copy

from edgelalm.constants import DECODER_FILE, MANIFEST_FILE
from edgelalm.errors import EdgelalmError
from edgelalm.manifest import Manifest, read_manifest

BEFORE = Path(__file__).parent / "data" / "bundles" / "manifest-v1-tiny-none-q4_0.json"


@pytest.fixture(scope="module")
def bundle(tiny_bundles):
    pytest.importorskip("torch")
    return tiny_bundles("avg", 3)


@pytest.fixture
def editable(bundle, tmp_path):
    """A copy of the bundle whose manifest a test edits as JSON: `edit(lambda m: ...)` -> folder."""
    return lambda change: edited_copy(bundle, tmp_path / "bundle", change)


def test_what_export_writes_reads_back_equal(bundle):
    manifest = read_manifest(bundle)
    assert isinstance(manifest, Manifest)
    assert manifest.to_json() == json.loads((bundle / MANIFEST_FILE).read_text())
    assert manifest.compressor.name == "avg" and manifest.compressor.factor == 3
    assert manifest.special_tokens.im_end.text == "<|im_end|>"


def test_a_manifest_is_written_in_utf_8_whatever_the_locale(bundle, tmp_path):
    """A prompt outside ASCII was written in the locale's encoding: a UnicodeEncodeError where it is
    ASCII (C locale, its UTF-8 coercion off), Latin-1 bytes that `read_manifest` (UTF-8) refuses where
    it is Latin-1."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    script = (
        "import dataclasses, sys; from pathlib import Path; "
        "from edgelalm.manifest import read_manifest, write_manifest; "
        "folder = Path(sys.argv[1]); manifest = read_manifest(folder); "
        f"prompt = dataclasses.replace(manifest.prompt, default_prompt={FRENCH.encode('ascii', 'backslashreplace')!r}"
        ".decode('unicode_escape')); "
        "write_manifest(folder, dataclasses.replace(manifest, prompt=prompt), manifest.files)"
    )
    environment = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run(
        [sys.executable, "-X", "utf8=0", "-c", script, str(copy)], env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert read_manifest(copy).prompt.default_prompt == FRENCH


FRENCH = "Transcris l\u2019audio, s\u2019il te pla\u00eet."


def test_a_manifest_written_before_the_typed_reader_still_loads(tmp_path):
    """The manifest of a bundle exported by the previous release (format version 1)."""
    (tmp_path / MANIFEST_FILE).write_text(BEFORE.read_text())
    manifest = read_manifest(tmp_path, verify_files=False)
    assert manifest.decoder.quant == "q4_0" and manifest.features.window_mel_frames == 1000
    assert manifest.prompt.default_prompt == "Transcribe the audio."


def test_a_file_past_2_gb_is_described(editable):
    """A 7B decoder is 8.2 GB: its size is past int32, which the other fields are held to. (The
    `qwen2-audio-7b` bundle of several compressors was written and then refused as --share-from.)"""
    seven_b_decoder = 8_244_998_912
    folder = editable(lambda m: m["files"][DECODER_FILE].update(bytes=seven_b_decoder))
    assert read_manifest(folder, verify_files=False).files[DECODER_FILE].bytes == seven_b_decoder
    too_big = editable(lambda m: m["files"][DECODER_FILE].update(bytes=2**60))
    with pytest.raises(
        EdgelalmError, match=r"files\.decoder\.gguf\.bytes must be an integer from 0 to 9007199254740991"
    ):
        read_manifest(too_big, verify_files=False)


def test_unknown_keys_are_ignored(editable):
    folder = editable(lambda m: (m.update(extra={"from": "a later writer"}), m["decoder"].update(note="x")))
    read_manifest(folder)


def _drop(path):
    def change(data):
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        del data[last]

    return change


def _set(path, value):
    def change(data):
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value

    return change


MALFORMED = [
    ("prompt deleted", _drop("prompt"), "missing prompt"),
    ("a nested key deleted", _drop("decoder.quant"), "missing decoder.quant"),
    ("a section of the wrong type", _set("features", []), "features must be an object"),
    (
        "a string where a number belongs",
        _set("features.sampling_rate", "16000"),
        "features.sampling_rate must be an integer",
    ),
    ("a float where an integer belongs", _set("decoder.layers", 2.5), "decoder.layers must be an integer"),
    ("true where an integer belongs", _set("compressor.factor", True), "compressor.factor must be an integer"),
    ("a negative number", _set("features.hop_length", -160), "features.hop_length must be an integer from 0"),
    ("zero where the runtime divides", _set("features.hop_length", 0), "features.hop_length must be at least 1"),
    (
        "a huge number",
        _set("decoder.context_length", 2**40),
        "decoder.context_length must be an integer from 0 to 2147483647",
    ),
    ("not a number", _set("features.window_seconds", math.nan), "features.window_seconds must be a finite number"),
    (
        "a list where a string belongs",
        _set("prompt.before_audio", ["<|im_start|>"]),
        "prompt.before_audio must be a string",
    ),
    ("an unknown prompt format", _set("prompt.format", "chat"), "prompt.format must be one of"),
    ("an unknown template source", _set("prompt.template_source", "internet"), "prompt.template_source must be one of"),
    (
        "a token id that is text",
        _set("special_tokens.im_end.id", "151645"),
        "special_tokens.im_end.id must be an integer",
    ),
    (
        "an unknown type inside a list",
        _set("special_tokens.end_of_turn_ids", [1, "x"]),
        "end_of_turn_ids[1] must be an integer",
    ),
    (
        "a graph input renamed",
        _set("encoder.inputs", {"input_features": "[n, T]"}),
        "encoder.inputs is ['input_features']",
    ),
    (
        "another right context",
        _set("encoder.right_context_frames", 3),
        "encoder.right_context_frames is 3; this edgelalm reads 2",
    ),
    (
        "a file outside the bundle",
        lambda m: m["files"].update({"../outside.bin": {"bytes": 1, "sha256": "0"}}),
        "'../outside.bin' is not a plain file name inside the bundle",
    ),
    (
        "an absolute file name",
        lambda m: m["files"].update({"/etc/passwd": {"bytes": 1, "sha256": "0"}}),
        "'/etc/passwd' is not a plain file name",
    ),
    (
        "a section naming a file outside",
        _set("decoder.file", "../decoder.gguf"),
        "'../decoder.gguf' is named by a section but not listed",
    ),
    (
        "a section naming an unlisted file",
        _set("encoder.file", "other.onnx"),
        "'other.onnx' is named by a section but not listed",
    ),
    (
        "a named file without its record",
        lambda m: m["files"].pop("decoder.gguf"),
        "'decoder.gguf' is named by a section but not listed",
    ),
    ("an unknown window mode", _set("windows", {"mode": "halves"}), "windows.mode must be one of joined, each"),
    (
        "a window length for joined windows",
        _set("windows", {"mode": "joined", "seconds": 8}),
        "windows.seconds applies to mode each",
    ),
    (
        "a window shorter than a second",
        _set("windows", {"mode": "each", "seconds": 0.5}),
        "windows.seconds must be from 1 to the encoder's window of 10 s, got 0.5",
    ),
    (
        "a window longer than the encoder's",
        _set("windows", {"mode": "each", "seconds": 11}),
        "windows.seconds must be from 1 to the encoder's window of 10 s, got 11",
    ),
    ("a window length that is text", _set("windows", {"mode": "each", "seconds": "8"}), "windows.seconds must be"),
    ("a beam of none", _set("decoding", {"beam_size": 0}), "decoding.beam_size must be at least 1, got 0"),
    ("a beam too wide", _set("decoding", {"beam_size": 17}), "beam_size must be from 1 to 16, got 17"),
    (
        "a CTC weight over 1",
        _set("decoding", {"beam_size": 2, "ctc_weight": 1.5}),
        "ctc_weight must be from 0 to 1, got 1.5",
    ),
    (
        "a CTC weight without a CTC head",
        _set("decoding", {"beam_size": 2, "ctc_weight": 0.3}),
        "ctc_weight 0.3 needs a CTC head, and there is none",
    ),
    (
        "a CTC head whose file is not listed",
        _set("ctc", {"file": "ctc.onnx", "vocab_size": 5, "inputs": {}, "output": {}}),
        "'ctc.onnx' is named by a section but not listed",
    ),
    (
        # Valid JSON ("\\udcff"), but no UTF-8 text: the tokenizer raised UnicodeEncodeError, a traceback.
        "a prompt with a lone surrogate",
        _set("prompt.default_prompt", "Transcribe \udcff"),
        "prompt.default_prompt is not valid Unicode text (surrogates not allowed at 11)",
    ),
    # Descriptions the reader did not hold to the decoder: such manifests loaded and `inspect` told of another model.
    (
        "a model width other than the decoder's",
        _set("model.hidden_size", 512),
        "model.hidden_size is 512; decoder.hidden_size is",
    ),
    (
        "a vocabulary other than the decoder's",
        _set("model.vocab_size", 9999),
        "model.vocab_size is 9999; decoder.vocab_size is",
    ),
    (
        "a special token past the vocabulary",
        _set("special_tokens.audio.id", 10**6),
        "special_tokens.audio.id is 1000000, past the decoder's",
    ),
    (
        "an end token past the vocabulary",
        _set("special_tokens.end_of_turn_ids", [5, 999999]),
        "special_tokens.end_of_turn_ids[1] is 999999, past the decoder's",
    ),
    (
        "a file record without its checksum",
        lambda m: m["files"]["decoder.gguf"].pop("sha256"),
        "missing files.decoder.gguf.sha256",
    ),
]


@pytest.mark.parametrize(("case", "change", "message"), MALFORMED, ids=[case for case, _, _ in MALFORMED])
def test_a_malformed_manifest_is_one_line_naming_the_field(editable, case, change, message):
    folder = editable(change)
    with pytest.raises(EdgelalmError) as caught:
        read_manifest(folder)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(str(folder / MANIFEST_FILE)), text
    assert message in text, text


def test_the_command_line_says_it_in_one_line(editable):
    folder = editable(_drop("prompt"))
    for command in (
        ["inspect", str(folder)],
        ["run", "x.wav", "--bundle", str(folder)],
        ["doctor", "--bundle", str(folder)],
    ):
        completed = subprocess.run(
            [sys.executable, "-m", "edgelalm.cli", *command], capture_output=True, text=True, timeout=300
        )
        assert completed.returncode == 1 and "Traceback" not in completed.stderr, completed.stderr
        assert completed.stderr.strip().splitlines()[-1] == f"edgelalm: error: {folder / MANIFEST_FILE}: missing prompt"


def test_a_symlink_in_the_bundle_is_refused(bundle, tmp_path):
    """decoder.gguf replaced by a link to an identical file outside the folder: the checksum would
    match, but the reader must not follow it out of the bundle."""
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    outside = tmp_path / "outside.gguf"
    shutil.copy2(folder / "decoder.gguf", outside)
    (folder / "decoder.gguf").unlink()
    (folder / "decoder.gguf").symlink_to(outside)
    with pytest.raises(EdgelalmError, match="decoder.gguf: symbolic link"):
        read_manifest(folder)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_listed_file_that_is_not_a_regular_file_is_named_so(bundle, tmp_path, kind):
    """decoder.gguf replaced by a FIFO or a folder: there, but not a file ('missing' before)."""
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    (folder / "decoder.gguf").unlink()
    if kind == "fifo":
        os.mkfifo(folder / "decoder.gguf")
    else:
        (folder / "decoder.gguf").mkdir()
    with pytest.raises(EdgelalmError, match=r"decoder\.gguf: not a regular file") as refused:
        read_manifest(folder)
    assert "missing" not in str(refused.value)


def test_a_manifest_that_is_not_json_or_too_deep(editable, bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    (folder / MANIFEST_FILE).write_text("[" * 100000)
    with pytest.raises(EdgelalmError, match="is not valid JSON"):
        read_manifest(folder)


def test_a_manifest_of_megabytes_is_refused_before_it_is_read(editable):
    """A 200 MB manifest (valid JSON, one padding key among the fields) was read whole: 463 MB RSS."""
    folder = editable(lambda m: m.update(padding="x" * 2_000_000))
    with pytest.raises(
        EdgelalmError, match=r"manifest\.json is 2,0\d\d,\d\d\d bytes; a file of its kind holds at most 1,000,000$"
    ):
        read_manifest(folder)


def _refresh_checksum(folder, name):
    """Rewrite `name`'s record in the manifest, as an attacker who edits both would."""
    from edgelalm.files import sha256_of

    data = json.loads((folder / MANIFEST_FILE).read_text())
    data["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)}
    (folder / MANIFEST_FILE).write_text(json.dumps(data))


def _run_cli(folder, tmp_path):
    import numpy as np
    import soundfile

    clip = tmp_path / "clip.wav"
    soundfile.write(clip, 0.1 * np.sin(np.arange(16000) / 5).astype(np.float32), 16000)
    completed = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "run", str(clip), "--bundle", str(folder), "--max-tokens", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 1 and "Traceback" not in completed.stderr, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgelalm: error: "), completed.stderr
    return lines[0]


def test_onnx_external_weights_outside_the_bundle_are_refused(bundle, tmp_path):
    """encoder.onnx rewritten to read its weights from ../outside.data (a real copy), checksum
    fixed: onnxruntime refuses the path, and the user gets one line."""
    import onnx

    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    shutil.copy2(folder / "encoder.onnx.data", tmp_path / "outside.data")
    graph = onnx.load(str(folder / "encoder.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    onnx.save(graph, str(folder / "encoder.onnx"))
    _refresh_checksum(folder, "encoder.onnx")
    line = _run_cli(folder, tmp_path)
    assert "onnxruntime cannot load" in line and "escapes model directory" in line


def test_a_truncated_gguf_with_its_checksum_fixed_is_one_line(bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    data = (folder / "decoder.gguf").read_bytes()
    (folder / "decoder.gguf").write_bytes(data[: len(data) // 2])
    _refresh_checksum(folder, "decoder.gguf")
    # llama.cpp's own reason, from the log edgelalm keeps quiet, ends the line.
    line = _run_cli(folder, tmp_path)
    assert "llama.cpp could not load" in line and "is not within the file bounds" in line


# -- a hostile bundle: its files rewritten and the checksums recomputed to fit ---------------------


def _copy(bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    return folder


def test_a_file_the_manifest_does_not_list_is_refused(bundle, tmp_path):
    """A graph may read any file beside it as its external weights, and only listed files are
    checked: the encoder's weights dropped from `files` and zeroed gave an empty answer, exit 0."""
    folder = _copy(bundle, tmp_path)
    (folder / "notes.bin").write_bytes(b"\0" * 16)
    with pytest.raises(EdgelalmError, match=r"notes\.bin: not listed in manifest\.json"):
        read_manifest(folder)
    (folder / "notes.bin").unlink()
    data = json.loads((folder / MANIFEST_FILE).read_text())
    del data["files"]["encoder.onnx.data"]
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(EdgelalmError, match=r"encoder\.onnx\.data: not listed"):
        read_manifest(folder)


def test_a_linked_manifest_is_refused(bundle, tmp_path):
    folder = _copy(bundle, tmp_path)
    outside = tmp_path / "manifest-outside.json"
    (folder / MANIFEST_FILE).rename(outside)
    (folder / MANIFEST_FILE).symlink_to(outside)
    with pytest.raises(EdgelalmError, match=r"manifest\.json: symbolic link"):
        read_manifest(folder)


def test_a_number_of_more_digits_than_python_reads_is_one_line(bundle, tmp_path):
    folder = _copy(bundle, tmp_path)
    text = (folder / MANIFEST_FILE).read_text()
    (folder / MANIFEST_FILE).write_text(text.replace('"n_fft": 400', '"n_fft": ' + "9" * 5001, 1))
    with pytest.raises(EdgelalmError, match="is not valid JSON: Exceeds the limit"):
        read_manifest(folder)


@pytest.mark.parametrize("field", ["compressor.audio_tokens_per_second", "features.window_seconds"])
def test_a_number_too_large_for_a_float_is_one_line(editable, field):
    """JSON reads 10**400 as an int, which math.isfinite cannot take: an OverflowError traceback
    (inspect, doctor, run), where a 5000-digit number was already one line."""
    with pytest.raises(EdgelalmError, match=re.escape(f"{field} must be a finite number >= 0, got 1000000")):
        read_manifest(editable(_set(field, 10**400)))


def test_an_adapters_alpha_too_large_for_a_float_is_shown(editable):
    """decoder.adapter is the exporter's record, read as it is: inspect formatted its alpha as a
    float and ended in OverflowError."""
    folder = editable(_set("decoder.adapter", {"rank": 4, "alpha": 10**400}))
    completed = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "inspect", str(folder)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0 and "Traceback" not in completed.stderr, completed.stderr
    assert "LoRA merged (rank 4, alpha 1000000000" in completed.stdout


def test_doctor_prints_a_bundles_strings_escaped():
    """inspect escaped the model's name; doctor printed it raw: a cleared screen, a window title,
    a line break forging a line of its own report."""
    from edgelalm.doctor import format_bundle

    canary = {
        "timings_ms": {"encoder": 1.0, "prefill": 1.0, "time_to_first_token": 1.0},
        "audio_seconds": 3.0, "audio_tokens": 9, "generated_tokens": 8, "weight_buffers": ["CPU\x1b[2J"],
        "load_ms": 1.0, "decode_tokens_per_second": 1.0, "peak_rss_mb": 1.0,
        "compressors_run": {"unseg\x1b[2J": "greedy"},
    }  # fmt: skip
    shown = format_bundle(
        {
            "path": "b\nundle",
            "model": "evil\x1b[2J\x1b]0;TITLE\x07\nbundle            FORGED",
            "compressor": "unseg",
            "quant": "q8_0",
            "files_verified": 6,
            "verify_ms": 1.0,
            "canary": canary,
        }  # fmt: skip
    )
    assert "\x1b" not in shown and "\x07" not in shown and len(shown.splitlines()) == 4
    assert "evil\\x1b[2J\\x1b]0;TITLE\\x07\\nbundle            FORGED" in shown and "b\\nundle" in shown


def test_checksums_in_capitals_are_the_same_checksums(editable):
    folder = editable(lambda m: [record.update(sha256=record["sha256"].upper()) for record in m["files"].values()])
    read_manifest(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("format_version", "1"), "format_version must be an integer from 1, got '1'"),
        (_set("format_version", 0), "format_version must be an integer from 1, got 0"),
        (_set("features.sampling_rate", 1), "features: sampling_rate 1 is outside 4000-192000 Hz"),
        (_set("features.hop_length", 100000), "features: hop_length 100000 is longer than n_fft"),
        (_set("features.window_seconds", 3.0), "are not window_seconds 3 at 16000 Hz"),
    ],
    ids=["version-as-text", "version-0", "sampling-rate", "hop-length", "window"],
)
def test_settings_that_disagree_are_refused(editable, change, message):
    """Each read as a number of the right type, but not a bundle any export writes: a sampling
    rate of 1 said "clip is too short (3000 ms)", a format version "1" said "upgrade edgelalm"."""
    with pytest.raises(EdgelalmError) as caught:
        read_manifest(editable(change))
    assert message in str(caught.value)


def test_control_characters_in_the_manifest_are_printed_escaped(editable):
    """A model name with terminal escapes (a window title, a cleared screen) is the bundle author's
    text: inspect shows it escaped."""
    folder = editable(_set("model.name", "tiny\x1b]0;owned\x07\x1b[2J"))
    completed = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "inspect", str(folder)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    assert "\x1b" not in completed.stdout and "tiny\\x1b]0;owned\\x07\\x1b[2J" in completed.stdout


def test_a_default_prompt_longer_than_the_context_blames_the_bundle(editable, tmp_path):
    """A run said the caller's clip did not fit, where the bundle's own prompt filled the context."""
    folder = editable(_set("prompt.default_prompt", "word " * 20000))
    line = _run_cli(folder, tmp_path)
    assert f"{folder / MANIFEST_FILE}: its prompt (before_audio, default_prompt) takes" in line
    assert "leaves no room for audio in the decoder's context" in line


def test_mel_filters_that_are_empty_or_overflow_are_one_line(bundle, tmp_path):
    """An empty .npy raised EOFError, which the command line reported as "interrupted"."""
    import numpy as np

    folder = _copy(bundle, tmp_path)
    (folder / "mel_filters.npy").write_bytes(b"")
    _refresh_checksum(folder, "mel_filters.npy")
    assert "mel_filters.npy is not a numpy array file" in _run_cli(folder, tmp_path)
    shape = np.load(bundle / "mel_filters.npy").shape
    np.save(folder / "mel_filters.npy", np.full(shape, 1e308))
    _refresh_checksum(folder, "mel_filters.npy")
    assert "mel filters must be finite weights from 0 to 1" in _run_cli(folder, tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("block_count", 0, "block_count is 0; the manifest says"),
        ("attention.layer_norm_rms_epsilon", math.nan, "layer_norm_rms_epsilon must be a positive number, got nan"),
        ("rope.freq_base", 0.0, "rope.freq_base must be a positive number, got 0.0"),
    ],
)
def test_a_decoder_header_llama_cpp_would_abort_on_is_one_line(bundle, tmp_path, field, value, message):
    """llama.cpp asserts on these (block_count 0: GGML_ASSERT, the process killed by SIGABRT) or
    computes garbage (rope base 0); the header is read first and held to the manifest."""
    from gguf import GGUFReader

    folder = _copy(bundle, tmp_path)
    reader = GGUFReader(folder / "decoder.gguf", "r+")
    entry = reader.fields[f"qwen2.{field}"]
    entry.parts[entry.data[0]][...] = value
    reader.data.flush()
    del reader
    _refresh_checksum(folder, "decoder.gguf")
    assert message in _run_cli(folder, tmp_path)


def _replace_compressor(folder, graph):
    """The bundle's compressor graph replaced by `graph` (an onnx GraphProto), checksum fixed."""
    import onnx

    name = read_manifest(folder, verify_files=False).compressor.file
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)], ir_version=10)
    onnx.save(model, str(folder / name))
    _refresh_checksum(folder, name)


def test_a_graph_of_another_stage_or_with_non_finite_output_is_one_line(bundle, tmp_path):
    """The encoder's graph in the compressor's place gave onnxruntime's ValueError traceback; a
    compressor that answers NaN gave "!!!!!!" with exit 0."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    manifest = read_manifest(bundle)
    folder = _copy(bundle, tmp_path)
    shutil.copy2(folder / "encoder.onnx", folder / manifest.compressor.file)
    _refresh_checksum(folder, manifest.compressor.file)
    assert "reads mel, mel_right_context; this stage feeds audio_frames" in _run_cli(folder, tmp_path)
    width, hidden = manifest.model.audio_width, manifest.model.hidden_size
    nan_weights = numpy_helper.from_array(np.full((width, hidden), np.nan, np.float32), "weights")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["audio_frames", "weights"], ["audio_embeddings"])],
        "nan",
        [helper.make_tensor_value_info("audio_frames", TensorProto.FLOAT, ["frames", width])],
        [helper.make_tensor_value_info("audio_embeddings", TensorProto.FLOAT, ["frames", hidden])],
        [nan_weights],
    )
    _replace_compressor(folder, graph)
    assert "gave values that are not finite" in _run_cli(folder, tmp_path)


def test_a_signal_stops_a_graph_that_runs_for_ever(bundle, tmp_path):
    """A compressor graph with a Loop of 10**15 turns: Python's handler cannot run inside
    onnxruntime, so SIGTERM was ignored and only SIGKILL ended it. The interrupt watcher stops the
    run (RunOptions.terminate): one line, status 130."""
    import signal
    import time

    import numpy as np
    import soundfile
    from onnx import TensorProto, helper

    manifest = read_manifest(bundle)
    folder = _copy(bundle, tmp_path)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["x"], ["x_out"])],
        "body",
        [
            helper.make_tensor_value_info("turn", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["turns", "keep_going", "audio_frames"], ["audio_embeddings"], body=body)],
        "for-ever",
        [helper.make_tensor_value_info("audio_frames", TensorProto.FLOAT, ["frames", manifest.model.audio_width])],
        [helper.make_tensor_value_info("audio_embeddings", TensorProto.FLOAT, None)],
        [
            helper.make_tensor("turns", TensorProto.INT64, [], [10**15]),
            helper.make_tensor("keep_going", TensorProto.BOOL, [], [True]),
        ],
    )
    _replace_compressor(folder, graph)
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, 0.1 * np.sin(np.arange(16000) / 5).astype(np.float32), 16000)
    process = subprocess.Popen(
        [sys.executable, "-m", "edgelalm.cli", "run", str(clip), "--bundle", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(10)  # loaded and inside the loop (the tiny bundle loads in a second or two)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130 and stderr.strip().splitlines() == ["edgelalm: error: interrupted"], stderr


def _projection_graph(manifest, nodes, name, output_type=None):
    """A compressor graph: `nodes` make `rows` from audio_frames, then a random projection to the
    decoder's width (output `audio_embeddings`, float unless `output_type`)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    width, hidden = manifest.model.audio_width, manifest.model.hidden_size
    weights = numpy_helper.from_array(
        0.02 * np.random.default_rng(0).standard_normal((width, hidden)).astype(np.float32), "weights"
    )
    cast = [helper.make_node("Cast", ["projected"], ["audio_embeddings"], to=output_type)] if output_type else []
    last = "projected" if output_type else "audio_embeddings"
    return helper.make_graph(
        [*nodes, helper.make_node("MatMul", ["rows", "weights"], [last]), *cast],
        name,
        [helper.make_tensor_value_info("audio_frames", TensorProto.FLOAT, ["frames", width])],
        [helper.make_tensor_value_info("audio_embeddings", output_type or TensorProto.FLOAT, None)],
        [weights, numpy_helper.from_array(np.array([0], np.int64), "zero")],
    )


def test_a_compressor_graph_is_held_to_its_compressor_s_token_count(bundle, tmp_path):
    """A graph giving 4 tokens a frame (avg3 gives one per 3) had the decoder's context grown to
    whatever arrived, past its trained length (14400 audio tokens, exit 0); one giving none ran
    with the decoder hearing nothing; one giving integers was a TypeError traceback."""
    from onnx import TensorProto, helper

    manifest = read_manifest(bundle)
    folder = _copy(bundle, tmp_path)
    tiled = [helper.make_node("Concat", ["audio_frames"] * 4, ["rows"], axis=0)]
    _replace_compressor(folder, _projection_graph(manifest, tiled, "tiled"))
    line = _run_cli(folder, tmp_path)
    assert re.search(r"compressor\.onnx gave (\d+) audio tokens for (\d+) encoder frames; avg3 gives 1 to \d+", line)
    found, frames = map(int, re.search(r"gave (\d+) audio tokens for (\d+)", line).groups())
    assert found == 4 * frames, line
    emptied = [helper.make_node("Slice", ["audio_frames", "zero", "zero", "zero"], ["rows"])]
    _replace_compressor(folder, _projection_graph(manifest, emptied, "empty"))
    assert "gave 0 audio tokens for" in _run_cli(folder, tmp_path)
    kept = [helper.make_node("Identity", ["audio_frames"], ["rows"])]
    _replace_compressor(folder, _projection_graph(manifest, kept, "integers", TensorProto.INT32))
    assert "compressor.onnx gave an output of int32 values; expected floating-point numbers" in _run_cli(
        folder, tmp_path
    )


def test_nan_decoder_weights_are_one_line_not_an_answer_of_exclamation_marks(bundle, tmp_path):
    """output_norm.weight set to NaN, checksum fixed: the answer was "!!!!..." (token 0 over and
    over) with exit 0, and doctor's canary passed it."""
    import numpy as np
    from gguf import GGUFReader

    folder = _copy(bundle, tmp_path)
    reader = GGUFReader(folder / DECODER_FILE, "r+")
    (norm,) = [tensor for tensor in reader.tensors if tensor.name == "output_norm.weight"]
    norm.data[...] = np.nan
    reader.data.flush()
    del reader
    _refresh_checksum(folder, DECODER_FILE)
    assert "decoder.gguf gave logits that are not finite (NaN or infinity)" in _run_cli(folder, tmp_path)
    completed = subprocess.run(
        [sys.executable, "-m", "edgelalm.cli", "doctor", "--bundle", str(folder)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 1 and "gave logits that are not finite" in completed.stderr, completed.stderr


def test_a_decoder_whose_tokens_are_not_the_manifest_s_is_refused(editable, tmp_path):
    """The audio's place, the turns and the stop tokens are found by id: a GGUF with tokens moved
    (or of another vocabulary size) answered other words with exit 0."""

    def audio_bos_moved(manifest):
        manifest["special_tokens"]["audio_bos"]["id"] = manifest["special_tokens"]["audio"]["id"]

    line = _run_cli(editable(audio_bos_moved), tmp_path)
    assert re.search(r"decoder\.gguf: token \d+ is '<\|AUDIO\|>'; the manifest says '<\|audio_bos\|>'", line), line

    def grown(manifest):
        manifest["special_tokens"]["audio_bos"]["id"] = manifest["special_tokens"]["audio"]["id"] + 1
        for section in ("model", "decoder", *(["ctc"] if manifest.get("ctc") else [])):
            manifest[section]["vocab_size"] += 1

    assert re.search(r"decoder\.gguf holds (\d+) tokens; the manifest says \d+$", _run_cli(editable(grown), tmp_path))


def test_mel_filters_of_another_kind_are_refused_before_they_are_read(bundle, tmp_path):
    """A .npz named .npy (np.load opens it as an archive: an AttributeError traceback) and a header
    declaring 10**11 rows (a MemoryError traceback for 58 TiB) are one line each."""
    import io

    import numpy as np

    folder = _copy(bundle, tmp_path)
    filters = np.load(bundle / "mel_filters.npy")
    with (folder / "mel_filters.npy").open("wb") as stream:
        np.savez(stream, filters)
    _refresh_checksum(folder, "mel_filters.npy")
    line = _run_cli(folder, tmp_path)
    assert "mel_filters.npy is not a numpy array file: the magic string is not correct" in line
    assert "allow_pickle" not in line
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**11, filters.shape[1])}
    )
    (folder / "mel_filters.npy").write_bytes(header.getvalue() + bytes(64))
    _refresh_checksum(folder, "mel_filters.npy")
    assert f"expected finite mel filters of shape {filters.shape}, got float32 (100000000000, {filters.shape[1]})" in (
        _run_cli(folder, tmp_path)
    )
