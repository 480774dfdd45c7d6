"""The watermark stage of `seed run`: does a run's training data carry the teacher's watermark,
and did the student learn it?

A recipe whose teacher served with a watermark (`seed serve --watermark-key-file`, or vLLM's)
names the key and the server's settings in `[eval.watermark]`. Two tests, both with
`seed.protect`'s functions:

- the training data: `detect` over the assistant turns the teacher wrote (Seed-written records,
  `meta.seed_written`, left out), tokenized with the served model's tokenizer: distinct
  (window, token) pairs, the exact binomial tail;
- the student: radioactivity's reading mode (`read_mode`): the student reads the first
  `max_texts` of those answers, its top-1 predictions scored against each input window, ranked
  among `decoys` decoy keys. Its token ids must be the served model's (the hash is over them):
  a student with another tokenizer (one trained from scratch) is not read, and the result says so.

`watermark/watermark.json` holds both results with their verdicts, worded as the evidence allows
("evidence consistent with ...", never proof; a negative test proves nothing); the run report
shows it (`watermark_report.py`). Only the key's id is ever written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.files import write_json_atomic
from seed.protect.detect import Detection, detect
from seed.protect.radioactivity import model_predictor, read_mode, verdict
from seed.protect.watermark import WatermarkKey, key_id, read_key
from seed.recipe import WatermarkEvalConfig
from seed.records import read_records

RESULT = "watermark.json"
KEY_SETTING = "eval.watermark.key_file"


def served_tokenizer(config: WatermarkEvalConfig, checkpoint: str | None) -> Path:
    """The directory whose tokenizer the teacher's server used; a UserError when there is none."""
    where = config.tokenizer or checkpoint
    if where is None:
        raise UserError("eval.watermark.tokenizer: give the served model's directory (its "
                        "tokenizer: the watermark hashes its token ids); the student has no "
                        "train.student.checkpoint to take it from")
    if not Path(where).is_dir():
        setting = "eval.watermark.tokenizer" if config.tokenizer else "train.student.checkpoint"
        raise UserError(f"{setting}: {where}: no such model directory; give the served model's "
                        "directory")
    return Path(where)


def stage_key(config: WatermarkEvalConfig) -> str:
    """The key's id, read now: what the stage's inputs hash holds of the key (never the key)."""
    return key_id(read_key(Path(config.key_file), KEY_SETTING))


def teacher_answers(records: Path) -> list[str]:
    """The assistant turns of the records a teacher wrote (Seed-written ones left out)."""
    return [m.content for r in read_records(records) if not r.meta.get("seed_written")
            for m in r.messages if m.role == "assistant"]


def data_verdict(result: Detection, threshold: float) -> str:
    """One line about the training data, in the words the evidence allows."""
    if result.p_value < threshold:
        return (f"evidence consistent with the training data being outputs watermarked with key "
                f"id {result.key_id}: p {result.p_value:.3g} over {result.tokens_scored} "
                "distinct tokens")
    return (f"no evidence of key id {result.key_id}'s watermark in the training data: p "
            f"{result.p_value:.3g} over {result.tokens_scored} distinct tokens; a negative test "
            "proves nothing (short or low-entropy answers carry little signal)")


def watermark_eval(records: Path, student: Path, config: WatermarkEvalConfig, tokenizer_dir: Path,
                   out_dir: Path) -> dict[str, Any]:
    """Both tests (see the module docstring) into `out_dir/watermark.json`; returns the result."""
    from seed.endpoints.local import load_tokenizer

    key = read_key(Path(config.key_file), KEY_SETTING)
    tokenizer = load_tokenizer(tokenizer_dir)
    texts = teacher_answers(records)
    if not texts:
        raise UserError(f"{records}: no answers a teacher wrote to test for the watermark")
    token_lists = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    data = detect(token_lists, [key], gamma=config.gamma, context=config.context)
    result = {"key_id": data.key_id, "gamma": config.gamma, "context": config.context,
              "threshold": config.threshold,
              "data": {"texts": data.texts, "tokens": data.tokens,
                       "tokens_scored": data.tokens_scored, "green_rate": data.keys[0].green_rate,
                       "z": data.keys[0].z, "p_value": data.p_value,
                       "evidence": data.p_value < config.threshold,
                       "verdict": data_verdict(data, config.threshold)},
              "student": _student(texts[:config.max_texts], tokenizer, student, key, config)}
    write_json_atomic(Path(out_dir) / RESULT, result)
    return result


def _student(texts: list[str], tokenizer: Any, student: Path, key: bytes,
             config: WatermarkEvalConfig) -> dict[str, Any]:
    """Radioactivity's reading mode on the student, or why it was not read."""
    student_tokenizer, predict = model_predictor(student)
    if student_tokenizer.get_vocab() != tokenizer.get_vocab():
        return {"skipped": "the student's tokenizer is not the served model's, so its token ids "
                           "are not those the watermark hashed; train the student from a "
                           "checkpoint that shares the teacher's tokenizer to test it"}
    result = read_mode(texts, tokenizer, predict, WatermarkKey.from_bytes(key),
                       gamma=config.gamma, context=config.context, decoys=config.decoys)
    evidence = result.p_value < config.threshold and result.decoy_rank == 1
    return {**result.as_json(), "evidence": evidence,
            "verdict": verdict(result, config.threshold)}
