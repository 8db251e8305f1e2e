"""files.read_tsv / write_tsv: the tables of example clips, real-speech clips and fine-tuning data."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edgelalm.errors import EdgelalmError
from edgelalm.files import (
    atomic_folder,
    link_or_copy,
    new_file,
    read_json,
    read_tsv,
    replaced_file,
    write_json,
    write_tsv,
)


def test_a_table_is_tab_separated_text_with_a_header_and_reads_back(tmp_path):
    table = tmp_path / "transcripts.tsv"
    rows = [
        {"file": "a.wav", "transcript": "turn the lights off", "speaker": "left out"},
        {"file": "b c.wav", "transcript": 'she said "hi" then left', "speaker": "left out"},
    ]
    write_tsv(table, rows, ("file", "transcript"))
    assert table.read_text(encoding="utf-8").splitlines() == [
        "file\ttranscript",
        "a.wav\tturn the lights off",
        'b c.wav\tshe said "hi" then left',
    ]
    assert read_tsv(table) == [{key: row[key] for key in ("file", "transcript")} for row in rows]
    with pytest.raises(EdgelalmError, match="a field holds a tab or a line break"):
        write_tsv(tmp_path / "tab.tsv", [{"file": "a.wav", "transcript": "one\ttwo"}])


def test_plain_tsv_reading(tmp_path):
    """A quote at a field's start swallowed every row after it into one transcript (csv's quoting);
    a short row gave None for a field (a traceback later); a byte-order mark hid the first column."""
    table = tmp_path / "t.tsv"
    table.write_text('file\ttranscript\na.wav\t"quoted start\nb.wav\ttwo\n', encoding="utf-8")
    assert read_tsv(table) == [{"file": "a.wav", "transcript": '"quoted start'}, {"file": "b.wav", "transcript": "two"}]
    table.write_text("file\ttranscript\na.wav\thi\nb.wav\n", encoding="utf-8")
    with pytest.raises(EdgelalmError, match="line 3 has 1 fields; the header names 2"):
        read_tsv(table)
    table.write_text("\ufefffile\ttranscript\na.wav\thi\n", encoding="utf-8")
    assert read_tsv(table) == [{"file": "a.wav", "transcript": "hi"}]
    table.write_text("file\ttranscript\tfile\na.wav\thi\tb.wav\n", encoding="utf-8")
    with pytest.raises(EdgelalmError, match="the header names 'file' more than once"):
        read_tsv(table)


def test_without_columns_the_first_row_names_them(tmp_path):
    table = tmp_path / "t.tsv"
    write_tsv(table, [{"x": "1", "y": "é"}])
    assert read_tsv(table) == [{"x": "1", "y": "é"}]


def _write_into(target, force, marker):
    with atomic_folder(target, force, marker=marker) as staging:
        (staging / "marker.json").write_text("{}")
        (staging / "new.txt").write_text("new")


def test_force_replaces_only_an_earlier_output_or_an_empty_folder(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of it")
    # Said without --force too: "already exists (--force replaces it)" led only to this refusal.
    for force in (False, True):
        with pytest.raises(EdgelalmError, match="holds files and no marker.json") as caught:
            _write_into(work, force, "marker.json")
        assert "--force" not in str(caught.value).replace("even with --force", "")
    assert (work / "thesis.tex").read_text() == "years of it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no staging folder left

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgelalmError, match=r"already exists \(--force replaces it\)"):
        _write_into(empty, False, "marker.json")
    _write_into(empty, True, "marker.json")
    assert (empty / "new.txt").read_text() == "new"
    (empty / "new.txt").write_text("old")
    _write_into(empty, True, "marker.json")  # an earlier output: replaced whole
    assert (empty / "new.txt").read_text() == "new"


def test_force_never_replaces_the_working_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(EdgelalmError, match="not replaced even with --force"):
        _write_into(Path("."), True, "marker.json")
    assert os.listdir(work) == ["notes.txt"]


def test_a_link_to_nothing_is_refused_before_any_work(tmp_path):
    """export ran every step and then failed to rename onto a dangling --out link."""
    target = tmp_path / "bundle"
    target.symlink_to(tmp_path / "gone")
    with pytest.raises(EdgelalmError, match="is a symbolic link to nothing"):
        with atomic_folder(target, force=True):
            raise AssertionError("the block must not run")
    assert target.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_the_longest_name_the_file_system_allows_is_written(tmp_path):
    """A 240-character name was refused with "File name too long": its staging folder's name
    added a prefix and a suffix to it."""
    target = tmp_path / ("b" * 240)
    with atomic_folder(target, force=False) as staging:
        (staging / "manifest.json").write_text("{}")
    assert (target / "manifest.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_hidden_scratch_names_fit_wherever_their_files_name_fits(tmp_path):
    """A name of multi-byte characters within the file system's limit (85 CJK characters are 255
    bytes) could not be written: its scratch and staging names kept 100 characters, not bytes."""
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    for writer in (new_file, replaced_file):
        suffix = f".{writer.__name__}"
        target = tmp_path / ("字" * ((name_max - len(suffix)) // 3) + suffix)  # within 2 bytes of the limit
        with writer(target) as scratch:
            scratch.write_text("whole")
        assert target.read_text() == "whole"
    folder = tmp_path / ("夹" * (name_max // 3))
    with atomic_folder(folder, force=False) as staging:
        (staging / "manifest.json").write_text("{}")
    assert (folder / "manifest.json").is_file()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_a_written_folder_has_the_umasks_permissions(tmp_path):
    """mkdtemp makes its folder 0700 (and some writers their files 0600): a bundle exported by one
    account could not be served by another."""
    previous = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "bundle", force=False) as staging:
            (staging / "weights.bin").write_bytes(b"w")
            (staging / "weights.bin").chmod(0o600)
            (staging / "tool").write_text("#!/bin/sh\n")
            (staging / "tool").chmod(0o700)
            (staging / "inner").mkdir(mode=0o700)
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in [tmp_path / "bundle", *(tmp_path / "bundle").iterdir()]}
    assert modes == {"bundle": 0o755, "weights.bin": 0o644, "tool": 0o755, "inner": 0o755}


def test_json_holding_a_name_that_is_not_utf_8_is_written_and_reads_back(tmp_path):
    """A finetune record naming a data folder of Latin-1 bytes: written as UTF-8 text, its
    surrogates failed the write after the whole training run."""
    name = os.fsdecode(b"/data/donn\xe9es")
    write_json(tmp_path / "record.json", {"data": name, "note": "caf\u00e9"}, escape_undecodable=True)
    assert read_json(tmp_path / "record.json") == {"data": name, "note": "caf\u00e9"}


def test_an_older_folder_is_put_back_where_the_new_one_cannot_be_moved_in(tmp_path, monkeypatch):
    """--force moves the older folder aside, then the new one in: where that failed, the older one
    was left only in a hidden folder."""
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    rename = Path.rename

    def failing_rename(self, destination):
        if Path(destination) == target and self.name.startswith(".bundle.partial"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return rename(self, destination)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError), atomic_folder(target, force=True, marker="manifest.json") as staging:
        (staging / "manifest.json").write_text("new")
    assert (target / "manifest.json").read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]


def test_a_file_linked_into_a_written_folder_keeps_its_own_permissions(tmp_path):
    """export --share-from links another bundle's files: the chmod above made the other bundle's
    0600 decoder 0644 (the same inode), or failed the export at its end on another account's file."""
    shared = tmp_path / "decoder.gguf"
    shared.write_bytes(b"GGUF")
    shared.chmod(0o600)
    with atomic_folder(tmp_path / "bundle", force=False) as staging:
        link_or_copy(shared, staging / shared.name)
        (staging / "manifest.json").write_text("{}")
        (staging / "manifest.json").chmod(0o600)
    assert os.path.samefile(shared, tmp_path / "bundle" / shared.name)
    assert shared.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "bundle" / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_the_newest_bundle_is_never_a_staging_folder(tmp_path):
    """`run` without --bundle took an export's hidden `.name.partial-*` folder when it was newest."""
    import time

    from edgelalm.constants import MANIFEST_FILE
    from edgelalm.runtime.pipeline import latest_bundle

    for name in ("done", ".next.partial-x1y2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST_FILE).write_text("{}")
        time.sleep(0.02)
    assert latest_bundle(tmp_path) == tmp_path / "done"


def test_a_file_in_the_way_is_named_without_advising_force(tmp_path):
    """`--out clip.wav` said "already exists (--force replaces it)", and --force then refused."""
    from edgelalm.files import check_replaceable

    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    for force in (False, True):
        with pytest.raises(EdgelalmError, match=r"clip\.wav is a file, not a folder$"):
            check_replaceable(tmp_path / "clip.wav", force)


def test_staging_folders_of_a_killed_write_are_removed_by_the_next(tmp_path):
    """SIGKILL (the OOM killer) leaves a staging folder no handler removes, hidden, gigabytes for a
    7B; a later export to the same target left it for good. Only a dead process's on this host go:
    a live one's is another export still running, and an unrecognised name is left alone."""
    import subprocess
    import sys

    from edgelalm.files import host_tag

    host = host_tag()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    names = {
        "dead": f".bundle.partial-{host}-{dead}-abc123",
        "alive": f".bundle.partial-{host}-{os.getpid()}-def456",
        "other host": f".bundle.partial-elsewhere.example-{dead}-ghi789",
        "unrecognised": ".bundle.partial-x1y2",
        "another target": f".bundle2.partial-{host}-{dead}-jkl012",
        "retired, no target": f".bundle.old-{host}-{dead}-mno345",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "decoder.gguf").write_bytes(b"x")
    with atomic_folder(tmp_path / "bundle", force=False) as staging:
        (staging / "manifest.json").write_text("{}")
    left = {path.name for path in tmp_path.iterdir()}
    assert left == {"bundle"} | set(names.values()) - {names["dead"]}, left
    # Once the target exists, a dead process's retired folder is the old copy, replaced: removed too.
    with atomic_folder(tmp_path / "bundle", force=True) as staging:
        (staging / "manifest.json").write_text("{}")
    assert names["retired, no target"] not in {path.name for path in tmp_path.iterdir()}


def test_a_scratch_file_is_made_exclusively_and_a_dead_process_s_is_removed(tmp_path):
    """The scratch name was `.name.partial-<pid>`, opened with "w": a link planted under it (or a
    stale file of an earlier process with the same id, common in containers) was written through,
    the file it pointed to replaced and then hard-linked as the output. A scratch file left by a
    killed process stayed for ever."""
    import stat

    from edgelalm.files import host_tag

    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    target = tmp_path / "talk.srt"
    planted = tmp_path / f".talk.srt.partial-{os.getpid()}"
    planted.symlink_to(precious)
    dead = 2**22 + 12345  # past pid_max's default: no such process
    abandoned = tmp_path / f".talk.srt.partial-{host_tag()}-{dead}-abcd1234"
    abandoned.write_text("half")
    previous = os.umask(0o022)
    try:
        with new_file(target) as scratch:
            assert not scratch.is_symlink() and scratch.read_text() == ""
            assert stat.S_IMODE(scratch.stat().st_mode) == 0o644  # the umask's, not mkstemp's 0600
            scratch.write_text("subtitles")
    finally:
        os.umask(previous)
    assert precious.read_text() == "mine" and target.read_text() == "subtitles"
    assert not target.samefile(precious) and not abandoned.exists() and planted.is_symlink()


def test_scratch_names_fit_ecryptfs_whatever_the_host_name(tmp_path, monkeypatch):
    """A scratch or staging name is the target's first 100 bytes, the host, the process and 8
    random letters: with a 64-byte host name (the most Linux allows) it was 191 bytes, past
    eCryptfs's 143, where the target's own name fits. Two long host names that share their start
    still get different tags: a folder shared between them is not cleaned of the other's files."""
    import socket

    from edgelalm.files import host_tag

    long_host = "build-runner-" + "x" * 40 + "-eu-west-1a"
    monkeypatch.setattr(socket, "gethostname", lambda: long_host)
    first_tag = host_tag()
    monkeypatch.setattr(socket, "gethostname", lambda: long_host[:-1] + "b")
    assert first_tag != host_tag() and len(first_tag) <= 16 and first_tag.startswith("build-r")
    target = tmp_path / ("語" * 40 + ".srt")  # 124 bytes
    with new_file(target) as scratch:
        assert len(os.fsencode(scratch.name)) <= 143, scratch.name
    with atomic_folder(tmp_path / ("b" * 140), force=False) as staging:
        assert len(os.fsencode(staging.name)) <= 143, staging.name
    monkeypatch.setattr(socket, "gethostname", lambda: "pi")
    assert host_tag() == "pi"


@pytest.mark.parametrize("force", [False, True])
def test_what_appears_at_the_target_while_it_is_written_is_judged_as_at_the_start(tmp_path, force):
    """Two exports of one name at once: the second replaced the first's bundle with exit 0 and no
    --force, and a folder of the user's made meanwhile was deleted even with it (the check ran
    only before the minutes of writing)."""
    target = tmp_path / "bundle"

    def write_while(appears: dict[str, str]) -> None:
        with atomic_folder(target, force, marker="marker.json") as staging:
            (staging / "marker.json").write_text('{"second": true}')
            target.mkdir()
            for name, text in appears.items():
                (target / name).write_text(text)

    with pytest.raises(EdgelalmError, match="holds files and no marker.json"):
        write_while({"notes.txt": "mine"})  # the user's folder
    assert (target / "notes.txt").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["bundle"]
    (target / "notes.txt").unlink()
    target.rmdir()
    if force:  # another export's, finished first: replaced, as it would have been at the start
        write_while({"marker.json": '{"first": true}'})
        assert (target / "marker.json").read_text() == '{"second": true}'
    else:
        with pytest.raises(EdgelalmError, match="already exists"):
            write_while({"marker.json": '{"first": true}'})
        assert (target / "marker.json").read_text() == '{"first": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_force_replaces_an_earlier_output_that_another_export_finished_meanwhile(tmp_path):
    """The re-check before the swap judged the bundle another export wrote meanwhile by the names
    its manifest listed at the start (none): every file of it was "beside an earlier output"."""
    from edgelalm.export.bundle import _listed_by_manifest

    target = tmp_path / "bundle"
    with atomic_folder(target, True, "manifest.json", _listed_by_manifest(target)) as staging:
        (staging / "manifest.json").write_text('{"files": {"decoder.gguf": {}}}')
        target.mkdir()  # another export's bundle, finished first
        (target / "manifest.json").write_text('{"files": {"decoder.gguf": {}}}')
        (target / "decoder.gguf").write_text("theirs")
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json"]


def test_a_link_as_the_output_is_refused(tmp_path):
    """`export --force --out current` where current is a link: the link was replaced by a new
    folder, the bundle it led to left stale."""
    real = tmp_path / "bundle-v1"
    with atomic_folder(real, force=False, marker="manifest.json") as staging:
        (staging / "manifest.json").write_text("{}")
    link = tmp_path / "current"
    link.symlink_to(real)
    for force in (False, True):
        with pytest.raises(
            EdgelalmError, match=rf"current is a symbolic link to {real}: name that folder, or another$"
        ):
            with atomic_folder(link, force, marker="manifest.json"):
                pass
    assert link.is_symlink() and sorted(path.name for path in real.iterdir()) == ["manifest.json"]


def test_a_folder_being_written_by_another_process_is_refused_before_the_work(tmp_path, another_writer):
    """Two exports of one new --out at once both did their whole work (30 minutes at 7B sizes), and
    the second then failed. The first holds its staging folder; a second writer is refused at the
    start, in one line, until the first process ends, however it ends (SIGKILL too)."""

    target = tmp_path / "bundle"
    with atomic_folder(target, force=False) as staging:
        (staging / "manifest.json").write_text("{}")
        with pytest.raises(EdgelalmError, match="bundle is being written by another process now .*staging folder"):
            with atomic_folder(target, force=True):
                pass
        assert sorted(path.name for path in tmp_path.iterdir()) == [staging.name], "the refused writer left something"
    assert (target / "manifest.json").exists()

    held, stop = another_writer(target)
    with pytest.raises(EdgelalmError, match=f"being written by another process now .*{held.name}"):
        with atomic_folder(target, force=True):
            pass
    stop()
    # Its process gone, the abandoned staging folder is no writer: removed, and the write goes on.
    with atomic_folder(target, force=True) as staging:
        (staging / "manifest.json").write_text('{"second": 1}')
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle"]


def test_names_past_a_staging_name_s_100_bytes_are_not_taken_for_each_other(tmp_path):
    """A staging name keeps a target's first 100 bytes: two targets sharing them refused each other.
    Such names are not checked up front (the end's check still judges them)."""
    long = "n" * 100
    with atomic_folder(tmp_path / f"{long}AAA", force=False):
        with atomic_folder(tmp_path / f"{long}BBB", force=False) as staging:
            (staging / "x").write_text("")
    assert (tmp_path / f"{long}BBB" / "x").exists() and (tmp_path / f"{long}AAA").is_dir()
