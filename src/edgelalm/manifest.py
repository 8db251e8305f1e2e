"""The bundle's manifest: one JSON file that says what every other file in the bundle is.

Written last by `edgelalm export` (with a SHA-256 of every file), read first by the runtime
and `edgelalm inspect`, which refuse a bundle whose files do not match it. Torch-free.

Sections (see README, "The bundle"): format, format_version, created_utc, model, features,
encoder, compressor, decoder, prompt, special_tokens,
tools, files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgelalm.errors import EdgelalmError

BUNDLE_FORMAT = "edgelalm-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
COMPRESSOR_FILE = "compressor.onnx"
DECODER_FILE = "decoder.gguf"
# The checkpoint's own mel filterbank [n_fft // 2 + 1, n_mels] (as whisper ships mel_filters.npz).
MEL_FILTERS_FILE = "mel_filters.npy"

_CHUNK_BYTES = 1 << 20


def is_encoder_file(name: str) -> bool:
    """The encoder graph and the external weights beside it (encoder.onnx.data)."""
    return name == ENCODER_FILE or name.startswith(ENCODER_FILE + ".")


def bundle_name(compressor_label: str, quant: str, encoder_precision: str) -> str:
    """'avg3-q8_0', with '-encoder-int8' (or fp16) when the encoder is not fp32."""
    encoder_suffix = "" if encoder_precision == "fp32" else f"-encoder-{encoder_precision}"
    return f"{compressor_label}-{quant}{encoder_suffix}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(bundle_dir: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} for every file in the bundle but the manifest."""
    records = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        name = path.relative_to(bundle_dir).as_posix()
        if name != MANIFEST_FILE:
            records[name] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    return records


def write_manifest(bundle_dir: Path, sections: dict[str, Any]) -> dict[str, Any]:
    """Write manifest.json: the format header, `sections`, and the files' checksums."""
    manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, **sections}
    manifest["files"] = file_records(bundle_dir)
    (bundle_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def read_manifest(bundle_dir: Path, verify_files: bool = True) -> dict[str, Any]:
    """The manifest of `bundle_dir`; with `verify_files`, every listed file must match it."""
    manifest_path = bundle_dir / MANIFEST_FILE
    if bundle_dir.is_file():
        raise EdgelalmError(f"{bundle_dir} is a file; a bundle is the folder that holds {MANIFEST_FILE}")
    if not bundle_dir.is_dir():
        raise EdgelalmError(f"bundle folder not found: {bundle_dir}")
    if not manifest_path.is_file():
        raise EdgelalmError(f"{bundle_dir} is not an edgelalm bundle: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EdgelalmError(f"{manifest_path} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise EdgelalmError(f"{manifest_path} is not an edgelalm bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > BUNDLE_FORMAT_VERSION:
        raise EdgelalmError(
            f"{bundle_dir} has bundle format version {version}; this edgelalm reads up to "
            f"{BUNDLE_FORMAT_VERSION}. Upgrade edgelalm or re-export the bundle"
        )
    if verify_files:
        verify_bundle_files(bundle_dir, manifest)
    return manifest


def verify_bundle_files(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """Raise, naming every file that is missing or differs from its checksum."""
    missing, altered = [], []
    for name, record in manifest.get("files", {}).items():
        path = bundle_dir / name
        if not path.is_file():
            missing.append(name)
        elif path.stat().st_size != record["bytes"] or sha256_of(path) != record["sha256"]:
            altered.append(name)
    problems = [f"missing {', '.join(missing)}"] if missing else []
    if altered:
        problems.append(f"{', '.join(altered)} {'does' if len(altered) == 1 else 'do'} not match the checksums in {MANIFEST_FILE}")
    if problems:
        raise EdgelalmError(f"bundle {bundle_dir}: {'; '.join(problems)}")
