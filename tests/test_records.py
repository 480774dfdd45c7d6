"""Records: stable ids, streaming read/append, torn-line repair, and errors that name the line."""

import json

import pytest

from seed.errors import UserError
from seed.records import (
    Provenance,
    Record,
    RecordWriter,
    Teacher,
    prompt_lines,
    read_records,
    record_id,
    seal_records,
    whole_prompts,
)


def _rec(i: int) -> Record:
    return Record.new([{"role": "user", "content": f"q{i}"},
                       {"role": "assistant", "content": f"a{i}"}],
                      provenance=Provenance(teacher=Teacher(route="tasks")))


def test_id_is_a_stable_hash_of_the_messages():
    a, b = _rec(1), _rec(1)
    assert a.id == b.id == record_id(a.messages)
    assert _rec(2).id != a.id
    assert len(a.id) == 16


def test_records_round_trip_in_openai_message_format(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.write_many(_rec(i) for i in range(3))
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["messages"] == [{"role": "user", "content": "q0"},
                                               {"role": "assistant", "content": "a0"}]
    assert [r.messages[0].content for r in read_records(path)] == ["q0", "q1", "q2"]


def test_a_torn_last_line_is_reported_skipped_and_repaired_by_the_next_writer(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.write_many(_rec(i) for i in range(2))
    full = _rec(2).to_line()
    with path.open("a") as f:
        f.write(full[: len(full) // 2])  # a crash mid-write
    assert [r.messages[0].content for r in read_records(path)] == ["q0", "q1"]
    assert "torn last line" in caplog.text
    with RecordWriter(path) as w:
        w.write(_rec(3))
    assert [r.messages[0].content for r in read_records(path)] == ["q0", "q1", "q3"]
    assert path.read_text().endswith("\n")


def test_a_broken_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(_rec(0).to_line() + '{"id": "x", "messages": [{"role": "user"}]}\n'
                    + _rec(1).to_line())
    with pytest.raises(UserError, match=r"r\.jsonl:2: not a valid record \(messages\.0\.content"):
        list(read_records(path))


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such records file"):
        list(read_records(tmp_path / "nope.jsonl"))


def test_a_valid_last_record_without_its_newline_is_counted_and_the_next_record_starts_a_line(
        tmp_path):
    from seed.records import Record, RecordWriter, count_records, read_records

    path = tmp_path / "records.jsonl"
    first, last, added = (Record.new([{"role": "user", "content": q},
                                      {"role": "assistant", "content": a}])
                          for q, a in [("1 + 1 =", "2"), ("2 + 2 =", "4"), ("3 + 3 =", "6")])
    path.write_text(first.to_line() + last.to_line().rstrip("\n"))
    assert count_records(path) == 2
    with RecordWriter(path) as writer:
        writer.write(added)
    assert list(read_records(path)) == [first, last, added]
    assert path.read_text().splitlines() == [r.to_line().rstrip("\n") for r in (first, last, added)]


def _prompt(key: str, n: int) -> list[Record]:
    return [Record.new([{"role": "user", "content": key}, {"role": "assistant", "content": str(i)}],
                       meta={"prompt_key": key, "job": "j", "sample": i}) for i in range(n)]


def test_a_prompt_write_torn_after_a_whole_line_is_not_done_and_is_cut_before_the_next(tmp_path):
    # A kill can stop one write() between pages: the first of a prompt's samples, not the rest.
    path = tmp_path / "r.jsonl"
    whole, torn = prompt_lines(_prompt("a", 3)), prompt_lines(_prompt("b", 3))
    assert [json.loads(line)["meta"]["prompt_records"] for line in whole.splitlines()] == [3] * 3
    second_line_end = torn.index(b"\n", torn.index(b"\n") + 1) + 1
    for cut in (second_line_end, second_line_end + 10):  # at a line boundary, and inside a line
        path.write_bytes(whole + torn[:cut])
        assert whole_prompts(read_records(path), "j") == {"a"}
        assert whole_prompts(read_records(path), "other job") == set()
        assert seal_records(path) == cut
        assert path.read_bytes() == whole
        assert seal_records(path) == 0


def test_sealing_keeps_a_whole_last_prompt_and_single_records_without_a_count(tmp_path):
    path = tmp_path / "r.jsonl"
    single = prompt_lines(_prompt("c", 1))
    assert b"prompt_records" not in single
    path.write_bytes(single + prompt_lines(_prompt("a", 2)) + single)
    assert seal_records(path) == 0
    assert whole_prompts(read_records(path), "j") == {"a", "c"}
    path.write_bytes(prompt_lines(_prompt("a", 2)))
    assert seal_records(path) == 0
    path.write_bytes(prompt_lines(_prompt("a", 2))[:-1])  # a valid last line gets its newline
    assert seal_records(path) == 0
    assert len(list(read_records(path))) == 2
    assert seal_records(tmp_path / "missing.jsonl") == 0
