"""The judge: a model grading answers, pairwise (both orders, 5-way verdicts) or on a 1-10 rubric.

Requests go through the generation engine (`seed.generate.engine.run`): its concurrency and rate
limits, retries, SQLite cache and budget. A rerun with a warm cache sends nothing; a rerun after a
crash skips the questions whose judgments are already on disk.

- Pairwise: each question is judged twice, the model's answer shown first (as A) and then second,
  so position bias cancels out; verdicts are A>>B, A>B, A=B, B>A, B>>A. The two verdicts, turned to
  the model's side, are written to `judgments.jsonl` (format in annotations.py); orders that
  disagree count as a tie when the statistics combine them.
- Single: each answer gets a 1-10 score and a reason, written to `grades.jsonl`.
- Reference-guided: when a question has a reference answer, the prompt's `user_reference`
  template shows it to the judge (both modes).

The judge is asked for JSON; with `json_schema` on, `response_format` carries a JSON schema (for
servers with constrained decoding: OpenAI, vLLM, `seed serve`). Either way the reply is parsed
robustly (JSON, a truncated JSON object, MT-Bench's `[[A]]` / `[[7]]` marks); a reply with no
verdict in it is recorded as unparseable and counted. Templates are TOML files in `prompts/`.
This module knows nothing of students, baselines or reports: it gets answers and writes grades.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from seed.endpoints.base import Endpoint
from seed.errors import UserError
from seed.evaluate.questions import Question
from seed.files import read_jsonl, seal_jsonl
from seed.generate.cache import RequestCache
from seed.generate.engine import Limits, Request, Result, run

PROMPTS_DIR = Path(__file__).parent / "prompts"
VERDICTS = {"A>>B": 2, "A>B": 1, "A=B": 0, "B>A": -1, "B>>A": -2}
_ALIASES = {"A": 1, "B": -1, "C": 0, "TIE": 0, "A<B": -1, "A<<B": -2, "B<A": 1, "B<<A": 2,
            "A==B": 0, "B=A": 0}
PAIR_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["verdict", "reason"],
               "properties": {"verdict": {"type": "string", "enum": list(VERDICTS)},
                              "reason": {"type": "string"}}}
SINGLE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["score", "reason"],
                 "properties": {"score": {"type": "integer", "enum": list(range(1, 11))},
                                "reason": {"type": "string"}}}


Render = Callable[[Question, list[str], list[str]], list[dict[str, Any]]]


@dataclass
class JudgeSettings:
    """How to ask the judge: JSON schema or not, reply length, and where the templates live."""

    json_schema: bool = True
    max_tokens: int = 512
    prompts_dir: str | Path | None = None


def load_prompts(mode: str, prompts_dir: str | Path | None = None) -> dict[str, str]:
    """The `system`, `user` and `user_reference` templates of a mode (`pairwise` or `single`)."""
    path = Path(prompts_dir or PROMPTS_DIR) / f"{mode}.toml"
    if not path.is_file():
        raise UserError(f"{path}: no such judge prompt file; copy {PROMPTS_DIR / (mode + '.toml')}")
    try:
        prompts = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix the judge prompt file") from None
    missing = {"system", "user", "user_reference"} - set(prompts)
    if missing:
        raise UserError(f"{path}: missing {', '.join(sorted(missing))}; a judge prompt file needs "
                        "system, user and user_reference")
    return prompts


def render_turns(turns: list[str]) -> str:
    """One text for one or several turns (MT-Bench's two-turn questions and answers)."""
    if len(turns) == 1:
        return turns[0]
    return "\n\n".join(f"[Turn {i}]\n{t}" for i, t in enumerate(turns, 1))


def _messages(prompts: dict[str, str], q: Question, **answers: str) -> list[dict[str, str]]:
    key = "user_reference" if q.reference else "user"
    fields = {"question": render_turns(q.turns), "reference": render_turns(q.reference or [""]),
              **answers}
    try:
        user = Template(prompts[key]).substitute(fields)
    except (KeyError, ValueError) as e:
        raise UserError(f"judge prompt `{key}` has an unknown placeholder ({e}); use "
                        f"{', '.join('$' + f for f in fields)}") from None
    return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": user}]


def _params(settings: JudgeSettings, schema: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"temperature": 0.0, "max_tokens": settings.max_tokens}
    if settings.json_schema:
        # sent as is (not the engine's `response_schema`): a reply that breaks the schema is
        # parsed as well as it can be and counted, not retried at temperature 0 for the same text
        params["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "judgment", "schema": schema, "strict": True}}
    return params


def _json_field(text: str, name: str) -> tuple[Any, str]:
    """A field of the reply's JSON object, also from a truncated object; and the reason."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            obj = json.loads(match.group(0))
            if isinstance(obj, dict):
                return obj.get(name), str(obj.get("reason", ""))
        except json.JSONDecodeError:
            pass
    value = re.search(rf'"{name}"\s*:\s*("([^"]*)"|-?\d+)', text)
    reason = re.search(r'"reason"\s*:\s*"((?:[^"\\]|\\.)*)', text)
    found = None if value is None else (value.group(2) if value.group(2) is not None
                                        else int(value.group(1)))
    return found, (reason.group(1) if reason else text.strip())


def parse_pairwise(text: str) -> tuple[int | None, str]:
    """The verdict from A's side (2 .. -2) and the judge's reason; None when there is no verdict."""
    value, reason = _json_field(text, "verdict")
    if isinstance(value, str):
        v = value.strip().upper().replace(" ", "")
        if v in VERDICTS:
            return VERDICTS[v], reason
        if v in _ALIASES:
            return _ALIASES[v], reason
    mark = re.findall(r"\[\[\s*(A>>B|A>B|A=B|B>A|B>>A|A|B|C)\s*\]\]", text)
    if mark:
        return (VERDICTS.get(mark[-1]) if mark[-1] in VERDICTS else _ALIASES[mark[-1]]), reason
    bare = re.findall(r"(?<![\w>=<])(A>>B|B>>A|A>B|B>A|A=B)(?![\w>=<])", text)
    if bare:
        return VERDICTS[bare[-1]], reason
    return None, reason


def parse_single(text: str) -> tuple[int | None, str]:
    """The 1-10 score and the reason; None when the reply holds no score in range."""
    value, reason = _json_field(text, "score")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        mark = re.findall(r"\[\[\s*(\d+)\s*\]\]", text) or re.findall(r"[Rr]ating:\s*(\d+)", text)
        value = int(mark[-1]) if mark else None
    return (value, reason) if value is not None and 1 <= value <= 10 else (None, reason)


def _done(path: Path, key: Any) -> set:
    seal_jsonl(path)
    if not path.exists():
        return set()
    return {key(row) for _, row in read_jsonl(path)}


def _append(f: Any, row: dict[str, Any]) -> None:
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()


async def judge_pairwise(questions: list[Question], model: str, answers: dict[str, list[str]],
                         baseline: str, baseline_answers: dict[str, list[str]], judge: Endpoint,
                         out_path: str | Path, *, settings: JudgeSettings | None = None,
                         cache: RequestCache | None = None, limits: Limits | None = None,
                         render: Render | None = None) -> dict[str, int]:
    """Judge every question answered by both sides, in both orders; append to `out_path`.

    `render(question, answer_a, answer_b)` builds the judge's messages; by default the pairwise
    text template with both answers in it (seed.evaluate.judge_images shows images instead).
    """
    settings = settings or JudgeSettings()
    prompts = load_prompts("pairwise", settings.prompts_dir)
    if render is None:
        def render(q: Question, a: list[str], b: list[str]) -> list[dict[str, Any]]:
            return _messages(prompts, q, answer_a=render_turns(a), answer_b=render_turns(b))
    out_path = Path(out_path)
    done = _done(out_path, lambda row: row["id"])
    todo = [q for q in questions
            if q.id not in done and q.id in answers and q.id in baseline_answers]
    params = _params(settings, PAIR_SCHEMA)
    judge_name = judge.teacher().model_requested or "judge"
    requests = []
    for q in todo:
        mine, theirs = answers[q.id], baseline_answers[q.id]
        requests.append(Request(f"{q.id}/model-first", render(q, mine, theirs), params,
                                payload=(q, 0)))
        requests.append(Request(f"{q.id}/model-second", render(q, theirs, mine), params,
                                payload=(q, 1)))
    halves: dict[str, dict[int, tuple[int | None, str]]] = defaultdict(dict)
    counts = {"written": 0, "unparseable": 0, "failed": 0}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("a", encoding="utf-8") as f:

        def on_result(r: Result) -> None:
            q, order = r.request.payload
            if not r.ok:
                counts["failed"] += 1  # not written: a rerun asks again
                return
            verdict, reason = parse_pairwise(r.completions[0].text)
            counts["unparseable"] += verdict is None
            halves[q.id][order] = (None if verdict is None else verdict * (1 - 2 * order), reason)
            if len(halves[q.id]) < 2:
                return
            pair = halves.pop(q.id)
            _append(f, {"id": q.id, "instruction": render_turns(q.turns), "category": q.category,
                        "model": model, "baseline": baseline,
                        "output": render_turns(answers[q.id]),
                        "baseline_output": render_turns(baseline_answers[q.id]),
                        "verdicts": [pair[0][0], pair[1][0]],
                        "reasons": [pair[0][1], pair[1][1]], "judge": judge_name})
            counts["written"] += 1

        stats = await run(requests, judge, limits or Limits(), cache=cache, on_result=on_result)
    return {"questions": len(questions), "already_done": len(done), **counts,
            "requests_paid": stats.paid, "requests_cached": stats.cached}


async def judge_single(questions: list[Question], answers_by_model: dict[str, dict[str, list[str]]],
                       judge: Endpoint, out_path: str | Path, *,
                       settings: JudgeSettings | None = None, cache: RequestCache | None = None,
                       limits: Limits | None = None) -> dict[str, int]:
    """Score every model's answer to every question on the 1-10 rubric; append to `out_path`."""
    settings = settings or JudgeSettings()
    prompts = load_prompts("single", settings.prompts_dir)
    out_path = Path(out_path)
    done = _done(out_path, lambda row: (row["model"], row["id"]))
    params = _params(settings, SINGLE_SCHEMA)
    judge_name = judge.teacher().model_requested or "judge"
    requests = [Request(f"{name}/{q.id}", _messages(prompts, q, answer=render_turns(ans[q.id])),
                        params, payload=(name, q))
                for name, ans in answers_by_model.items() for q in questions
                if q.id in ans and (name, q.id) not in done]
    counts = {"written": 0, "unparseable": 0, "failed": 0}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("a", encoding="utf-8") as f:

        def on_result(r: Result) -> None:
            name, q = r.request.payload
            if not r.ok:
                counts["failed"] += 1
                return
            score, reason = parse_single(r.completions[0].text)
            counts["unparseable"] += score is None
            _append(f, {"id": q.id, "instruction": render_turns(q.turns), "category": q.category,
                        "model": name, "output": render_turns(answers_by_model[name][q.id]),
                        "score": score, "reason": reason, "judge": judge_name})
            counts["written"] += 1

        stats = await run(requests, judge, limits or Limits(), cache=cache, on_result=on_result)
    return {"questions": len(questions), "already_done": len(done), **counts,
            "requests_paid": stats.paid, "requests_cached": stats.cached}
