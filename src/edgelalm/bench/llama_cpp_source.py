"""llama.cpp's own files, as the installed llama-cpp-python release vendors them.

PyPI serves llama-cpp-python as an sdist only, and the sdist carries the whole llama.cpp tree it
was built from (vendor/llama.cpp/): its converter (convert_hf_to_gguf.py, conversion/, gguf-py/)
and its test data (models/ggml-vocab-*.gguf.inp/.out). `llama_cpp_source` downloads that sdist
with pip once (the version installed here, so the files match the compiled library) and extracts
the paths asked for into a cache; nothing of llama.cpp is stored in this repository. Used by the
benchmark's llama.cpp mtmd peer (the converter writes its "mmproj" GGUF) and by the tests
(llama.cpp's tokenizer vectors).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from edgelalm.doctor import package_version
from edgelalm.errors import EdgelalmError
from edgelalm.files import existing_on_the_way, write_failed

DISTRIBUTION = "llama-cpp-python"
VENDOR_ROOT = "vendor/llama.cpp"
CACHE_VARIABLE = "EDGELALM_CACHE"
DOWNLOAD_TIMEOUT_S = 900


def default_cache() -> Path:
    """$EDGELALM_CACHE, else $XDG_CACHE_HOME/edgelalm, else ~/.cache/edgelalm."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgelalm"


def check_cache(cache: Path | None = None) -> None:
    """Refuse, before any work, a cache that cannot be a folder: a file, or a path under one (the
    bench measured everything else and then warned that its mtmd rows could not run)."""
    path = (cache or default_cache()).absolute()
    on_the_way = existing_on_the_way(path)
    if not on_the_way.is_dir():
        shown = f"${CACHE_VARIABLE}" if os.environ.get(CACHE_VARIABLE) else "the cache"
        raise EdgelalmError(f"{shown} {path}: {on_the_way} is a file, not a folder")


def installed_version() -> str:
    if (version := package_version(DISTRIBUTION)) is None:
        raise EdgelalmError(f"{DISTRIBUTION} is not installed")
    return version


def llama_cpp_source(paths: Sequence[str], cache: Path | None = None) -> Path:
    """llama.cpp's root folder holding `paths` (files or folders relative to vendor/llama.cpp/ in
    the sdist, e.g. "convert_hf_to_gguf.py", "gguf-py") from the installed llama-cpp-python
    release: cache/llama-cpp-python-<version>/. A path missing there is taken from the sdist,
    downloaded with pip (into a scratch folder, then deleted); each path appears whole or not at
    all. EdgelalmError (with pip's own words) when that cannot be done."""
    version = installed_version()
    root = (cache or default_cache()) / f"{DISTRIBUTION}-{version}"
    missing = [path for path in paths if not (root / path).exists()]
    if missing:
        try:
            _extract_from_sdist(version, missing, root)
        except OSError as error:  # a cache that is a file, unwritable, or full
            raise write_failed(f"llama.cpp's converter (the cache, ${CACHE_VARIABLE}) into", root, error) from None
    return root


def _extract_from_sdist(version: str, paths: list[str], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".sdist-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"{DISTRIBUTION}=={version}",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "--dest",
            scratch,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise EdgelalmError(
                f"downloading the {DISTRIBUTION} {version} sdist took over {DOWNLOAD_TIMEOUT_S} s"
            ) from None
        sdists = sorted(Path(scratch).glob("*.tar.gz"))
        if result.returncode != 0 or len(sdists) != 1:
            words = " ".join(result.stderr.strip().splitlines()[-3:])[-500:] or "no output"
            raise EdgelalmError(
                f"could not download the {DISTRIBUTION} {version} sdist for llama.cpp's "
                f"{', '.join(paths)} ({' '.join(command[2:])} exited {result.returncode}): {words}"
            )
        staged = Path(scratch) / "llama.cpp"
        with tarfile.open(sdists[0], "r:gz") as sdist:
            for member in sdist:
                relative = _vendored_path(member.name)
                if relative is None or not member.isfile() or not _wanted(relative, paths):
                    continue
                source = sdist.extractfile(member)
                if source is None:
                    continue
                target = staged.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
                if member.mode & 0o111:
                    target.chmod(0o755)
        absent = [path for path in paths if not (staged / path).exists()]
        if absent:
            raise EdgelalmError(f"{sdists[0].name} has no {VENDOR_ROOT}/{' or '.join(absent)}")
        for path in paths:
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                (staged / path).rename(target)
            except OSError:
                if not target.exists():  # else another process put it there first
                    raise


def _vendored_path(name: str) -> PurePosixPath | None:
    """'llama_cpp_python-X/vendor/llama.cpp/a/b' -> 'a/b'; None outside it or for unsafe names."""
    parts = PurePosixPath(name).parts
    vendor = PurePosixPath(VENDOR_ROOT).parts
    if len(parts) <= 1 + len(vendor) or parts[1 : 1 + len(vendor)] != vendor:
        return None
    relative = parts[1 + len(vendor) :]
    if any(part in ("", ".", "..") for part in relative):
        return None
    return PurePosixPath(*relative)


def _wanted(relative: PurePosixPath, paths: list[str]) -> bool:
    text = relative.as_posix()
    return any(text == path or text.startswith(path.rstrip("/") + "/") for path in paths)
