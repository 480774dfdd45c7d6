"""The judge through the generation engine against a real local OpenAI-compatible server.

The server is helpers/judge_server.py (the `judge_server` fixture): a rule-based judge whose
verdicts can be worked out by hand (longer answers win, ties go to the answer shown first, GARBLE
gets no verdict).
"""

import json
import re
from pathlib import Path

import httpx
import pytest

from helpers.cli import run_cli
from helpers.recipes import write_recipe
from seed.endpoints.openai import OpenAIEndpoint
from seed.evaluate.annotations import load_annotations
from seed.evaluate.judge import (
    JudgeSettings,
    judge_pairwise,
    judge_single,
    load_prompts,
    parse_pairwise,
    parse_single,
)
from seed.evaluate.questions import Question, load_questions
from seed.evaluate.stats import order_flip_rate, win_rate
from seed.generate.cache import RequestCache
from seed.generate.engine import Limits

ROOT = Path(__file__).resolve().parents[1]
MT_BENCH = ROOT.parent / "shared" / "data" / "mt_bench"


QUESTIONS = [Question(str(i), [f"question {i}?"], "writing" if i < 3 else "math")
             for i in range(5)]
STUDENT = {"0": ["one two three"], "1": ["one two three four five six seven eight nine ten"],
           "2": ["same length here"], "3": ["GARBLE two three"], "4": ["short"]}
TEACHER = {"0": ["one two three four five"], "1": ["one two three"],
           "2": ["also same here"], "3": ["one two three"], "4": ["much longer answer"]}


def run_pairwise(url: str, out: Path, cache: RequestCache, json_schema: bool = True) -> dict:
    import asyncio

    async def go() -> dict:
        judge = OpenAIEndpoint(url, "rule-judge")
        try:
            return await judge_pairwise(QUESTIONS, "student", STUDENT, "teacher", TEACHER, judge,
                                        out, settings=JudgeSettings(json_schema=json_schema),
                                        cache=cache, limits=Limits(concurrency=4))
        finally:
            await judge.aclose()

    return asyncio.run(go())


def test_pairwise_judges_both_orders_and_combines_them(judge_server, tmp_path):
    url, log = judge_server
    start = len(log)
    counts = run_pairwise(url, tmp_path / "judgments.jsonl", RequestCache(tmp_path / "c.sqlite"))
    assert counts["requests_paid"] == 10 and len(log) - start == 10
    assert (counts["written"], counts["unparseable"], counts["failed"]) == (5, 1, 0)
    sent = log[start]
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["verdict"]["enum"] == [
        "A>>B", "A>B", "A=B", "B>A", "B>>A"]
    assert sent["temperature"] == 0.0
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "judgments.jsonl").open())}
    assert rows["0"]["verdicts"] == [-1, -1]  # 3 vs 5 words: B>A shown first, A>B shown second
    assert rows["1"]["verdicts"] == [2, 2]  # 10 vs 3 words: much better in both orders
    assert rows["2"]["verdicts"] == [1, -1]  # equal: whoever is first wins, a flip
    assert rows["3"]["verdicts"] == [None, -1]  # GARBLE shown as A: no verdict in the reply
    assert rows["4"]["verdicts"] == [-2, -2]
    assert rows["1"]["reasons"][0] == "A has 10 words, B has 3"
    s = load_annotations(tmp_path / "judgments.jsonl")
    assert s.unparseable == 1  # lines come in completion order
    assert sorted((c.instruction, c.preference) for c in s.rows) == [
        ("question 0?", 0.0), ("question 1?", 1.0), ("question 2?", 0.5), ("question 4?", 0.0)]
    assert win_rate(s) == pytest.approx(37.5)
    assert order_flip_rate(s) == pytest.approx(25.0)


def test_warm_cache_makes_zero_judge_requests(judge_server, tmp_path):
    url, log = judge_server
    cache = RequestCache(tmp_path / "c.sqlite")
    run_pairwise(url, tmp_path / "first.jsonl", cache)
    start = len(log)
    again = run_pairwise(url, tmp_path / "second.jsonl", cache)
    assert len(log) == start and again["requests_paid"] == 0 and again["requests_cached"] == 10
    def lines(name: str) -> list[str]:
        return sorted((tmp_path / name).read_text().splitlines())

    assert lines("first.jsonl") == lines("second.jsonl")
    # the same output file resumes: nothing left to ask, not even the cache
    resumed = run_pairwise(url, tmp_path / "second.jsonl", cache)
    assert resumed["already_done"] == 5 and resumed["requests_cached"] == 0


def test_crash_mid_file_resumes_without_duplicates(judge_server, tmp_path):
    url, _ = judge_server
    out = tmp_path / "judgments.jsonl"
    cache = RequestCache(tmp_path / "c.sqlite")
    run_pairwise(url, out, cache)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:30])  # a torn third line, as after a kill
    counts = run_pairwise(url, out, cache)
    assert counts["already_done"] == 2 and counts["written"] == 3 and counts["requests_paid"] == 0
    assert sorted(json.loads(x)["id"] for x in out.read_text().splitlines()) == list("01234")


def test_without_json_schema_the_mt_bench_marks_are_parsed(judge_server, tmp_path):
    url, log = judge_server
    start = len(log)
    run_pairwise(url, tmp_path / "j.jsonl", RequestCache(tmp_path / "c.sqlite"), json_schema=False)
    assert all("response_format" not in body for body in log[start:])
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "j.jsonl").open())}
    # [[A]] / [[B]] carry no strength: 10 vs 3 words is a plain win here
    assert rows["1"]["verdicts"] == [1, 1] and rows["0"]["verdicts"] == [-1, -1]


def test_single_grading_with_reference(judge_server, tmp_path):
    import asyncio

    url, log = judge_server
    questions = [Question("a", ["What is 2+2?"], "math", reference=["4"]),
                 Question("b", ["Say hi."], "writing")]
    answers = {"student": {"a": ["4"], "b": ["hi there my friend how are you"]},
               "teacher": {"a": ["The answer is 4, since 2+2=4."], "b": ["hello"]}}

    async def go() -> dict:
        judge = OpenAIEndpoint(url, "rule-judge")
        try:
            return await judge_single(questions, answers, judge, tmp_path / "grades.jsonl",
                                      cache=RequestCache(tmp_path / "c.sqlite"))
        finally:
            await judge.aclose()

    start = len(log)
    counts = asyncio.run(go())
    assert counts["written"] == 4 and counts["requests_paid"] == 4
    sent = [b["messages"][-1]["content"] for b in log[start:]]
    assert sum("[Reference answer, known to be correct]\n4\n" in m for m in sent) == 2
    rows = {(r["model"], r["id"]): r for r in map(json.loads, (tmp_path / "grades.jsonl").open())}
    assert rows[("student", "b")]["score"] == 1 + 7 // 3
    assert rows[("teacher", "a")]["score"] == 1 + 7 // 3
    assert rows[("student", "a")]["score"] == 1


@pytest.mark.parametrize("text, verdict", [
    ('{"verdict": "A>>B", "reason": "clearer"}', 2),
    ('```json\n{"verdict": "B>A", "reason": "x"}\n```', -1),
    ('{"verdict": "A=B", "reason": "both fine but the second one is cut', 0),
    ("Assistant B is more accurate. [[B]]", -1),
    ("Both are equally good. [[C]]", 0),
    ("My final verdict is A>B.", 1),
    ("I cannot tell.", None),
    ('{"verdict": "A much better", "reason": "?"}', None),
])
def test_parse_pairwise(text, verdict):
    assert parse_pairwise(text)[0] == verdict


@pytest.mark.parametrize("text, score", [
    ('{"score": 7, "reason": "good"}', 7),
    ('{"score": "8", "reason": "good"}', 8),
    ('{"score": 9, "reason": "trunc', 9),
    ("Solid answer. Rating: [[6]]", 6),
    ("Rating: 3", 3),
    ('{"score": 11, "reason": "too high"}', None),
    ("no idea", None),
])
def test_parse_single(text, score):
    assert parse_single(text)[0] == score


def test_reasons_are_kept_from_json():
    assert parse_pairwise('{"verdict": "A>B", "reason": "more precise"}') == (1, "more precise")


def test_prompt_templates_are_editable(tmp_path):
    (tmp_path / "pairwise.toml").write_text('system = "s"\nuser = "Q: $question"\n')
    with pytest.raises(Exception, match="missing user_reference"):
        load_prompts("pairwise", tmp_path)
    assert set(load_prompts("pairwise")) >= {"system", "user", "user_reference"}
    assert re.search(r"\$answer_a", load_prompts("pairwise")["user"])


@pytest.mark.skipif(not MT_BENCH.is_dir(), reason=f"reference data missing: {MT_BENCH}")
def test_mt_bench_questions_with_references():
    qs = load_questions(MT_BENCH / "question.jsonl", MT_BENCH / "reference_answer_gpt-4.jsonl")
    assert len(qs) == 80 and all(len(q.turns) == 2 for q in qs)
    by_id = {q.id: q for q in qs}
    assert by_id["81"].category == "writing" and by_id["81"].reference is None
    assert by_id["101"].reference is not None and len(by_id["101"].reference) == 2
    assert sum(q.reference is not None for q in qs) == 30


def test_judge_request_refused_is_one_clear_error(judge_server, tmp_path):
    # a base URL that is not the API: every request is a 404, a UserError naming the server
    url, _ = judge_server
    with pytest.raises(Exception, match="refused the request"):
        run_pairwise(url.removesuffix("/v1") + "/nope", tmp_path / "j.jsonl",
                     RequestCache(tmp_path / "c.sqlite"))
    assert httpx.get(url.removesuffix("/v1") + "/nope/models").status_code == 404


ENDPOINT = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "j"}


@pytest.mark.parametrize("judge, needle", [
    (None, "no [eval.judge] section"),
    ({"questions": "nope.jsonl", "endpoint": ENDPOINT}, "nope.jsonl: no such questions file"),
    ({"mode": "ranked", "endpoint": {"kind": "openai"}}, "eval.judge.mode"),
])
def test_seed_judge_bad_input_is_one_line_exit_2(tmp_path, judge, needle):
    recipe = {"name": "x", "generate": {"teacher": {"kind": "tasks"}}}
    write_recipe(tmp_path / "r.toml", recipe, {"eval.judge": judge} if judge else {})
    proc = run_cli("judge", "model", "--recipe", "r.toml", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
