"""A copy of an exported bundle with its manifest edited as JSON: how tests make the manifests a
reader must refuse (or still read) without writing a bundle by hand."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgelalm.constants import MANIFEST_FILE


def edited_copy(bundle: Path, folder: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    """`bundle` copied to `folder` (over an earlier copy), its manifest passed through `edit`."""
    shutil.copytree(bundle, folder, dirs_exist_ok=True)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    edit(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder
