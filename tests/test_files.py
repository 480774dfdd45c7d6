"""The JSONL reader for files that are not records: its one torn-line rule, gzip, line numbers."""

import gzip
import json
import logging

import pytest

from seed.errors import UserError
from seed.files import load_jsonl, read_jsonl


def test_values_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n   \n[2, 3]\n"four"\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, [2, 3]), (5, "four")]


def test_a_valid_last_line_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "by_hand.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')
    assert load_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "killed.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b": "hal')
    with caplog.at_level(logging.WARNING, logger="seed.files"):
        assert load_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert "killed.jsonl:3: torn last line (18 bytes) skipped" in caplog.text


def test_a_last_line_torn_inside_a_multibyte_character_is_skipped(tmp_path):
    path = tmp_path / "killed.jsonl"
    path.write_bytes(b'{"a": 1}\n' + '{"a": "\u00e9t\u00e9"}'.encode()[:10])
    assert load_jsonl(path) == [{"a": 1}]


def test_a_bad_line_with_its_newline_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON \(Expecting value\); "
                                        r"fix or remove that line"):
        load_jsonl(path)


def test_a_bad_last_line_that_ends_in_a_newline_is_an_error_not_a_torn_write(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        load_jsonl(path)


def test_line_separators_inside_strings_do_not_split_a_line(tmp_path):
    path = tmp_path / "text.jsonl"
    value = {"text": "one\u2028two\x85three\rfour"}
    path.write_text(json.dumps(value, ensure_ascii=False) + "\n", newline="")
    assert load_jsonl(path) == [value]


def test_a_gzipped_file_is_read_the_same(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"a": 1}\n{"a": 2}')
    assert load_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"nope\.jsonl: no such file; check the path"):
        load_jsonl(tmp_path / "nope.jsonl")
