"""Files, once each: a folder written atomically, a link that falls back to a copy, a file's SHA-256,
a table of tab-separated rows with a header. Torch-free."""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from edgelalm import interrupts
from edgelalm.errors import EdgelalmError

_CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def safetensors_file(path: Path) -> Iterator[Any]:
    """`safetensors.safe_open(path)` (torch tensors), where a file that is not safetensors (a
    corrupt or truncated header, a foreign file) is one EdgelalmError naming it, not safetensors'
    own error types."""
    from safetensors import safe_open

    try:  # safetensors says "No such file or directory" of a file that may not be read
        path.open("rb").close()
    except OSError as error:
        raise EdgelalmError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        with safe_open(str(path), framework="pt") as weights:
            yield weights
    except EdgelalmError:
        raise
    except Exception as error:  # safetensors raises its own error types for corrupt files
        if "unable to mmap" in str(error) or "(os error" in str(error):
            # The system refused (memory or open files under a limit), not the file's content.
            raise EdgelalmError(f"cannot read {path}: {error}") from None
        raise EdgelalmError(f"{path} is not a readable safetensors file: {error}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def files_newer_than(folder: Path, stamp: float, skipped: Path | None = None) -> list[Path]:
    """The files under `folder` modified after `stamp` (as make decides whether to rebuild), not
    those under `skipped` where it lies inside `folder` (outputs kept in the checkpoint)."""
    skipped_parts: tuple[str, ...] | None = None
    if skipped is not None:
        inside, root = skipped.resolve(), folder.resolve()
        if inside != root and inside.is_relative_to(root):
            skipped_parts = inside.relative_to(root).parts
    newer = []
    for path in folder.rglob("*"):
        if skipped_parts is not None and path.relative_to(folder).parts[: len(skipped_parts)] == skipped_parts:
            continue
        if path.is_file() and path.stat().st_mtime > stamp:
            newer.append(path)
    return newer


def read_tsv(path: Path) -> list[dict[str, str]]:
    """The rows of a tab-separated table whose first line names its columns (UTF-8, a byte-order
    mark allowed). Plain TSV: a quote is text (csv's quoting let `"` at a field's start swallow
    the rows after it into one field), and a row must have as many fields as the header names."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        lines = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines:
        return []
    header, rows = lines[0], lines[1:]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise EdgelalmError(f"{path}: the header names {', '.join(map(repr, repeated))} more than once")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header) and row:
            raise EdgelalmError(f"{path}: line {number} has {len(row)} fields; the header names {len(header)}")
    return [dict(zip(header, row, strict=True)) for row in rows if row]


def write_tsv(path: Path, rows: Iterable[dict[str, str]], columns: Iterable[str] | None = None) -> None:
    """`rows` as a tab-separated table with a header: `columns` (other keys left out), or the first row's keys."""
    rows = list(rows)
    header = list(columns) if columns is not None else list(rows[0]) if rows else []
    with open(path, "w", newline="", encoding="utf-8") as handle:
        # Plain TSV, as read_tsv reads it: a tab or a line break inside a field is refused.
        writer = csv.DictWriter(
            handle,
            header,
            extrasaction="ignore",
            delimiter="\t",
            lineterminator="\n",
            quoting=csv.QUOTE_NONE,
            quotechar=None,
        )
        try:
            writer.writeheader()
            writer.writerows(rows)
        except csv.Error:
            raise EdgelalmError(f"{path}: a field holds a tab or a line break, which a TSV cannot") from None


def read_json(path: Path, max_bytes: int | None = None) -> Any:
    """A JSON file, refused in one line when it is not (ValueError: bad JSON or UTF-8, also an
    integer of more digits than Python converts; RecursionError: nesting too deep), or when it is
    larger than `max_bytes` (read whole, a file of hundreds of MB would fill memory several times)."""
    if max_bytes is not None and (size := path.stat().st_size) > max_bytes:
        raise EdgelalmError(f"{path} is {size:,} bytes; a file of its kind holds at most {max_bytes:,}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        raise EdgelalmError(f"{path} is not valid JSON: {error}") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """`read_json` for a file that must hold an object."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise EdgelalmError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


def write_json(path: Path, data: Any, escape_undecodable: bool = False) -> None:
    """`data` as indented JSON in UTF-8, whatever the locale (`read_json` reads UTF-8: a name
    outside ASCII written in a Latin-1 locale was a manifest no reader could take).
    `escape_undecodable`: a file name that is not UTF-8 (its bytes kept as surrogates) goes as
    \\udcXX escapes, which Python reads back (a record); else it raises, as a manifest's
    readers refuse such text."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        if not escape_undecodable:
            raise
        encoded = json.dumps(data, indent=2).encode("ascii")
    path.write_bytes(encoded + b"\n")


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no second copy on disk); a copy where the file system refuses one."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_failed(what: str, out_dir: Path, error: OSError) -> EdgelalmError:
    """One line for an OSError while writing `out_dir` (a full disk, a file system gone read-only,
    a quota), with the space left there; atomic_folder has already removed the staging folder.
    One about a file outside it (an input that may not be read) names that file instead: it was
    said as a failure to write the output."""
    if (
        error.errno not in _WRITING_ERRNOS
        and error.filename is not None
        and not _written_by_atomic_folder(Path(os.fsdecode(error.filename)), out_dir)
    ):
        return EdgelalmError(f"cannot read {os.fsdecode(error.filename)}: {error.strerror or error}")
    reason = (error.strerror or str(error)) + free_space_note(out_dir.absolute().parent)
    return EdgelalmError(f"writing {what} {out_dir} failed: {reason}")


# What only writing causes: a full disk, a quota, a read-only file system, a file past ulimit -f.
_WRITING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _written_by_atomic_folder(path: Path, out_dir: Path) -> bool:
    """Whether `path` is `out_dir`, in it (results written there), a folder above it, or in the
    folders `atomic_folder` stages it in and moves an older one aside to."""
    path, target = path.absolute(), out_dir.absolute()
    if path.is_relative_to(target) or path in target.parents:
        return True
    if not path.is_relative_to(target.parent):
        return False
    first = path.relative_to(target.parent).parts[0]
    return any(first.startswith(_staging_stem(target, kind)) for kind in ("partial", "old"))


def free_space_note(folder: Path) -> str:
    """ " (N MB free there)" for a message about a failed write in `folder`; "" where unknown."""
    try:
        return f" ({shutil.disk_usage(folder).free / 1e6:.1f} MB free there)"
    except OSError:
        return ""


def check_replaceable(
    target: Path,
    force: bool,
    marker: str | None = None,
    owned: Callable[[str], bool] | None = None,
    force_option: str = "--force",
) -> None:
    """Refuse, in one line, an output folder that atomic_folder would refuse (callers with a long
    load before writing check first); an earlier output without `force` is refused advising
    `force_option` (the library's own builders: `overwrite=True`)."""
    if target.is_symlink() and not target.exists():
        raise EdgelalmError(f"{target} is a symbolic link to nothing (remove it, or name another folder)")
    if target.is_symlink():  # replaced, the link became a folder and what it led to stayed as it was
        raise EdgelalmError(f"{target} is a symbolic link to {os.path.realpath(target)}: name that folder, or another")
    if not target.exists():
        return
    if not target.is_dir():  # --force never replaces a file: saying it would misleads
        raise _not_a_folder(target)
    # What --force would refuse is said first: advising --force there would only lead to a second refusal.
    if marker is not None and not (target / marker).is_file() and any(target.iterdir()):
        raise EdgelalmError(
            f"{target} holds files and no {marker}: not an earlier output, so it is not replaced even with --force"
        )
    # The marker alone is not enough: an adapter copied into a working folder made --force delete
    # the folder's other files with it.
    others = sorted(path.name for path in target.iterdir() if owned is not None and not owned(path.name))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise EdgelalmError(
            f"{target} holds {shown} beside an earlier output: it is not replaced even with --force "
            "(move them, or name another folder)"
        )
    if not force:
        raise EdgelalmError(f"{target} already exists ({force_option} replaces it)")


def has_utf8_name(path: Path) -> bool:
    """Whether `path` is valid UTF-8: Linux names are bytes, and onnxruntime and the tokenizers'
    writer take only UTF-8 (a name read from a latin-1 disk arrives with surrogates)."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        return False
    return True


def not_utf8_reason(path: Path) -> str:
    """Why `path` (not `has_utf8_name`) cannot be given to a writer that takes UTF-8, shown readably."""
    data = os.fsencode(path)
    shown = data.decode("utf-8", "backslashreplace")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{shown}: its name is not valid UTF-8 (rename it)"
    # UTF-8 bytes that a C or POSIX locale hands Python as undecodable (`ü` as two surrogates).
    return f"{shown}: its name is not ASCII and this locale's encoding is ASCII (set LC_ALL=C.UTF-8)"


@contextlib.contextmanager
def replaced_file(path: Path) -> Iterator[Path]:
    """Yield a hidden scratch name beside `path`; on success it replaces `path` in one rename, on
    any failure it is removed: a reader never finds a half-written file, nor a new file beside
    stale ones from an interrupted run."""
    scratch = _scratch_beside(path)
    try:
        yield scratch
        os.replace(scratch, path)
    except BaseException:
        with contextlib.suppress(OSError):
            scratch.unlink()
        raise


@contextlib.contextmanager
def new_file(path: Path) -> Iterator[Path]:
    """Yield a hidden scratch name beside `path`; on success it becomes `path` only if nothing is
    there by then (a hard link, which never replaces, then the scratch name unlinked): a file that
    appeared meanwhile is not lost (FileExistsError); on any failure the scratch is removed."""
    scratch = _scratch_beside(path)
    try:
        yield scratch
        try:
            os.link(scratch, path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: the check, then the rename
            if path.exists() or path.is_symlink():
                raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
            os.replace(scratch, path)
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()


def _scratch_beside(path: Path) -> Path:
    """The hidden file `path` is written as before it takes `path`'s place, made now, empty and
    exclusively (a link planted under a predictable name was written through: the file it pointed
    to replaced), with the umask's mode. Named for this host and process, as staging folders are:
    the next write to `path` removes it once this process is gone (killed by SIGKILL)."""
    _remove_abandoned(path.absolute())
    descriptor, name = tempfile.mkstemp(prefix=_owned_prefix(path, "partial"), dir=path.parent)
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())
    finally:
        os.close(descriptor)
    return Path(name)


@contextlib.contextmanager
def folder_lock(folder: Path, user: str) -> Iterator[None]:
    """Hold `folder` for this process while the block runs (flock on a hidden .lock file in it, let
    go even if the process dies); one line where another process holds it. Two benchmarks into one
    folder read each other's half-written models and reported each other's rows."""
    import fcntl

    try:
        handle = (folder / ".lock").open("a")
    except OSError as error:
        raise cannot_write_in(folder, error) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EdgelalmError(f"{folder} is in use by another {user} (wait for it, or name another folder)") from None
        yield


def make_output_folder(folder: Path) -> None:
    """mkdir -p for an output folder that is filled over time (a benchmark's), refused in one line."""
    if folder.exists() and not folder.is_dir():
        raise _not_a_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise cannot_write_in(folder.parent, error) from None


@contextlib.contextmanager
def output_folder(folder: Path) -> Iterator[None]:
    """make_output_folder for the block; the folders it made are removed again where the block
    left them empty (every clip failed, a full disk at the first file)."""
    made = [path for path in [folder, *folder.parents] if not path.exists()]  # deepest first
    make_output_folder(folder)
    try:
        yield
    finally:
        _remove_empty(made)


def _not_a_folder(path: Path) -> EdgelalmError:
    return EdgelalmError(f"{path} is a file, not a folder")


def existing_on_the_way(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists: where a file on the way would stop a mkdir."""
    return next(folder for folder in [path, *path.parents] if folder.exists())


def cannot_write_in(parent: Path, error: OSError) -> EdgelalmError:
    """One line for a folder that could not be made in `parent`. /proc and the like exist but
    refuse new entries with ENOENT, which would read as "not found"; a file on the way (--out
    notes.txt/bundle) reads as "File exists" or "Not a directory"."""
    on_the_way = existing_on_the_way(parent)
    if not on_the_way.is_dir():
        reason = f"{'it' if on_the_way == parent else on_the_way} is not a folder"
    elif parent.is_dir() and error.errno == errno.ENOENT:
        reason = "it does not accept new folders"
    else:
        reason = error.strerror or str(error)
    return EdgelalmError(f"cannot write to {parent}: {reason}")


def _kept_name(name: str) -> str:
    """The first 100 bytes of `name` (not characters: 100 CJK characters are 300 bytes), cut at a
    character, for the hidden names a file or folder is written under: with a prefix and a suffix
    they must fit wherever the name itself fits (255 bytes on most file systems)."""
    # Bytes that are not UTF-8 (a latin-1 name) left out, as onnxruntime reads the staging folder
    # by a UTF-8 name; the rest through the locale's encoding, as the file system has them (decoded
    # as UTF-8 text, a C locale's ASCII could not write the name back: a traceback).
    return os.fsdecode(os.fsencode(name)[:100].decode("utf-8", errors="ignore").encode())


@contextlib.contextmanager
def atomic_folder(
    target: Path, force: bool, marker: str | None = None, owned: Callable[[str], bool] | None = None
) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; on success it becomes `target`
    (replacing it only with `force`); on any failure it, and any parent folder created for
    it, is removed. `marker`: a file every folder of this kind holds; `force` replaces an
    existing folder only if it is empty or holds it, so a mistyped --out never deletes, say,
    the user's working folder. `owned`: whether a name is one such a folder holds; with it, a
    folder holding anything else is not replaced either."""
    target = target.absolute()
    check_replaceable(target, force, marker, owned)
    refuse_a_second_writer(target)
    _remove_abandoned(target)
    created_parents = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    staging: Path | None = None
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A name as long as the file system allows leaves no room for more: the staging name takes part of it.
            staging = Path(tempfile.mkdtemp(prefix=_owned_prefix(target, "partial"), dir=target.parent))
        except OSError as error:
            raise cannot_write_in(target.parent, error) from None
        with _held(staging):
            yield staging
        _open_to_umask(staging)
        # Again: what appeared at `target` while this was written (another export of the same name,
        # a folder of the user's) is judged as it would have been at the start, not replaced unseen.
        check_replaceable(target, force, marker, owned)
        retired = None
        # A signal between the renames left the older folder only in a hidden one (--force), and
        # one after the last said "interrupted" of a whole folder: it waits for them.
        try:
            with interrupts.deferred(_COMMIT_NOTE), interrupts.kept_if_interrupted(target):
                if target.exists():
                    retired = Path(tempfile.mkdtemp(prefix=_owned_prefix(target, "old"), dir=target.parent))
                    target.rename(retired / target.name)
                staging.rename(target)
        finally:  # the held signal too: the older folder goes before it unwinds
            if retired is not None:
                _settle_retired(retired, target)
    except BaseException:
        # One handler from the staging folder's creation on: a signal that lands between its
        # creation and the yield removes it too.
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created_parents)
        raise


_COMMIT_NOTE = "edgelalm: interrupting once the output folder is in place"


def _settle_retired(retired: Path, target: Path) -> None:
    """The older folder moved aside into `retired`: removed once the new one is at `target`, put
    back where the new one could not be moved there."""
    if target.exists():
        shutil.rmtree(retired, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        (retired / target.name).rename(target)
        retired.rmdir()


@contextlib.contextmanager
def _held(staging: Path) -> Iterator[None]:
    """An exclusive flock on the staging folder while it is written (let go when the process ends,
    even by SIGKILL): what `refuse_a_second_writer` looks for."""
    import fcntl

    descriptor = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Blocking: a second writer's check holds a shared lock on it for an instant (not waiting
        # failed the first writer, 1 time in 450 with a checker in a loop beside it).
        with contextlib.suppress(OSError):  # a file system without locks: no refusal up front there
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def refuse_a_second_writer(target: Path) -> None:
    """One line where another process is writing `target` now (its staging folder held), before any
    work: two exports of one new folder both ran to the end, and the second then failed. Two
    starting in the same instant both go on, and the later to finish is judged at its end; so do
    names past the 100 bytes a staging name keeps (two such names may share them)."""
    import fcntl

    target = target.absolute()
    if _kept_name(target.name) != target.name:
        return
    prefix = _staging_stem(target, "partial")  # on any host
    for path in target.parent.glob(glob.escape(prefix) + "*"):
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, a link, a scratch file
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EdgelalmError(
                f"{target} is being written by another process now (its staging folder {path.name}): "
                "wait for it to finish, or name another folder"
            ) from None
        except OSError:  # a file system without locks: nothing to learn
            continue
        finally:
            os.close(descriptor)


def _staging_prefix(target: Path, kind: str) -> str:
    """Hidden, so that nothing takes it for the folder (`run`'s newest bundle skips dot names), and
    named for this host; the process's id follows (`_owned_prefix`)."""
    return f"{_staging_stem(target, kind)}{host_tag()}-"


def _staging_stem(target: Path, kind: str) -> str:
    return f".{_kept_name(target.name)}.{kind}-"


def host_tag() -> str:
    """This host's name in at most 16 bytes (longer ones cut, with a digest of the whole): with
    `_kept_name`'s 100 bytes, a 7-digit process id and mkstemp's 8 letters, a scratch name fits
    143 bytes, eCryptfs's limit (a 64-byte host name made 191)."""
    host = socket.gethostname()
    encoded = os.fsencode(host)
    if len(encoded) <= _HOST_TAG_BYTES:
        return host
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    return encoded[: _HOST_TAG_BYTES - 9].decode("utf-8", errors="ignore") + "~" + digest


_HOST_TAG_BYTES = 16


def _owned_prefix(target: Path, kind: str) -> str:
    """The host and process a staging folder belongs to, in its name: a later write to the same
    target removes it once that process is gone (killed by SIGKILL or the OOM killer, which no
    handler sees: a 7B's staging folder is gigabytes, hidden)."""
    return f"{_staging_prefix(target, kind)}{os.getpid()}-"


def _remove_abandoned(target: Path) -> None:
    """Staging folders an earlier write to `target` on this host left behind when its process died.
    A retired (`.old-`) folder only where `target` exists: killed between its two renames, the
    retired folder holds the previous `target`, the only copy."""
    kinds = ("partial", "old") if target.exists() else ("partial",)
    for kind in kinds:
        _remove_dead_processes_own(target.parent, _staging_prefix(target, kind))


def _remove_dead_processes_own(folder: Path, prefix: str) -> None:
    """The folders and files in `folder` named `prefix` + a process id + "-...", whose process is
    gone."""
    for path in folder.glob(glob.escape(prefix) + "*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)) or path.is_symlink():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file():  # a scratch file (_scratch_beside)
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def private_scratch_folder(kind: str) -> Iterator[Path]:
    """A folder of this process's in $TMPDIR while the block runs (`run -`'s copy of standard
    input), named for its host and process: one that a process killed by SIGKILL or the OOM killer
    left (the user's audio, for good, in a /tmp that may be memory) is removed by the next."""
    prefix = f"edgelalm-{kind}-{host_tag()}-"
    _remove_dead_processes_own(Path(tempfile.gettempdir()), prefix)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as folder:
        yield Path(folder)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


def _open_to_umask(folder: Path) -> None:
    """The permissions any new folder and file would get (mkdtemp makes its folder 0700, and some
    writers their files 0600): a bundle exported by one account can be served by another. A file
    linked from elsewhere keeps its own: its mode is the other folder's too (a bundle shared from
    lost its 0600, or the export failed at its end on a file of another account's)."""
    umask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        status = path.stat()
        if not path.is_dir() and status.st_nlink > 1:  # linked from another bundle (--share-from): its file
            continue
        executable = path.is_dir() or status.st_mode & 0o111
        path.chmod((0o777 if executable else 0o666) & ~umask)


def _umask() -> int:
    """This process's umask, read without changing it where Linux says it (other threads may be
    creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()
