"""Files of Debian packages, not installed: `apt-get download` then `dpkg-deb -x`, for the recipes
that read recordings Debian ships (asterisk_prompts.py, drascula_speech.py, amazon_queen_speech.py,
steel_sky_speech.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def unpacked(packages: Sequence[str], scratch: Path) -> Path:
    """Download `packages` into `scratch` and unpack them into one tree; returns its root."""
    subprocess.run(["apt-get", "download", *packages], cwd=scratch, check=True, capture_output=True)
    tree = scratch / "tree"
    for deb in sorted(scratch.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    return tree
