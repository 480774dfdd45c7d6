"""vLLM's and OpenAI's sampling fields change what a real `seed serve` says, as each is defined.

`logit_bias` +100 forces a token and -100 forbids one; `top_k=1` and `min_p=1` at temperature 1
leave only the most likely token, so they give the greedy reply; `repetition_penalty` gives what
transformers' own `generate(repetition_penalty=...)` gives (over prompt and output tokens), which
stops a random model's greedy repeats. Bad values are a 400 naming the field.
"""

from __future__ import annotations

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = [{"role": "user", "content": "Hello! How can I help you today?"}]


@pytest.fixture(scope="module")
def model_dir(tiny_chat_model):
    return tiny_chat_model


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def tok(model_dir):
    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def model(model_dir):
    """The served model, in this process."""
    return AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()


VLLM_FIELDS = {"top_k", "min_p", "repetition_penalty"}  # not in openai-python's signature


def chat(client, **kw) -> str:
    kw.setdefault("max_tokens", 12)
    extra = {k: kw.pop(k) for k in VLLM_FIELDS & set(kw)}
    r = client.chat.completions.create(model="tiny", messages=PROMPT, extra_body=extra, **kw)
    return r.choices[0].message.content


def test_logit_bias_forces_and_forbids_tokens(client, tok, model):
    fox = tok("fox")["input_ids"][-1]
    for temperature in (0, 1.0):
        forced = chat(client, temperature=temperature, seed=3, max_tokens=6,
                      logit_bias={str(fox): 100})
        assert forced == tok.decode([fox] * 6)
    ids = tok("The quick brown")["input_ids"]
    with torch.inference_mode():
        want = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
    best, second = want.topk(2).indices.tolist()
    banned = client.completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0,
                                       logprobs=0, logit_bias={str(best): -100})
    # the reported logprob is the model's own (before the bias), of the runner-up it picked
    assert banned.choices[0].logprobs.token_logprobs[0] == pytest.approx(float(want[second]),
                                                                         abs=1e-4)


def test_top_k_1_and_min_p_1_sample_the_greedy_reply(client):
    greedy = chat(client, temperature=0)
    sampled = [chat(client, temperature=1.0, seed=s) for s in (1, 2)]
    assert greedy not in sampled  # temperature 1 alone does sample
    for s in (1, 2):
        assert chat(client, temperature=1.0, seed=s, top_k=1) == greedy
        assert chat(client, temperature=1.0, seed=s, min_p=1.0) == greedy
    # off, as vLLM means it: the plain sample
    assert [chat(client, temperature=1.0, seed=s, top_k=-1, min_p=0) for s in (1, 2)] == sampled


def test_repetition_penalty_is_transformers_and_stops_greedy_repeats(client, tok, model):
    ids = tok("a a a a a a")["input_ids"]

    def served(**kw) -> tuple[str, int]:
        r = client.completions.create(model="tiny", prompt=ids, max_tokens=24, temperature=0,
                                      **kw)
        return r.choices[0].text, r.usage.completion_tokens

    def local(penalty: float) -> list[int]:
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                 repetition_penalty=penalty)[0, len(ids):].tolist()
        return out[:-1] if out[-1] == tok.eos_token_id else out

    plain, penalized = local(1.0), local(2.0)
    assert len(set(plain)) < len(plain)  # greedy says some tokens again
    assert len(set(penalized)) == len(penalized)  # penalized, never
    assert served() == (tok.decode(plain, skip_special_tokens=True), len(plain))
    assert served(extra_body={"repetition_penalty": 2.0}) == (
        tok.decode(penalized, skip_special_tokens=True), len(penalized))


@pytest.mark.parametrize("field, value, param", [
    ("logit_bias", {"400": 5}, "logit_bias"),  # the vocabulary is 400 tokens
    ("logit_bias", {"fox": 5}, "logit_bias"),
    ("logit_bias", {"7": 101}, "logit_bias"),
    ("top_k", -2, "top_k"),
    ("min_p", 1.5, "min_p"),
    ("repetition_penalty", 0, "repetition_penalty"),
    ("repetition_penalty", 5e-324, "repetition_penalty"),  # a logit over it is inf
])
def test_bad_sampling_values_name_the_field(client, field, value, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=2,
                                       extra_body={field: value})
    assert e.value.body["param"] == param, e.value.body
