"""The judged evaluation of one student: answers, judgments, statistics, `judge_results.json`.

`run_judge(config, student_dir, out_dir)`: the student answers the questions in process (the same
`LocalModel` and chat template as `seed serve`), the baseline (by default the teacher) answers
through its endpoint and the engine, the judge grades (judge.py), and the statistics (stats.py)
land in `out_dir/judge_results.json`. Every step resumes: answers are saved once complete,
judgments are appended as they arrive, and all HTTP requests go through one SQLite cache
(`out_dir/cache.sqlite`), so a rerun pays for nothing it already has.

Multi-turn questions are answered turn by turn, each turn seeing the earlier answers. This module
does not render the report (judge_report.py does).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np

from seed.endpoints.base import Endpoint
from seed.endpoints.factory import make_endpoint
from seed.errors import UserError
from seed.evaluate.annotations import load_annotations
from seed.evaluate.judge import JudgeSettings, judge_pairwise, judge_single
from seed.evaluate.questions import Question, load_questions
from seed.evaluate.stats import bootstrap_ci, summarize
from seed.files import load_jsonl, write_json_atomic
from seed.generate.cache import RequestCache
from seed.generate.engine import Limits, Request, Result, run
from seed.recipe import (
    AnthropicEndpointConfig,
    EndpointConfig,
    JudgeConfig,
    LocalEndpointConfig,
    OpenAIEndpointConfig,
    TasksEndpointConfig,
)

RESULTS, JUDGMENTS, GRADES, ANSWERS, CACHE = (
    "judge_results.json", "judgments.jsonl", "grades.jsonl", "answers.json", "cache.sqlite")


def answerer(cfg: EndpointConfig, what: str, limits: Limits) -> Endpoint:
    """The endpoint that answers or judges open questions; `what` names its recipe section."""
    if isinstance(cfg, TasksEndpointConfig):
        raise UserError(f"{what}: kind = \"tasks\" cannot judge or answer open questions; use "
                        "openai or local")
    return make_endpoint(cfg, what, timeout=limits.timeout,
                         max_connections=limits.concurrency * 2)


def endpoint_name(cfg: EndpointConfig) -> str:
    """How results name an endpoint: the model asked for, or the model directory's name."""
    if isinstance(cfg, OpenAIEndpointConfig | AnthropicEndpointConfig):
        return cfg.model
    if isinstance(cfg, LocalEndpointConfig):
        return Path(cfg.path).name
    return cfg.kind


def _identity(cfg: EndpointConfig, max_tokens: int) -> str:
    """What decides an endpoint's answers, so saved answers of a retrained model are not reused."""
    if isinstance(cfg, OpenAIEndpointConfig | AnthropicEndpointConfig):
        return f"{cfg.base_url} {cfg.model} {max_tokens}"
    if isinstance(cfg, TasksEndpointConfig):
        return "ground truth"
    root = Path(cfg.path)
    weights = [(p.name, p.stat().st_mtime_ns, p.stat().st_size)
               for p in sorted(root.glob("*.safetensors"))]
    return f"{root.resolve()} {weights} {max_tokens}"


def _drop_stale_judgments(out_dir: Path, identities: list[str], cfg: JudgeConfig) -> None:
    """Judgments of another student, baseline, judge or prompt are not resumed: start afresh.

    The request cache stays, so whatever is asked again the same way is still free.
    """
    stamp = {"answerers_and_judge": identities, "mode": cfg.mode, "prompts_dir": cfg.prompts_dir,
             "json_schema": cfg.json_schema, "max_tokens": cfg.max_tokens}
    path = out_dir / "inputs.json"
    if path.exists() and json.loads(path.read_text()) != stamp:
        for name in (JUDGMENTS, GRADES):
            (out_dir / name).unlink(missing_ok=True)
    write_json_atomic(path, stamp)


def limits_of(cfg: JudgeConfig) -> Limits:
    return Limits(concurrency=cfg.concurrency, requests_per_minute=cfg.requests_per_minute,
                  max_attempts=cfg.max_attempts, timeout=cfg.timeout)


async def answer_questions(questions: list[Question], endpoint: Endpoint, max_tokens: int,
                           cache: RequestCache | None = None,
                           limits: Limits | None = None) -> dict[str, list[str]]:
    """Each question's answers, turn by turn (greedy); a question whose request failed is left out.

    A local model answers each turn's conversations in batches; an HTTP endpoint through the engine.
    """
    chats: dict[str, list[dict[str, str]]] = {q.id: [] for q in questions}
    failed: set[str] = set()
    for turn in range(max((len(q.turns) for q in questions), default=0)):
        due = [q for q in questions if turn < len(q.turns) and q.id not in failed]
        for q in due:
            chats[q.id].append({"role": "user", "content": q.turns[turn]})
        texts = endpoint.answer_batch([chats[q.id] for q in due], max_tokens)
        if texts is not None:
            replies = dict(zip([q.id for q in due], texts, strict=True))
        else:
            replies = {}

            def keep(r: Result, replies: dict[str, str] = replies) -> None:
                if r.ok:
                    replies[r.request.key] = r.completions[0].text

            params = {"temperature": 0.0, "max_tokens": max_tokens}
            await run([Request(q.id, list(chats[q.id]), params) for q in due], endpoint,
                      limits or Limits(), cache=cache, on_result=keep)
        for q in due:
            if q.id in replies:
                chats[q.id].append({"role": "assistant", "content": replies[q.id]})
            else:
                failed.add(q.id)
    return {qid: [m["content"] for m in chat if m["role"] == "assistant"]
            for qid, chat in chats.items() if qid not in failed}


def self_preference(judge: EndpointConfig, baseline: EndpointConfig) -> bool:
    """Whether the judge is the baseline's own model (it may prefer its own style)."""
    match judge, baseline:
        case (OpenAIEndpointConfig() | AnthropicEndpointConfig(),
              OpenAIEndpointConfig() | AnthropicEndpointConfig()):
            return judge.model.lower() == baseline.model.lower()
        case LocalEndpointConfig(), LocalEndpointConfig():
            return judge.path == baseline.path
    return False


def _scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean 1-10 score per model, with a bootstrap interval, overall and per category."""
    out: dict[str, Any] = {}
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model and r["score"] is not None]
        values = np.array([r["score"] for r in mine], dtype=float)
        low, high = bootstrap_ci(values, scale=1.0)
        cats: dict[str, list[float]] = {}
        for r in mine:
            cats.setdefault(r["category"] or "all", []).append(r["score"])
        out[model] = {"n": len(mine), "mean": float(values.mean()) if len(values) else None,
                      "ci_low": low, "ci_high": high,
                      "unparseable": sum(r["model"] == model and r["score"] is None for r in rows),
                      "categories": {c: float(np.mean(v)) for c, v in sorted(cats.items())}}
    return out


def summarize_judgments(out_dir: str | Path, mode: str) -> dict[str, Any]:
    """The statistics of what is on disk in `out_dir` (judgments or grades)."""
    out_dir = Path(out_dir)
    if mode == "pairwise":
        [row] = summarize([load_annotations(out_dir / JUDGMENTS)])
        return row
    return {"scores": _scores(load_jsonl(out_dir / GRADES))}


def run_judge(cfg: JudgeConfig, student_dir: str | Path, out_dir: str | Path,
              questions_path: str | Path | None = None,
              teacher: EndpointConfig | None = None) -> dict[str, Any]:
    """Answer, judge and summarize; write and return `judge_results.json`'s content."""
    out_dir = Path(out_dir)
    path = cfg.questions or questions_path
    if path is None:
        raise UserError("eval.judge.questions is not set and there are no held-out prompts; "
                        "give a questions file")
    questions = load_questions(path, cfg.references, cfg.max_questions)
    baseline_cfg = cfg.baseline or teacher
    if baseline_cfg is None:
        raise UserError("eval.judge.baseline is not set and there is no teacher; name a baseline")
    # The baseline's settings come from the teacher's section when it has none of its own.
    baseline_where = "eval.judge.baseline" if cfg.baseline else "generate.teacher"
    limits = limits_of(cfg)
    settings = JudgeSettings(cfg.json_schema, cfg.max_tokens, cfg.prompts_dir)
    student_cfg = LocalEndpointConfig(path=str(student_dir))
    student_name, baseline_name = "student", endpoint_name(baseline_cfg)
    judge = answerer(cfg.endpoint, "eval.judge.endpoint", limits)
    opened: list[Endpoint] = [judge]
    cache = RequestCache(out_dir / CACHE)

    async def main() -> dict[str, Any]:
        answers_path = out_dir / ANSWERS
        saved = json.loads(answers_path.read_text()) if answers_path.exists() else {}
        answers: dict[str, dict[str, list[str]]] = {}
        for name, ecfg, what in ((student_name, student_cfg, "the student"),
                                 (baseline_name, baseline_cfg, baseline_where)):
            key = f"{name} {_identity(ecfg, cfg.answer_max_tokens)}"
            if isinstance(ecfg, TasksEndpointConfig):  # its answer is the ground truth
                saved[key] = {q.id: q.reference for q in questions if q.reference}
            if key not in saved:  # models load only when their answers are not on disk yet
                opened.append(answerer(ecfg, what, limits))
                saved[key] = await answer_questions(questions, opened[-1],
                                                    cfg.answer_max_tokens, cache, limits)
                write_json_atomic(answers_path, saved)
            answers[name] = saved[key]
        _drop_stale_judgments(out_dir, [_identity(c, cfg.answer_max_tokens) for c in
                                        (student_cfg, baseline_cfg, cfg.endpoint)], cfg)
        if cfg.mode == "pairwise":
            return await judge_pairwise(questions, student_name, answers[student_name],
                                        baseline_name, answers[baseline_name], judge,
                                        out_dir / JUDGMENTS, settings=settings, cache=cache,
                                        limits=limits)
        return await judge_single(questions, answers, judge, out_dir / GRADES, settings=settings,
                                  cache=cache, limits=limits)

    async def guarded() -> dict[str, Any]:
        try:
            return await main()
        finally:
            for endpoint in opened:
                await endpoint.aclose()

    try:
        counts = asyncio.run(guarded())
    finally:
        cache.close()
    results = {
        "mode": cfg.mode, "student": student_name, "baseline": baseline_name,
        "judge": endpoint_name(cfg.endpoint), "requests": counts,
        "self_preference": self_preference(cfg.endpoint, baseline_cfg),
        "stats": summarize_judgments(out_dir, cfg.mode),
    }
    write_json_atomic(out_dir / RESULTS, results)
    return results
