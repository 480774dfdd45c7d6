"""What the terms gate costs: `seed check` against bare reads of the same records file.

The claim: checking provenance before training costs about as much as reading the records once
with Seed's validating reader, a small multiple of the bare `json.loads` every tool pays. The
competitors run in the same process on the same file: (1) `json.loads` per line, (2)
`seed.records.read_records` (pydantic-validated), (3) `seed.policy.gate.check_file` (read +
match every record's teacher and source against the registry). Best of `--repeats` runs each.

    PYTHONPATH=src .venv/bin/python benchmarks/policy_gate.py --records 50000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from seed.policy.gate import Use, check_file
from seed.records import Provenance, Record, Source, Teacher, read_records, write_records

TEACHERS = [
    Teacher(route="direct", host="api.openai.com", model_requested="gpt-4o-mini",
            model_returned="gpt-4o-mini-2024-07-18", system_fingerprint="fp_0ba0d124f1",
            params={"temperature": 0.7, "max_tokens": 512}),
    Teacher(route="local", model_requested="meta-llama/Llama-3.1-8B-Instruct",
            weights_revision="0e9e39f"),
    Teacher(route="tasks", model_requested="reasoning-gym", model_returned="reasoning-gym==0.1.25"),
    Teacher(route="openrouter", host="openrouter.ai", model_requested="qwen/qwen3-32b"),
]
SOURCES = [Source(kind="file", name="prompts.jsonl", license="Apache-2.0"),
           Source(kind="tasks", name="basic_arithmetic", license="Apache-2.0", seed=3)]


def make_file(path: Path, n: int) -> None:
    write_records(path, (Record.new(
        [{"role": "user", "content": f"Question number {i}: what is {i} + {i * 7 % 13}?"},
         {"role": "assistant", "content": f"The answer is {i + i * 7 % 13}. " * 4}],
        provenance=Provenance(teacher=TEACHERS[i % len(TEACHERS)],
                              source=SOURCES[i % len(SOURCES)]))
        for i in range(n)))


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        make_file(path, args.records)

        def bare() -> int:
            with path.open("rb") as f:
                return sum(1 for line in f if json.loads(line))

        t_json = best(bare, args.repeats)
        t_read = best(lambda: sum(1 for _ in read_records(path)), args.repeats)
        result = check_file(path, Use(student_name="Llama-bench"))
        t_check = best(lambda: check_file(path, Use(student_name="Llama-bench")), args.repeats)
    n = args.records
    print(f"{n} records, {len(result.findings)} (teacher, source) groups, verdict {result.verdict}")
    for name, t in (("json.loads per line", t_json), ("read_records", t_read),
                    ("seed check (gate)", t_check)):
        print(f"  {name:22s} {t:7.3f} s  {n / t:10.0f} records/s")
    print(f"gate / read_records = {t_check / t_read:.2f}x; gate / json.loads = "
          f"{t_check / t_json:.2f}x")
    print(f"RESULT records={n} gate_records_per_s={n / t_check:.0f} "
          f"gate_over_read={t_check / t_read:.2f} gate_over_json={t_check / t_json:.2f}")


if __name__ == "__main__":
    main()
