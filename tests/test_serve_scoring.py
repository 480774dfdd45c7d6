"""Scoring a prompt: each prompt token's logprob given the ones before it, as the model computes it.

The engine keeps every prefilled position's logits for a sequence that asks (the Llama decode
forward, its chunked prefill included, and transformers' own forward), and they must equal the
in-process model's `log_softmax` to 1e-4. Through a real server, `/v1/completions` with `echo` and
`logprobs` returns them in the legacy shape lm-evaluation-harness reads (`max_tokens: 0` allowed
with `echo`), streamed or not; `/tokenize` and `/detokenize` agree with the tokenizer.
"""

from __future__ import annotations

import random
import threading

import httpx
import openai
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.models import tiny_model
from helpers.serve import running_server
from seed.serve.engine import Engine, Event, SamplingParams, Sequence

VOCAB = 400
COMMON = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 256, "initializer_range": 0.3}
RUNNERS = {  # (config, model, extra config, prefill budget: 16 makes the Llama runner chunk)
    "llama-chunked": ("LlamaConfig", "LlamaForCausalLM", {}, 16),
    "llama-whole": ("LlamaConfig", "LlamaForCausalLM", {}, 2048),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 64, "n_layer": 2, "n_head": 4,
                                              "n_positions": 256}, 2048),
}


class _Tokenizer:
    """What the engine asks of a tokenizer: decode (the text is not what these tests check)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(0x4E00 + i) for i in ids)


def _model(name: str) -> torch.nn.Module:
    config_cls, model_cls, extra, _ = RUNNERS[name]
    torch.manual_seed(0)
    cfg = getattr(transformers, config_cls)(**{**COMMON, **extra})
    return getattr(transformers, model_cls)(cfg).eval()


def _run(model: torch.nn.Module, budget: int,
         jobs: list[tuple[list[int], SamplingParams]]) -> list[list[Event]]:
    """Every job's events, all submitted at once to one engine."""
    events: list[list[Event]] = [[] for _ in jobs]
    done = [threading.Event() for _ in jobs]

    def sink(posts: list[tuple[Sequence, Event]]) -> None:
        for seq, ev in posts:
            events[seq.tag].append(ev)
            if ev.finish_reason:
                done[seq.tag].set()

    engine = Engine(model, _Tokenizer(), eos_ids={-1}, max_running=8, on_events=sink,
                    max_prefill_tokens=budget)
    engine.start()
    try:
        for tag, (prompt, params) in enumerate(jobs):
            engine.submit(prompt, [params], tag=tag)
        for d in done:
            assert d.wait(60)
    finally:
        engine.stop()
    return events


@pytest.mark.parametrize("name", list(RUNNERS))
def test_prompt_logprobs_are_the_models_log_softmax(name: str) -> None:
    """Two scored prompts of different lengths share prefill steps with a plain one; each prompt
    token after the first gets its logprob and top-3 alternatives, and max_tokens 0 ends the
    sequence after its prefill with no token sampled."""
    model = _model(name)
    rng = random.Random(5)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(n)] for n in (40, 9, 23)]
    jobs = [(prompts[0], SamplingParams(max_tokens=0, temperature=0, prompt_logprobs=3)),
            (prompts[1], SamplingParams(max_tokens=3, temperature=0, logprobs=True,
                                        prompt_logprobs=0)),
            (prompts[2], SamplingParams(max_tokens=3, temperature=0))]
    events = _run(model, RUNNERS[name][3], jobs)
    for prompt, evs, k in [(prompts[0], events[0], 3), (prompts[1], events[1], 0)]:
        first = evs[0]
        assert first.prompt_logprobs is not None and not first.token_ids
        with torch.inference_mode():
            want = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)
        got = first.prompt_logprobs
        assert [lp.token_id for lp in got] == prompt[1:]
        torch.testing.assert_close(torch.tensor([lp.logprob for lp in got]),
                                   want[torch.arange(len(prompt) - 1), prompt[1:]],
                                   rtol=1e-4, atol=1e-4)
        for i, lp in enumerate(got):
            assert len(lp.top) == k
            if k:
                vals, idx = want[i].topk(k)
                assert [t for t, _ in lp.top] == idx.tolist()
                torch.testing.assert_close(torch.tensor([v for _, v in lp.top]), vals,
                                           rtol=1e-4, atol=1e-4)
    assert [e.finish_reason for e in events[0]] == ["length"]
    assert sum(len(e.token_ids) for e in events[0]) == 0
    assert sum(len(e.token_ids) for e in events[1]) == 3 == sum(len(e.logprobs) for e in events[1])
    assert all(e.prompt_logprobs is None for e in events[1][1:] + events[2])


# -- through a real server -------------------------------------------------------------------------

KEY = "sk-test-scoring"
TEXT = "The quick brown fox jumps over the lazy dog."
CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 12 + 30? <|im_end|>"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("scoring") / "tiny")


@pytest.fixture(scope="module")
def url(model_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(KEY + "\n")
    with running_server(str(model_dir), "--keys-file", str(keys)) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def local(model_dir):
    """The served model and tokenizer, in this process."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return AutoModelForCausalLM.from_pretrained(str(model_dir)).eval(), tok


def _log_softmax(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_echo_with_logprobs_and_no_tokens_scores_the_prompt(client, local):
    """openai-python's completions.create(echo=True, logprobs=1, max_tokens=0): the prompt's
    tokens, the first with null logprob and alternatives, the rest the model's own logprobs."""
    model, tok = local
    ids = tok(TEXT)["input_ids"]
    r = client.completions.create(model="tiny", prompt=TEXT, echo=True, logprobs=1, max_tokens=0)
    [choice] = r.choices
    assert choice.text == TEXT and choice.finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 0)
    lp = choice.logprobs
    assert lp.tokens == [tok.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = _log_softmax(model, ids)
    torch.testing.assert_close(torch.tensor(lp.token_logprobs[1:]),
                               want[torch.arange(len(ids) - 1), ids[1:]], rtol=1e-4, atol=1e-4)
    for i, top in enumerate(lp.top_logprobs[1:]):
        best = int(want[i].argmax())
        assert list(top) == [tok.decode([best])]
        assert top[tok.decode([best])] == pytest.approx(float(want[i, best]), abs=1e-4)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(ids))]


def test_token_id_batches_score_as_lm_evaluation_harness_reads_them(url, local):
    """lm-evaluation-harness's loglikelihood request: token-id prompts in a batch, echo, logprobs 1,
    max_tokens 1, temperature 0; it sums token_logprobs[ctxlen:-1] and calls the continuation
    greedy when each equals the best of its top_logprobs. The last entry is the generated token
    (the end token included, when the model says it)."""
    model, tok = local
    prompts = [tok(TEXT)["input_ids"], tok("Seed builds a chat model")["input_ids"]]
    body = {"model": "tiny", "prompt": prompts, "echo": True, "logprobs": 1, "max_tokens": 1,
            "temperature": 0, "seed": 1234}
    r = httpx.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    for ids, choice in zip(prompts, choices, strict=True):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + 1
        assert choice["text"].startswith(tok.decode(ids))
        want = _log_softmax(model, ids)
        scored = [*ids[1:], int(want[-1].argmax())]  # the prompt, then the greedy token
        torch.testing.assert_close(torch.tensor(lp["token_logprobs"][1:]),
                                   want[torch.arange(len(ids)), scored], rtol=1e-4, atol=1e-4)
        greedy = [lp["token_logprobs"][i] == max(lp["top_logprobs"][i].values())
                  for i in range(1, len(ids) + 1)]
        assert greedy == [int(want[i].argmax()) == t for i, t in enumerate(ids[1:])] + [True]


def test_streamed_echo_carries_the_prompt_logprobs_first(client):
    plain = client.completions.create(model="tiny", prompt=TEXT, echo=True, logprobs=2,
                                      max_tokens=4, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=TEXT, echo=True, logprobs=2,
                                            max_tokens=4, temperature=0, stream=True))
    assert chunks[0].choices[0].text == TEXT
    assert chunks[0].choices[0].logprobs.token_logprobs[0] is None
    lp = plain.choices[0].logprobs
    got = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [t for g in got for t in g.tokens] == lp.tokens
    assert [t for g in got for t in g.token_logprobs] == lp.token_logprobs
    assert [o for g in got for o in g.text_offset] == lp.text_offset
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert lp.text_offset[-4] == len(TEXT)  # the completion's offsets go on after the echo


def test_max_tokens_0_needs_echo(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=TEXT, max_tokens=0)
    assert e.value.body["param"] == "max_tokens" and "echo" in e.value.message
    r = client.completions.create(model="tiny", prompt=[TEXT, "a b"], echo=True, max_tokens=0)
    assert [c.text for c in r.choices] == [TEXT, "a b"] and r.usage.completion_tokens == 0
    echo, end = client.completions.create(model="tiny", prompt=TEXT, echo=True, logprobs=1,
                                          max_tokens=0, stream=True)
    assert echo.choices[0].text == TEXT and echo.choices[0].logprobs.tokens[0] == "The"
    assert (end.choices[0].text, end.choices[0].finish_reason) == ("", "length")


def _post(url: str, path: str, body: dict, key: str | None = KEY) -> httpx.Response:
    return httpx.post(url + path, json=body,
                      headers={"Authorization": f"Bearer {key}"} if key else {})


def test_tokenize_and_detokenize_agree_with_the_tokenizer(url, local, client):
    _, tok = local
    r = _post(url, "/tokenize", {"model": "tiny", "prompt": TEXT, "return_token_strs": True})
    assert r.status_code == 200, r.text
    ids = tok(TEXT)["input_ids"]
    assert r.json() == {"count": len(ids), "max_model_len": 256, "tokens": ids,
                        "token_strs": tok.convert_ids_to_tokens(ids)}
    back = _post(url, "/detokenize", {"model": "tiny", "tokens": ids})
    assert back.json() == {"prompt": TEXT}
    chat = _post(url, "/tokenize", {"messages": CHAT}).json()
    want = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True,
                                   return_dict=False, sanitize_control_tokens=True)
    assert chat["tokens"] == list(want) and chat["token_strs"] is None
    # what the chat route feeds the model: a special token typed in a message stays text
    used = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
    assert chat["count"] == used.usage.prompt_tokens
    assert _post(url, "/detokenize", {"tokens": chat["tokens"]}).json()["prompt"] == \
        tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    bare = _post(url, "/tokenize", {"messages": CHAT, "add_generation_prompt": False}).json()
    assert bare["tokens"] == chat["tokens"][:bare["count"]] and bare["count"] < chat["count"]


def test_tokenizer_routes_refuse_what_they_cannot_do(url):
    assert _post(url, "/tokenize", {"prompt": TEXT}, key=None).status_code == 401
    cases = [("/tokenize", {"prompt": TEXT, "continue_final_message": True},
              "continue_final_message"),
             ("/tokenize", {"messages": [{"role": "wizard", "content": "hi"}]},
              "messages.0.role"),
             ("/tokenize", {"prompt": 5}, "prompt"),
             ("/detokenize", {"tokens": [1, 400]}, "tokens"),
             ("/detokenize", {"tokens": [-1]}, "tokens.0")]
    for path, body, param in cases:
        r = _post(url, path, body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert _post(url, "/tokenize", {"model": "other", "prompt": TEXT}).status_code == 404
