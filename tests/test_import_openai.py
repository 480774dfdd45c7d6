"""Leaving OpenAI: its fine-tuning and preference JSONL and its stored completions become records
that keep tools, tool calls and weights, that `seed check` judges as OpenAI output, and that train
as OpenAI trains them (a `weight: 0` turn out of the loss, tool calls in the format `seed serve`
parses back).

Every file here is written by the test in OpenAI's documented shapes; masks are checked token by
token by decoding each run of trained tokens, as tests/test_reasoning_train.py does for traces.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from helpers.cli import assert_one_line_error, cli_env, run_cli
from helpers.thread_server import app_in_thread
from seed.errors import UserError
from seed.policy.gate import Use, check_file
from seed.policy.importers import import_dataset
from seed.policy.openai_export import main as export_main
from seed.policy.openai_files import ft_item
from seed.recipe import TrainConfig
from seed.records import Record, read_records
from seed.serve.tools import HERMES, ToolCallStream, assemble, detect_format
from seed.train.data import Example, assistant_mask, corpus_texts
from seed.train.dpo import render_pairs
from seed.train.layout import ModeInputs
from seed.train.tokenizer import CHAT_TEMPLATE

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}

# A chat fine-tuning item with everything the format holds: a system prompt, tools, an assistant
# turn that only calls a tool (content null, as OpenAI writes it), the tool's answer, a weight-0
# turn (kept as context, not trained), and a final answer.
TOOL_ITEM: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You are a weather assistant."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "18C, sunny"},
        {"role": "assistant", "content": "Fine: 18C.", "weight": 0},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "Glad to help.", "weight": 1},
    ],
    "tools": [WEATHER],
    "parallel_tool_calls": False,
}
PLAIN_ITEM: dict[str, Any] = {"messages": [
    {"role": "user", "content": "Name a primary colour.", "name": "ana"},
    {"role": "assistant", "content": "Red."}]}
PREFERENCE_ITEM: dict[str, Any] = {
    "input": {"messages": [{"role": "user", "content": "Say hello politely."}]},
    "preferred_output": [{"role": "assistant", "content": "Hello, nice to meet you."}],
    "non_preferred_output": [{"role": "assistant", "content": "yo"}]}


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def seed_cli(*args: str | Path):
    return run_cli(*args, env=cli_env(COLUMNS="200"))


def trained_runs(tok: Any, ex: Example) -> list[str]:
    """The text of each run of trained tokens."""
    runs, start = [], None
    for t, m in enumerate([*ex.mask, 0]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            runs.append(tok.decode(ex.ids[start:t]))
            start = None
    return runs


# -- records ------------------------------------------------------------------------------------

def test_a_record_without_the_new_fields_is_the_same_line_and_id_as_before() -> None:
    line = ('{"id": "x", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", '
            '"content": "4", "reasoning_content": "2 and 2"}], "provenance": {"purpose": '
            '"train"}, "meta": {"k": 1}}\n')
    assert Record.model_validate_json(line).to_line() == line
    turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    blob = json.dumps(turns, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert Record.new(turns).id == hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_tools_and_calls_change_the_id_but_a_weight_does_not() -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    base = Record.new(turns).id
    assert Record.new(turns, tools=[WEATHER]).id != base
    assert Record.new([turns[0], {**turns[1], "weight": 0}]).id == base


# -- fine-tuning files ----------------------------------------------------------------------------

def test_fine_tuning_file_round_trips_and_checks_as_openai_output(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "ft.jsonl", [TOOL_ITEM, PLAIN_ITEM])
    out = tmp_path / "records.jsonl"
    proc = seed_cli("import", src, "--format", "openai-ft", "--out", out,
                    "--teacher", "direct:gpt-4o", "--license", "MIT")
    assert proc.returncode == 0, proc.stderr
    assert "2 records (gpt-4o; license MIT)" in proc.stdout
    records = list(read_records(out))
    calls = records[0].messages[2]
    assert calls.content == "" and calls.tool_calls is not None
    assert calls.tool_calls[0].function.arguments == "{\"city\":\"Paris\"}"
    assert records[0].messages[3].tool_call_id == "call_abc"
    assert [m.weight for m in records[0].messages] == [None, None, None, None, 0, None, 1]
    assert records[0].tools == [WEATHER]
    assert records[1].messages[0].name == "ana" and records[1].tools is None
    # back out: the records give the fine-tuning items they came from
    assert [ft_item(r) for r in records] == [TOOL_ITEM, PLAIN_ITEM]

    proc = seed_cli("check", out, "--json")
    assert proc.returncode == 1, proc.stdout  # a distributed chat student: blocked
    [finding] = json.loads(proc.stdout)["findings"]
    assert finding["teacher"] == "direct:gpt-4o" and finding["records"] == 2
    assert finding["entry"] == "openai-api" and finding["verdict"] == "block"
    assert any("compete" in r for r in finding["reasons"])  # OpenAI's clause, quoted
    internal = check_file(out, Use(distribute=False))
    assert internal.verdict == "warn"


def test_fine_tuning_file_without_teacher_is_unknown_to_the_gate(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    import_dataset(write_jsonl(tmp_path / "ft.jsonl", [PLAIN_ITEM]), "openai-ft", out)
    [finding] = check_file(out, Use()).findings
    assert finding.teacher == "(no provenance)" and finding.entry == "unknown"
    assert finding.verdict == "warn"


def test_legacy_functions_become_tools_and_tool_calls(tmp_path: Path) -> None:
    legacy = {"messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "function_call": {"name": "get_weather",
                                                "arguments": "{\"city\": \"Oslo\"}"}},
        {"role": "function", "name": "get_weather", "content": "-3C"},
        {"role": "assistant", "content": "It is -3C."}],
        "functions": [WEATHER["function"]]}
    out = tmp_path / "records.jsonl"
    import_dataset(write_jsonl(tmp_path / "ft.jsonl", [legacy]), "openai-ft", out)
    [r] = read_records(out)
    assert r.tools == [WEATHER]
    assert r.messages[1].tool_calls is not None
    assert r.messages[1].tool_calls[0].model_dump() == {
        "id": "call_0", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}
    assert (r.messages[2].role, r.messages[2].tool_call_id, r.messages[2].content) == (
        "tool", "call_0", "-3C")


@pytest.mark.parametrize(("bad", "needles"), [
    ({"role": "assistant", "content": "x", "weight": 2}, ["line 2", "messages[1].weight"]),
    ({"role": "user", "content": "x", "weight": 0}, ["line 2", "messages[1]",
                                                     "only assistant turns are weighted"]),
    ({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
     ["line 2", "messages[1].content[0]", "'image_url' part"]),
    ({"role": "assistant", "content": "x", "audio": {"id": "a"}},
     ["line 2", "messages[1].audio"]),
    ({"role": "function", "name": "get_weather", "content": "1C"},
     ["line 2", "messages[1]", "no earlier function_call"]),
])
def test_a_malformed_line_names_the_line_and_the_field(tmp_path: Path, bad: dict[str, Any],
                                                       needles: list[str]) -> None:
    item = {"messages": [{"role": "user", "content": "hi"}, bad]}
    src = write_jsonl(tmp_path / "ft.jsonl", [PLAIN_ITEM, item])
    out = tmp_path / "records.jsonl"
    with pytest.raises(UserError) as e:
        import_dataset(src, "openai-ft", out)
    for needle in needles:
        assert needle in str(e.value), str(e.value)
    assert not out.exists()  # nothing half-written


def test_a_malformed_line_is_one_error_line_from_the_cli(tmp_path: Path) -> None:
    item = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "x", "weight": True}]}
    src = write_jsonl(tmp_path / "ft.jsonl", [PLAIN_ITEM, PLAIN_ITEM, item])
    proc = seed_cli("import", src, "--format", "openai-ft", "--out", tmp_path / "r.jsonl")
    assert_one_line_error(proc, "line 3", "messages[1].weight", "use 0 or 1")


def test_preference_file_gives_the_pairs_dpo_trains_on(tmp_path: Path, tiny_tokenizer) -> None:
    out = tmp_path / "pairs.jsonl"
    import_dataset(write_jsonl(tmp_path / "prefs.jsonl", [PREFERENCE_ITEM]), "openai-ft", out)
    [r] = read_records(out)
    assert r.meta["chosen"] == "Hello, nice to meet you." and r.meta["rejected"] == "yo"
    assert ft_item(r) == PREFERENCE_ITEM
    [pair] = render_pairs(tiny_tokenizer, [r])
    assert trained_runs(tiny_tokenizer, pair.chosen) == ["Hello, nice to meet you.<|end|>"]
    assert trained_runs(tiny_tokenizer, pair.rejected) == ["yo<|end|>"]


def test_dpo_refuses_a_pair_that_offers_tools(tmp_path: Path, tiny_tokenizer) -> None:
    item = {**PREFERENCE_ITEM, "input": {**PREFERENCE_ITEM["input"], "tools": [WEATHER]}}
    out = tmp_path / "pairs.jsonl"
    import_dataset(write_jsonl(tmp_path / "prefs.jsonl", [item]), "openai-ft", out)
    with pytest.raises(UserError, match="mode = 'dpo' trains text answers without tools"):
        render_pairs(tiny_tokenizer, list(read_records(out)))


def test_grpo_refuses_a_prompt_that_offers_tools() -> None:
    from seed.train.grpo import prompt_messages

    record = Record.new([{"role": "user", "content": "Weather?"}], tools=[WEATHER])
    with pytest.raises(UserError, match="mode = 'grpo' samples text answers without tools"):
        prompt_messages(record, "r.jsonl record 1")


def test_an_array_file_names_the_item(tmp_path: Path) -> None:
    bad = {"messages": [{"role": "user", "content": "hi"}], "tool": []}
    src = tmp_path / "ft.json"
    src.write_text(json.dumps([PLAIN_ITEM, bad]))
    with pytest.raises(UserError, match=r"ft.json: item 2, tool: is not a key of OpenAI's chat"):
        import_dataset(src, "openai-ft", tmp_path / "r.jsonl")


def test_a_preference_answer_that_calls_tools_is_refused_at_import(tmp_path: Path) -> None:
    item = {**PREFERENCE_ITEM, "preferred_output": [TOOL_ITEM["messages"][2]]}
    with pytest.raises(UserError, match=r"line 1, preferred_output\[0\].tool_calls"):
        import_dataset(write_jsonl(tmp_path / "prefs.jsonl", [item]), "openai-ft",
                       tmp_path / "pairs.jsonl")


# -- training -------------------------------------------------------------------------------------

def test_a_weight_0_turn_is_context_not_loss_and_tool_calls_are_trained(tmp_path: Path,
                                                                         tiny_tokenizer) -> None:
    out = tmp_path / "records.jsonl"
    import_dataset(write_jsonl(tmp_path / "ft.jsonl", [TOOL_ITEM]), "openai-ft", out)
    records = list(read_records(out))
    inputs = ModeInputs(records=records, source=str(out), tokenizer=tiny_tokenizer,
                        model=None, config=TrainConfig(), seed=0,  # type: ignore[arg-type]
                        runtime=None)  # type: ignore[arg-type]
    [ex] = inputs.examples()  # what `seed train` renders for sft, kd and online_kd
    call = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            "</tool_call><|end|>")
    assert trained_runs(tiny_tokenizer, ex) == [call, "Glad to help.<|end|>"]
    text = tiny_tokenizer.decode(ex.ids)
    assert text.startswith("<|system|>You are a weather assistant.\n\nYou can call these "
                           "functions.")
    assert json.dumps(WEATHER) in text  # the tools are in the prompt, untrained
    assert "<|assistant|>Fine: 18C.<|end|>" in text  # the weight-0 turn stays as context
    # the same chat without the weight trains that turn as well
    unweighted = assistant_mask(tiny_tokenizer, records[0].chat(), tools=records[0].tools)
    assert trained_runs(tiny_tokenizer, unweighted) == [call, "Fine: 18C.<|end|>",
                                                        "Glad to help.<|end|>"]


def test_what_a_student_learns_to_write_is_what_seed_serve_parses(tiny_tokenizer) -> None:
    assert detect_format(CHAT_TEMPLATE) is HERMES  # `seed serve --tool-parser auto`
    chat = [{"role": "user", "content": "Paris and Köln?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "a", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "b", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Köln\"}"}}]}]
    [run] = trained_runs(tiny_tokenizer, assistant_mask(tiny_tokenizer, chat, tools=[WEATHER]))
    stream = ToolCallStream(HERMES)
    reply = assemble(stream.feed(run.removesuffix("<|end|>")) + stream.finish())
    assert reply.content == "Checking."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in reply.tool_calls] == [("get_weather", {"city": "Paris"}),
                                           ("get_weather", {"city": "Köln"})]


def test_a_new_students_tokenizer_is_fitted_on_the_calls_and_tools_too() -> None:
    turns = [{**m, "content": m["content"] or ""} for m in TOOL_ITEM["messages"][:4]]
    record = Record.new(turns, tools=[WEATHER])
    assert list(corpus_texts(record.chat(), record.tools)) == [
        "You are a weather assistant.", "Weather in Paris?",
        '{"name": "get_weather", "arguments": {"city": "Paris"}}', "18C, sunny",
        json.dumps(WEATHER)]
    plain = [{"role": "user", "content": "q"},
             {"role": "assistant", "content": "a", "reasoning_content": "t"}]
    assert list(corpus_texts(plain)) == ["q", "a", "t"]  # contents and traces, as before


def test_chats_without_tools_render_as_before(tiny_tokenizer) -> None:
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a", "reasoning_content": "r"}]
    assert tiny_tokenizer.apply_chat_template(chat, tokenize=False) == (
        "<|system|>S<|end|><|user|>u<|end|><|assistant|><think>\nr\n</think>\n\na<|end|>")


# -- stored completions ---------------------------------------------------------------------------

def completion(cid: str, model: str, created: int, question: str, answer: str,
               **extra: Any) -> dict[str, Any]:
    """A stored chat completion as GET /v1/chat/completions/{id} returns it, with its messages
    as GET /v1/chat/completions/{id}/messages returns them."""
    return {
        "object": "chat.completion", "id": cid, "model": model, "created": created,
        "request_id": "req_1", "tool_choice": None, "seed": 7, "top_p": 1.0,
        "temperature": 0.7, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "system_fingerprint": "fp_123", "input_user": None, "service_tier": "default",
        "tools": None, "metadata": {"project": "support"}, "response_format": None,
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
            "role": "assistant", "content": answer, "refusal": None, "annotations": [],
            "audio": None, "function_call": None, "tool_calls": None}}],
        "messages": {"object": "list", "has_more": False, "first_id": f"{cid}-0",
                     "last_id": f"{cid}-0", "data": [
                         {"id": f"{cid}-0", "role": "user", "content": question,
                          "name": None, "content_parts": None}]},
        **extra}


def test_stored_completions_carry_each_model_as_teacher(tmp_path: Path) -> None:
    tuned = "ft:gpt-4o-mini-2024-07-18:acme::9xYz"
    page = {"object": "list", "has_more": False, "data": [
        completion("chatcmpl-2", tuned, 1738960620, "Hi?", "Hello!")]}
    src = write_jsonl(tmp_path / "stored.jsonl", [
        completion("chatcmpl-1", "gpt-4o-2024-08-06", 1738960610, "2+2?", "4"), page])
    out = tmp_path / "records.jsonl"
    proc = seed_cli("import", src, "--format", "openai-stored", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert f"2 records (gpt-4o-2024-08-06, {tuned};" in proc.stdout
    first, second = read_records(out)
    assert [m.chat() for m in first.messages] == [{"role": "user", "content": "2+2?"},
                                                  {"role": "assistant", "content": "4"}]
    t = first.provenance.teacher
    assert t is not None
    assert (t.route, t.host, t.model_returned) == ("direct", "api.openai.com",
                                                   "gpt-4o-2024-08-06")
    assert t.requested_at == "2025-02-07T20:36:50+00:00"
    assert t.params == {"temperature": 0.7, "top_p": 1.0, "seed": 7, "presence_penalty": 0.0,
                        "frequency_penalty": 0.0, "service_tier": "default"}
    assert first.meta == {"import_index": 1, "openai_id": "chatcmpl-1", "choice": 0,
                          "finish_reason": "stop", "metadata": {"project": "support"}}
    assert second.provenance.teacher is not None
    assert second.provenance.teacher.model_returned == tuned

    result = check_file(out, Use())
    assert [(f.teacher, f.entry, f.verdict) for f in result.findings] == [
        ("direct:gpt-4o-2024-08-06 @ api.openai.com", "openai-api", "block"),
        (f"direct:{tuned} @ api.openai.com", "openai-api", "block")]


def test_stored_completions_keep_tools_and_calls(tmp_path: Path) -> None:
    c = completion("chatcmpl-3", "gpt-4o", 1738960610, "Weather in Paris?", "", tools=[WEATHER])
    c["choices"][0]["message"]["tool_calls"] = TOOL_ITEM["messages"][2]["tool_calls"]
    c["choices"][0]["finish_reason"] = "tool_calls"
    c["choices"][0]["message"]["annotations"] = [  # citations: left out, not an error
        {"type": "url_citation", "url_citation": {"url": "https://example.org"}}]
    out = tmp_path / "records.jsonl"
    import_dataset(write_jsonl(tmp_path / "stored.jsonl", [c]), "openai-stored", out)
    [r] = read_records(out)
    assert r.tools == [WEATHER] and r.meta["finish_reason"] == "tool_calls"
    assert ft_item(r)["messages"][1] == TOOL_ITEM["messages"][2]


@pytest.mark.parametrize(("change", "needle"), [
    ({"messages": None}, "line 1, messages: missing"),
    ({"model": None}, "line 1, model: missing"),
    ({"created": "yesterday"}, "line 1, created"),
    ({"messages": {"object": "list", "has_more": True, "data": []}}, "messages.has_more"),
])
def test_a_stored_completion_without_what_provenance_needs_is_refused(
        tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    c = {**completion("chatcmpl-4", "gpt-4o", 1738960610, "q", "a"), **change}
    with pytest.raises(UserError, match=needle.replace("[", r"\[")):
        import_dataset(write_jsonl(tmp_path / "s.jsonl", [c]), "openai-stored",
                       tmp_path / "r.jsonl")


def test_stored_completions_refuse_a_declared_teacher(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "s.jsonl", [completion("c", "gpt-4o", 1738960610, "q", "a")])
    with pytest.raises(UserError, match="--teacher: a stored-completions file names each"):
        import_dataset(src, "openai-stored", tmp_path / "r.jsonl", teacher="direct:gpt-4o")


@pytest.mark.slow
def test_seed_serve_takes_tools_for_a_student_with_seeds_template(tmp_path: Path) -> None:
    """A student with Seed's tokenizer is served with tools (the template renders them, the
    Hermes format is detected): a forced call comes back as OpenAI's tool_calls."""
    import httpx

    from helpers.models import tiny_model
    from helpers.serve import running_server

    clock = {"type": "function", "function": {"name": "get_time"}}  # no parameters: `{}`
    model = tiny_model(tmp_path / "student", tokenizer="chars", context=1024)
    with running_server(str(model)) as url:
        r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "student", "messages": [{"role": "user", "content": "What time is it?"}],
            "tools": [WEATHER, clock], "tool_choice": {"type": "function",
                                                      "function": {"name": "get_time"}},
            "parallel_tool_calls": False, "max_tokens": 100, "temperature": 0})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert (call["function"]["name"], call["function"]["arguments"]) == ("get_time", "{}")
    assert choice["finish_reason"] == "tool_calls"


# -- exporting stored completions ---------------------------------------------------------------

KEY = "sk-test-export-5f3a9c1e"


def stored_api(completions: list[dict[str, Any]], page: int) -> FastAPI:
    """OpenAI's list endpoints for stored completions, `page` items a page at most, behind a
    bearer key; each completion's `messages` (a list) is served from /messages, not with it."""
    app = FastAPI()
    app.state.calls = 0

    def listed(items: list[dict[str, Any]], request: Request) -> Any:
        app.state.calls += 1
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "Incorrect API key provided: "
                                           f"{request.headers.get('authorization')}"}}, 401)
        after = request.query_params.get("after")
        start = next(i + 1 for i, c in enumerate(items) if c["id"] == after) if after else 0
        limit = min(int(request.query_params.get("limit", 20)), page)
        data = items[start:start + limit]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": start + limit < len(items)}

    @app.get("/v1/chat/completions")
    def list_completions(request: Request) -> Any:
        model = request.query_params.get("model")
        project = request.query_params.get("metadata[project]")
        chosen = [{k: v for k, v in c.items() if k != "messages"} for c in completions
                  if (model is None or c["model"] == model)
                  and (project is None or c["metadata"].get("project") == project)]
        return listed(chosen, request)

    @app.get("/v1/chat/completions/{cid}/messages")
    def list_messages(cid: str, request: Request) -> Any:
        [c] = [c for c in completions if c["id"] == cid]
        return listed(c["messages"], request)

    return app


def test_exported_stored_completions_import_with_every_page(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    served = [completion(f"chatcmpl-{k}", "gpt-4o-mini" if k % 2 else "gpt-4o", 1738960610 + k,
                         f"question {k}", f"answer {k}") for k in range(5)]
    for c in served:
        c["messages"] = c["messages"]["data"]
    served[0]["messages"] = [{"id": "m-0", "role": "system", "content": "Be brief."},
                             *served[0]["messages"]]
    out = tmp_path / "stored.jsonl"
    monkeypatch.setenv("OPENAI_KEY_FOR_TEST", KEY)
    with app_in_thread(stored_api(served, page=1)) as url:  # a page per item: all paged
        assert export_main(["--out", str(out), "--base-url", url, "--model", "gpt-4o",
                     "--api-key-env", "OPENAI_KEY_FOR_TEST"]) == 0
        monkeypatch.setenv("OPENAI_KEY_FOR_TEST", "sk-wrong")
        assert export_main(["--out", str(tmp_path / "none.jsonl"), "--base-url", url,
                     "--api-key-env", "OPENAI_KEY_FOR_TEST"]) == 2
    assert not (tmp_path / "none.jsonl").exists()
    said = capsys.readouterr().err
    assert "HTTP 401" in said and "sk-wrong" not in said  # the key the server quoted, redacted
    records = tmp_path / "records.jsonl"
    info = import_dataset(out, "openai-stored", records)
    assert info["records"] == 3 and info["teachers"] == ["gpt-4o"]
    got = [[m.chat() for m in r.messages] for r in read_records(records)]
    assert got[0] == [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "question 0"},
                      {"role": "assistant", "content": "answer 0"}]
    assert [g[-1]["content"] for g in got] == ["answer 0", "answer 2", "answer 4"]
    for written in (out, records):  # the key is sent, never written
        assert KEY not in written.read_text()
