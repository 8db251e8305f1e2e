"""`edgelalm export --share-from`: which files of an earlier bundle of the same checkpoint the new
bundle can reuse, and the check that what was reused is what that bundle recorded."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edgelalm.constants import DECODER_FILE
from edgelalm.errors import EdgelalmError
from edgelalm.export.adapter import LoraAdapter
from edgelalm.export.checkpoint import Checkpoint
from edgelalm.files import sha256_of
from edgelalm.manifest import (
    FileRecord,
    is_encoder_file,
    read_manifest,
)

if TYPE_CHECKING:  # bundle.py imports this module
    from edgelalm.export.bundle import ExportOptions


def shareable_files(
    checkpoint: Checkpoint, options: ExportOptions, adapter: LoraAdapter | None, chat_template: str
) -> dict[str, FileRecord]:
    """The files of `options.share_from` that this export would otherwise write again, with their
    records in that bundle's manifest: the encoder (graph and external weights) when the encoder
    precision matches, the decoder when the quant, the merged adapter and the chat template match.
    Both bundles must come from this checkpoint, unchanged since the earlier export."""
    if options.share_from is None:
        return {}
    where = f"--share-from {options.share_from}"
    try:
        earlier = read_manifest(options.share_from, verify_files=False)
    except EdgelalmError as error:
        raise EdgelalmError(f"{where}: {error}") from None
    source = str(checkpoint.path.resolve())
    if earlier.model.source != source:
        raise EdgelalmError(f"{where}: that bundle was exported from {earlier.model.source}, not {source}")
    try:  # created_utc is rounded down to the second.
        created = datetime.datetime.fromisoformat(earlier.created_utc).timestamp() + 1
    except ValueError:
        raise EdgelalmError(f"{where}: its manifest's created_utc is not a time: {earlier.created_utc!r}") from None
    # Every file the export reads counts, not only the weights: config.json's numbers, the tokenizer
    # and the chat template are written into the decoder's GGUF too (a rope_theta changed since was
    # shared stale). The checkpoint's own files: bundles, runs and caches kept in folders inside it
    # are not (a bundle exported there, the one shared from among them, is newer than itself).
    read = {*(path for path in checkpoint.path.iterdir() if path.is_file()), *checkpoint.tensor_files.values()}
    changed = sorted(path.name for path in read if path.stat().st_mtime > created)
    if changed:
        raise EdgelalmError(
            f"{where}: the checkpoint changed since that bundle was exported ({', '.join(changed[:5])})"
        )
    names = []
    if earlier.encoder.precision == options.encoder_precision:
        names += [name for name in earlier.files if is_encoder_file(name)]
    decoder = earlier.decoder
    if (
        decoder
        and decoder.quant == options.quant
        and decoder.adapter == (adapter.describe() if adapter else None)
        and earlier.prompt.chat_template == chat_template  # the GGUF carries the template
    ):
        names.append(DECODER_FILE)
    if not names:
        raise EdgelalmError(
            f"{where}: nothing to share (encoder {earlier.encoder.precision} vs {options.encoder_precision}; "
            f"decoder {decoder.quant if decoder else 'none'} vs {options.quant}, or another adapter or prompt format)"
        )
    for name in names:
        path = options.share_from / name
        record = earlier.files.get(name)
        if record is None or path.is_symlink() or not path.is_file() or record.bytes != path.stat().st_size:
            raise EdgelalmError(f"{where}: {name} is missing or does not match that bundle's manifest")
    return {name: earlier.files[name] for name in names}


def check_shared_copies(staging: Path, names: list[str], shared: dict[str, FileRecord], share_from: Path) -> None:
    """The files `names`, copied or linked from `share_from` into `staging`, are still the ones that
    bundle's manifest describes (`shared`). Checked before the graphs run: a damaged encoder
    otherwise failed the parity check, which blames the export."""
    for name in names:
        if sha256_of(staging / name) != shared[name].sha256.lower():
            raise EdgelalmError(
                f"--share-from {share_from}: {name} does not match the checksum in that bundle's manifest"
            )
