"""`seed audit`: which API keys' traffic in a usage log looks like a distillation campaign.

Each key gets the same transparent signals, each a measured value, the number of requests (or
gaps, bins) it rests on, the key's percentile among the log's keys, and whether it passes a
documented threshold (the constants below). Nothing is folded into one score, and nothing here
acts: keys are ordered by how many signals flag them (then by completion tokens), and
`suggestions` writes policy edits for a person to read. The signals, per key:

- `volume`: completion tokens, as a multiple of the other keys' median.
- `completion_ratio`: completion tokens per prompt token (distillers want long answers).
- `near_duplicates`: share of requests whose last user turn is near (MinHash Jaccard >= 0.9) an
  earlier one of the same key (the same prompt resent for more samples).
- `template_concentration`: share of requests in the key's most common prompt template.
- `coverage_novelty`: distinct prompt shingles (sampled by MinHash) no other key sent, in
  prompts' worth, as a multiple of the other keys' median.
- `distribution_shift`: MMD between the key's prompts and the other keys' (kernel: MinHash
  Jaccard), calibrated by permuting which requests are the key's; flagged by its key-side half
  (the key's prompts nearer each other than to the others', beyond what permutations give): a
  key whose traffic is merely more diverse than the rest is not "shifted". Requests of a key's
  dominant templates are left out on both sides, as template concentration reports them.
- `logprobs`: share of requests asking for logprobs (what `kd` distillation trains on).
- `multiple_samples`: share of requests with `n > 1`.
- `temperature_sweep`: distinct temperatures used at least `SWEEP_MIN_EACH` times each.
- `cot_elicitation`, `identity_probes`: shares of requests with those flags.
- `machine_timing`: share of requests sent less than `MACHINE_GAP_S` after the key's previous
  one ended (or while it ran): no person reads an answer and types the next prompt that fast.
- `clusters`: other keys sharing a prompt template with this one, or whose per-minute traffic
  rises and falls with it (Pearson r over `BURST_BIN_S` bins).

What each confuses a distiller with is in the README ("Protect your model"). This module reads
the usage log's fields (`audit_features.py` writes them); it never sees prompt text.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from seed.errors import UserError

GENERATION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
NO_KEY = "(no key)"

VOLUME_X = 5.0  # completion tokens this many times the other keys' median
COVERAGE_X = 5.0
RATIO_MIN = 3.0  # completion tokens per prompt token
NEAR_DUP_JACCARD = 0.9
NEAR_DUP_SHARE = 0.3
TEMPLATE_SHARE = 0.5
DOMINANT_TEMPLATE = 0.1  # a template this share of a key's requests is left out of the shift test
SHIFT_P = 0.01
SHIFT_PERMUTATIONS = 200
SHIFT_SAMPLE = 200  # requests per side, at most (a random sample beyond)
LOGPROB_SHARE = 0.2
MULTI_N_SHARE = 0.2
SWEEP_TEMPERATURES = 4
SWEEP_MIN_EACH = 3
COT_SHARE = 0.25
IDENTITY_SHARE = 0.05
IDENTITY_MIN = 5
MACHINE_GAP_S = 0.1
MACHINE_SHARE = 0.5
SHARED_TEMPLATE_MIN = 5  # requests of one template from each of two keys
BURST_BIN_S = 60.0
BURST_MIN_BINS = 10
BURST_R = 0.9
MIN_REQUESTS = 10  # evidence below this flags nothing
BANDS, ROWS = 8, 4  # MinHash LSH banding for the near-duplicate search (8 x 4 = 32 positions)


@dataclass
class Signal:
    name: str
    value: float
    evidence: int  # the requests (gaps, bins) the value rests on
    flagged: bool
    detail: str  # one line: what was measured
    percentile: float = 0.0  # share of keys (in %) whose value is at or below this key's


@dataclass
class KeyAudit:
    key: str
    requests: int
    completion_tokens: int
    peak_rpm: int  # the most requests it began in one minute (a `BURST_BIN_S` bin)
    signals: list[Signal] = field(default_factory=list)

    @property
    def flags(self) -> list[str]:
        return [s.name for s in self.signals if s.flagged]


@dataclass
class Request:
    """One answered generation request as the usage log has it."""

    key: str
    start: float
    end: float
    prompt_tokens: int
    completion_tokens: int
    fields: dict[str, Any]


def read_log(path: Path) -> list[Request]:
    """The answered (status 200) generation requests of a usage log, in the order they began."""
    if not path.is_file():
        raise UserError(f"{path}: no such usage log; give the file `seed serve --usage-log` "
                        "writes")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("time"), int | float):
                raise UserError(f"{path}:{lineno}: not a usage-log line (a JSON object with a "
                                "time); give the file `seed serve --usage-log` writes")
            if row.get("route") not in GENERATION_ROUTES or row.get("status") != 200:
                continue
            end = float(row["time"])
            out.append(Request(row.get("key") or NO_KEY, end - float(row.get("latency_s") or 0),
                               end, int(row.get("prompt_tokens") or 0),
                               int(row.get("completion_tokens") or 0), row))
    return sorted(out, key=lambda r: r.start)


def audit(requests: list[Request], seed: int = 0) -> list[KeyAudit]:
    """Every key's signals, keys ordered by flags (most first), then completion tokens."""
    by_key: dict[str, list[Request]] = defaultdict(list)
    for r in requests:
        by_key[r.key].append(r)
    rng = np.random.default_rng(seed)
    dominant = {k: _dominant_templates(rs) for k, rs in by_key.items()}
    clusters = _clusters(by_key)
    novel = _novel_features(by_key)
    audits = []
    for key, rs in sorted(by_key.items()):
        others = [r for k, o in by_key.items() if k != key for r in o]
        minutes = Counter(int(r.start // BURST_BIN_S) for r in rs)
        a = KeyAudit(key, len(rs), sum(r.completion_tokens for r in rs), max(minutes.values()))
        a.signals = [
            _volume(rs, by_key, key), _ratio(rs), _near_duplicates(rs), _template(rs),
            _coverage(key, rs, novel),
            _shift(rs, others, dominant, rng),
            _share("logprobs", rs, lambda f: bool(f.get("logprobs")), LOGPROB_SHARE,
                   "asked for logprobs", _top_logprobs(rs)),
            _share("multiple_samples", rs, lambda f: (f.get("n") or 1) > 1, MULTI_N_SHARE,
                   "asked for n > 1", ""),
            _sweep(rs),
            _share("cot_elicitation", rs, lambda f: bool(f.get("cot")), COT_SHARE,
                   "asked for step-by-step reasoning", ""),
            _share("identity_probes", rs, lambda f: bool(f.get("identity")), IDENTITY_SHARE,
                   "asked the model who it is", "", least=IDENTITY_MIN),
            _timing(rs), clusters.get(key) or Signal("clusters", 0, 0, False, "no shared "
                                                     "templates or synchronised bursts")]
        audits.append(a)
    _percentiles(audits)
    return sorted(audits, key=lambda a: (-len(a.flags), -a.completion_tokens, a.key))


def _percentiles(audits: list[KeyAudit]) -> None:
    for i in range(len(audits[0].signals) if audits else 0):
        values = [a.signals[i].value for a in audits]
        for a in audits:
            v = a.signals[i].value
            a.signals[i].percentile = round(100 * sum(x <= v for x in values) / len(values), 1)


def _relative(value: float, others: Iterable[float]) -> float:
    """`value` as a multiple of the others' median (taken as at least 1); 1 with no others."""
    rest = list(others)
    return round(value / max(1.0, median(rest)), 3) if rest else 1.0


def _volume(rs: list[Request], by_key: dict[str, list[Request]], key: str) -> Signal:
    tokens = sum(r.completion_tokens for r in rs)
    x = _relative(tokens, (sum(r.completion_tokens for r in o) for k, o in by_key.items()
                           if k != key))
    return Signal("volume", x, len(rs), x >= VOLUME_X and len(rs) >= MIN_REQUESTS,
                  f"{len(rs)} requests, {tokens} completion tokens, {_x(x)} the other keys' "
                  "median")


def _ratio(rs: list[Request]) -> Signal:
    prompt = sum(r.prompt_tokens for r in rs)
    ratio = sum(r.completion_tokens for r in rs) / max(1, prompt)
    return Signal("completion_ratio", round(ratio, 3), len(rs),
                  ratio >= RATIO_MIN and len(rs) >= MIN_REQUESTS,
                  f"{ratio:.2f} completion tokens per prompt token")


def _signatures(rs: list[Request]) -> list[list[int]]:
    return [r.fields["minhash"] for r in rs if r.fields.get("minhash")]


def _near_duplicates(rs: list[Request]) -> Signal:
    sigs = _signatures(rs)
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
    near = 0
    for i, sig in enumerate(sigs):
        candidates = set()
        for b in range(BANDS):
            band = (b, tuple(sig[b * ROWS:(b + 1) * ROWS]))
            candidates.update(buckets[band])
            buckets[band].append(i)
        if any(_jaccard(sig, sigs[j]) >= NEAR_DUP_JACCARD for j in candidates):
            near += 1
    share = near / max(1, len(sigs))
    return Signal("near_duplicates", round(share, 3), len(sigs),
                  share >= NEAR_DUP_SHARE and len(sigs) >= MIN_REQUESTS,
                  f"{near} of {len(sigs)} prompts near an earlier one of this key")


def _jaccard(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def _template(rs: list[Request]) -> Signal:
    counts = Counter(r.fields["template"] for r in rs if r.fields.get("template"))
    total = sum(counts.values())
    top = counts.most_common(1)[0][1] if counts else 0
    share = top / max(1, total)
    return Signal("template_concentration", round(share, 3), top,
                  share >= TEMPLATE_SHARE and total >= MIN_REQUESTS,
                  f"{top} of {total} prompts share one template ({len(counts)} templates)")


def _dominant_templates(rs: list[Request]) -> set[str]:
    counts = Counter(r.fields["template"] for r in rs if r.fields.get("template"))
    return {t for t, c in counts.items() if c >= SHARED_TEMPLATE_MIN
            and c >= DOMINANT_TEMPLATE * len(rs)}


def _features(rs: list[Request]) -> set[tuple[int, int]]:
    return {(k, v) for sig in _signatures(rs) for k, v in enumerate(sig)}


def _novel_features(by_key: dict[str, list[Request]]) -> dict[str, tuple[int, int]]:
    """Per key: its distinct MinHash features (position, value) and how many no other key sent."""
    features = {k: _features(rs) for k, rs in by_key.items()}
    keys_with: Counter[tuple[int, int]] = Counter(f for fs in features.values() for f in fs)
    return {k: (len(fs), sum(keys_with[f] == 1 for f in fs)) for k, fs in features.items()}


def _coverage(key: str, rs: list[Request], novel: dict[str, tuple[int, int]]) -> Signal:
    distinct, own = novel[key]
    prompts = own / 32  # each prompt's signature holds 32 features
    x = _relative(prompts, (n / 32 for k, (_, n) in novel.items() if k != key))
    signed = len(_signatures(rs))
    return Signal("coverage_novelty", x, signed, x >= COVERAGE_X and signed >= MIN_REQUESTS,
                  f"{prompts:.0f} prompts' worth of shingles no other key sent ({_x(x)} the "
                  f"other keys' median; {100 * distinct / max(1, 32 * signed):.0f}% of its own "
                  "are distinct)")


def _shift(rs: list[Request], others: list[Request], dominant: dict[str, set[str]],
           rng: np.random.Generator) -> Signal:
    def kept(group: list[Request]) -> list[list[int]]:
        return [r.fields["minhash"] for r in group if r.fields.get("minhash")
                and r.fields.get("template") not in dominant[r.key]]

    x, y = kept(rs), kept(others)
    if len(x) < MIN_REQUESTS or len(y) < MIN_REQUESTS:
        return Signal("distribution_shift", 0.0, len(x), False,
                      f"too few prompts to compare ({len(x)} here, {len(y)} from other keys)")
    x = [x[i] for i in sorted(rng.permutation(len(x))[:SHIFT_SAMPLE])]
    y = [y[i] for i in sorted(rng.permutation(len(y))[:SHIFT_SAMPLE])]
    t = mmd_test(np.array(x + y), len(x), rng)
    return Signal("distribution_shift", round(t.mmd, 4), len(x), t.p_own < SHIFT_P,
                  f"MMD^2 {t.mmd:.4f} against the other keys' prompts (permutation p "
                  f"{t.p_mmd:.3f}); its own prompts nearer each other than to theirs by "
                  f"{t.own:.4f} (p {t.p_own:.3f})")


@dataclass
class ShiftTest:
    mmd: float  # unbiased MMD^2 between the two groups
    p_mmd: float
    own: float  # the first group's half: its mean within-group minus cross-group similarity
    p_own: float


def mmd_test(sigs: np.ndarray, n_first: int, rng: np.random.Generator,
             permutations: int = SHIFT_PERMUTATIONS) -> ShiftTest:
    """MMD^2 between the first `n_first` MinHash signatures and the rest (kernel: the share of
    equal positions, an estimate of Jaccard similarity), and the first group's half of it, each
    with its permutation p-value ((1 + exceedances) / (1 + permutations)). A group can differ
    from the rest by being concentrated (a campaign's prompts) or merely by the rest being
    concentrated; `own` tells which."""
    kernel = (sigs[:, None, :] == sigs[None, :, :]).mean(axis=2)
    np.fill_diagonal(kernel, np.nan)

    def statistic(first: np.ndarray) -> tuple[float, float]:
        xx = np.nanmean(kernel[np.ix_(first, first)])
        yy = np.nanmean(kernel[np.ix_(~first, ~first)])
        xy = kernel[np.ix_(first, ~first)].mean()
        return float(xx + yy - 2 * xy), float(xx - xy)

    first = np.zeros(len(sigs), dtype=bool)
    first[:n_first] = True
    mmd, own = statistic(first)
    null = np.array([statistic(rng.permutation(first)) for _ in range(permutations)])
    return ShiftTest(mmd, float((1 + (null[:, 0] >= mmd).sum()) / (1 + permutations)),
                     own, float((1 + (null[:, 1] >= own).sum()) / (1 + permutations)))


def _share(name: str, rs: list[Request], test: Callable[[dict[str, Any]], bool], threshold: float,
           what: str, extra: str, least: int = MIN_REQUESTS) -> Signal:
    """The share of requests that pass `test`; flagged from `threshold` with `least` of them."""
    hits = sum(1 for r in rs if test(r.fields))
    share = hits / max(1, len(rs))
    return Signal(name, round(share, 3), hits, share >= threshold and hits >= least,
                  f"{hits} of {len(rs)} requests {what}{extra}")


def _top_logprobs(rs: list[Request]) -> str:
    top = max((r.fields.get("top_logprobs") or 0 for r in rs), default=0)
    return f", top_logprobs up to {top}" if top else ""


def _sweep(rs: list[Request]) -> Signal:
    temps = Counter(float(r.fields["temperature"]) for r in rs
                    if r.fields.get("temperature") is not None)
    used = sorted(t for t, c in temps.items() if c >= SWEEP_MIN_EACH)
    return Signal("temperature_sweep", len(used), sum(temps[t] for t in used),
                  len(used) >= SWEEP_TEMPERATURES,
                  f"{len(used)} temperatures used {SWEEP_MIN_EACH}+ times"
                  + (f" ({', '.join(str(t) for t in used)})" if used else ""))


def _timing(rs: list[Request]) -> Signal:
    gaps, last_end = [], None
    for r in rs:
        if last_end is not None:
            gaps.append(r.start - last_end)
        last_end = r.end if last_end is None else max(last_end, r.end)
    fast = sum(g < MACHINE_GAP_S for g in gaps)
    share = fast / max(1, len(gaps))
    return Signal("machine_timing", round(share, 3), len(gaps),
                  share >= MACHINE_SHARE and len(gaps) >= MIN_REQUESTS,
                  f"{fast} of {len(gaps)} requests sent < {MACHINE_GAP_S:g} s after the previous "
                  "one ended (or while it ran)")


def _clusters(by_key: dict[str, list[Request]]) -> dict[str, Signal]:
    """Per key: the other keys it shares a template with, or bursts in step with."""
    templates = {k: Counter(r.fields["template"] for r in rs if r.fields.get("template"))
                 for k, rs in by_key.items()}
    partners: dict[str, dict[str, str]] = defaultdict(dict)
    evidence: Counter[str] = Counter()
    keys = sorted(by_key)
    start = min((r.start for rs in by_key.values() for r in rs), default=0.0)
    bins = {k: Counter(int((r.start - start) // BURST_BIN_S) for r in rs)
            for k, rs in by_key.items()}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            shared = [t for t, c in templates[a].items()
                      if c >= SHARED_TEMPLATE_MIN and templates[b][t] >= SHARED_TEMPLATE_MIN]
            why = []
            if shared:
                why.append(f"{len(shared)} shared template(s)")
                n = sum(min(templates[a][t], templates[b][t]) for t in shared)
                evidence[a] += n
                evidence[b] += n
            r, active = burst_correlation(bins[a], bins[b])
            if active >= BURST_MIN_BINS and r >= BURST_R:
                why.append(f"bursts in step (r {r:.2f} over {active} minutes)")
                evidence[a] += active
                evidence[b] += active
            if why:
                partners[a][b] = partners[b][a] = " and ".join(why)
    return {k: Signal("clusters", len(p), evidence[k], True,
                      "; ".join(f"{other}: {why}" for other, why in sorted(p.items())))
            for k, p in partners.items()}


def burst_correlation(a: Counter[int], b: Counter[int]) -> tuple[float, int]:
    """Pearson r of two keys' per-bin request counts over the bins where either was active."""
    active = sorted(set(a) | set(b))
    if len(active) < 3:
        return 0.0, len(active)
    x = np.array([a[i] for i in active], dtype=float)
    y = np.array([b[i] for i in active], dtype=float)
    if x.std() == 0 or y.std() == 0:
        return 0.0, len(active)
    return float(np.corrcoef(x, y)[0, 1]), len(active)


def _x(value: float) -> str:
    return f"{value:.1f}x"


def suggestions(audits: list[KeyAudit]) -> list[str]:
    """keys.toml edits (`seed.serve.policy`'s format) for the flagged keys, as lines for a person
    to review, comments saying why: logprobs off, `max_n = 1`, an `rpm` of twice the busiest
    unflagged key's peak minute, and the watermark required for a key flagged twice or more. A
    key flagged only by signals no policy field answers (templates, clusters...) gets a comment."""
    rpm = max((a.peak_rpm for a in audits if not a.flags), default=0)
    lines: list[str] = []
    for a in audits:
        if not a.flags:
            continue
        flagged = {s.name for s in a.signals if s.flagged}
        lines.append(f"# {a.key}: flagged by " + ", ".join(
            f"{s.name} ({s.detail})" for s in a.signals if s.flagged))
        edits = []
        if "logprobs" in flagged:
            edits.append("logprobs = false")
        if "multiple_samples" in flagged:
            edits.append("max_n = 1")
        if flagged & {"volume", "machine_timing"}:
            edits.append(f"rpm = {2 * rpm}" if rpm else "rpm = 10")
        if len(flagged) >= 2:
            edits.append('watermark = "required"')
        if not edits:
            lines += ["# no policy field answers this alone; look at the key's traffic", ""]
            continue
        label = a.key if re.fullmatch(r"[A-Za-z0-9_-]+", a.key) else json.dumps(a.key)
        lines += [f"[keys.{label}]  # merge into the key's table", *edits, ""]
    return lines


def as_json(audits: list[KeyAudit]) -> list[dict[str, Any]]:
    return [{**asdict(a), "flags": a.flags} for a in audits]


def render(audits: list[KeyAudit], requests: list[Request]) -> list[str]:
    """The audit as text: one block per key, most flags first; each signal on a line with its
    value, evidence and percentile, `!` before a flagged one."""
    if not audits:
        return ["no answered generation requests in this log"]
    lines = [f"{len(audits)} keys, {len(requests)} answered requests over "
             f"{(requests[-1].end - requests[0].start) / 60:.1f} minutes; signals marked ! pass "
             "their documented thresholds; none is a verdict"]
    for rank, a in enumerate(audits, 1):
        lines.append("")
        lines.append(f"{rank}. {a.key}: {a.requests} requests, {a.completion_tokens} completion "
                     f"tokens; flagged by {', '.join(a.flags) if a.flags else 'nothing'}")
        for s in a.signals:
            lines.append(f"  {'!' if s.flagged else ' '} {s.name:<23} {_value(s.value):>8}  "
                         f"n={s.evidence:<6} p{s.percentile:<5g} {s.detail}")
    return lines


def _value(v: float) -> str:
    return f"{v:.3g}"
