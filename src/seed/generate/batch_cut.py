"""Cutting a batch run's requests into shards: the provider's limits, the recipe's, the budget's.

`cut(keys, requests, provider, ...)` takes the requests in order and closes a shard when the next
one would pass the provider's request count or bytes (with a 5% margin on bytes: a provider's own
count of a file may differ a little) or the recipe's `generate.batch.max_requests` / `max_bytes`.
With a cap (`--max-cost`, `--max-tokens`) it stops at the first request whose worst case (its
prompt's byte bound plus `max_tokens * n`, at batch prices) no longer fits the room left, and says
why; the caller decides whether that stops the run. It writes nothing and sends nothing: the
runner (seed.generate.batch) records the shards before anything of them is sent.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from seed.generate.batch_ledger import Shard
from seed.generate.batch_protocol import BatchProvider
from seed.generate.budget import Budget, text_tokens
from seed.generate.engine import Request

MARGIN = 0.95  # of a provider's byte limit


def reply_cap(params: dict[str, Any]) -> int | None:
    """The most output tokens one request can bill (`max_tokens * n`), None without a cap."""
    cap = params.get("max_completion_tokens") or params.get("max_tokens")
    return int(cap) * int(params.get("n", 1)) if cap else None


def reply_cap_missing(budget: Budget | None, requests: list[Request]) -> bool:
    """Whether a cap is set and some request has no reply cap to bound its cost with."""
    if budget is None or (budget.max_cost is None and budget.max_tokens is None):
        return False
    return any(reply_cap(r.params) is None for r in requests)


def worst_case(req: Request, budget: Budget | None) -> tuple[float | None, int]:
    """The most one request can cost (dollars at the budget's prices, None without a price) and
    the most tokens it can bill."""
    prompt = text_tokens([m.get("content") or "" for m in req.messages])
    reply = reply_cap(req.params) or 0
    cost = None if budget is None else budget.cost_of(
        {"prompt_tokens": prompt, "completion_tokens": reply, "total_tokens": prompt + reply})
    return cost, prompt + reply


@dataclass
class Cut:
    shards: list[Shard] = field(default_factory=list)
    rest: list[str] = field(default_factory=list)  # keys left for a later wave
    too_big: list[tuple[str, str]] = field(default_factory=list)  # (key, why) no job can take
    stopped: str | None = None  # why the cut ended before the keys did (a cap)


def cut(keys: list[str], requests: dict[str, Request], provider: BatchProvider,
        max_requests: int | None, max_bytes: int | None,
        room: tuple[float | None, int | None], budget: Budget | None) -> Cut:
    """Shards for `keys` (in order; `requests[key]` is each one's request) within the limits and
    `room` (dollars, tokens left under the caps; None: no cap)."""
    max_n = min(provider.max_requests, max_requests or provider.max_requests)
    max_b = min(int(provider.max_bytes * MARGIN), max_bytes or provider.max_bytes)
    cost_room, token_room = room
    out = Cut()
    cur: list[str] = []
    size, cur_cost, cur_tokens = 0, 0.0, 0

    def close() -> None:
        nonlocal cur, size, cur_cost, cur_tokens
        if cur:
            out.shards.append(Shard(uuid.uuid4().hex[:16], provider.route, time.time(), cur,
                                    cur_cost if cost_room is not None else None, cur_tokens))
        cur, size, cur_cost, cur_tokens = [], 0, 0.0, 0

    left = len(keys)
    for i, key in enumerate(keys):
        req = requests[key]
        nbytes = len(json.dumps(provider.line(key, req.messages, req.params))) + 1
        if nbytes > max_b:
            out.too_big.append((key, f"the request is {nbytes:,} bytes, more than a batch job "
                                     f"takes ({max_b:,})"))
            continue
        cost, tokens = worst_case(req, budget)
        if cost_room is not None and cost is not None and cur_cost + cost > cost_room:
            out.stopped = (f"cost cap: the next batch request's worst case (${cost:.6f} at batch "
                           f"prices) would cross --max-cost (${cost_room - cur_cost:.6f} left)")
            left = i
            break
        if token_room is not None and cur_tokens + tokens > token_room:
            out.stopped = (f"token cap: the next batch request's worst case ({tokens:,} tokens) "
                           f"would cross --max-tokens ({token_room - cur_tokens:,} left)")
            left = i
            break
        if len(cur) >= max_n or size + nbytes > max_b:
            cost_room = None if cost_room is None else cost_room - cur_cost
            token_room = None if token_room is None else token_room - cur_tokens
            close()
        cur.append(key)
        size += nbytes
        cur_cost += cost or 0.0
        cur_tokens += tokens
    close()
    too_big = {k for k, _ in out.too_big}
    out.rest = [k for k in keys[left:] if k not in too_big]
    return out
