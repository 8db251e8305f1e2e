"""files.read_tsv / write_tsv: the tables of example clips, real-speech clips and fine-tuning data."""

from __future__ import annotations

from edgelalm.files import read_tsv, write_tsv


def test_a_table_is_tab_separated_text_with_a_header_and_reads_back(tmp_path):
    table = tmp_path / "transcripts.tsv"
    rows = [
        {"file": "a.wav", "transcript": "turn the lights off", "speaker": "left out"},
        {"file": "b c.wav", "transcript": 'she said "hi"\tthen left', "speaker": "left out"},
    ]
    write_tsv(table, rows, ("file", "transcript"))
    assert table.read_text(encoding="utf-8").splitlines()[:2] == ["file\ttranscript", "a.wav\tturn the lights off"]
    assert read_tsv(table) == [{key: row[key] for key in ("file", "transcript")} for row in rows]


def test_without_columns_the_first_row_names_them(tmp_path):
    table = tmp_path / "t.tsv"
    write_tsv(table, [{"x": "1", "y": "é"}])
    assert read_tsv(table) == [{"x": "1", "y": "é"}]
