"""JSONL files: the reader's one torn-line rule, gzip, line numbers, and appending after a last line
without its newline."""

import gzip
import json
import logging

import pytest

from seed.errors import UserError
from seed.files import (
    append_jsonl,
    jsonl_lines,
    lines_backward,
    load_jsonl,
    read_jsonl,
    seal_jsonl,
)


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


def test_raw_lines_follow_the_same_rule_for_readers_that_parse_their_own_way(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"')
    assert list(jsonl_lines(path)) == [(1, b'{"a": 1}\n'), (3, b'{"a": 2}\n')]
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    assert list(jsonl_lines(path)) == [(1, b'{"a": 1}\n'), (2, b'{"a": 2}')]


def test_sealing_gives_a_valid_last_line_its_newline_and_cuts_a_torn_one(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')
    assert seal_jsonl(path) == 0
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    assert seal_jsonl(path) == 0  # already at a line boundary: unchanged
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": "t\u00e9')
    assert seal_jsonl(path) == len('{"a": "t\u00e9'.encode())
    assert path.read_text() == '{"a": 1}\n'
    path.write_text('{"a": "only a torn line')
    assert seal_jsonl(path) == len('{"a": "only a torn line')
    assert path.read_bytes() == b""


def test_sealing_leaves_a_missing_or_empty_file_as_it_is(tmp_path):
    assert seal_jsonl(tmp_path / "none.jsonl") == 0
    assert not (tmp_path / "none.jsonl").exists()
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert seal_jsonl(tmp_path / "empty.jsonl") == 0
    assert (tmp_path / "empty.jsonl").read_bytes() == b""


def test_appending_puts_each_value_on_a_line_of_its_own(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"n": 1}])
    path.write_text(path.read_text() + '{"n": 2}')  # ended by hand, without a newline
    append_jsonl(path, [{"n": 3}, {"n": "\u00e9"}])
    assert path.read_text(encoding="utf-8").splitlines() == [
        '{"n": 1}', '{"n": 2}', '{"n": 3}', '{"n": "\u00e9"}']


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 16])
def test_lines_come_backward_with_their_offsets_whatever_the_block_size(tmp_path, block):
    path = tmp_path / "f.jsonl"
    data = b'{"a": 1}\n\n  \n{"b": "x\xe2\x80\xa8y"}\n{"c": 3}'
    path.write_bytes(data)
    got = list(lines_backward(path, block=block))
    assert [line for _, line in got] == [b'{"c": 3}', b'{"b": "x\xe2\x80\xa8y"}', b'{"a": 1}']
    assert all(data[o:o + len(line)] == line for o, line in got)
    path.write_bytes(b"")
    assert list(lines_backward(path, block=block)) == []
