"""The watermark stage and the run report's "Watermark" section (seed.evaluate.watermark_run,
watermark_report).

The teacher writes 62 letters and digits one character at a time (Seed's `chars` tokenizer, so a
decoded answer tokenizes back to the same ids), uniformly; watermarked, it adds delta to the key's
green list after the previous character (a window of 1, as `seed serve` does), as records a
teacher's answers would be. The students are count bigram models of such records
(helpers.watermark_models), in the teacher's tokenizer: one trained on watermarked answers, one
on unwatermarked ones. The stage runs on each records file and student directory; the report is
drawn from a run directory holding its result, and read for the key id, the verdicts and the key.
"""

from __future__ import annotations

import hashlib
import json
import string

import pytest
import torch
from transformers import AutoTokenizer

from helpers.models import tiny_model
from helpers.watermark_models import TEACHER_HIDDEN, count_student, token_lists, vocab_size
from seed.errors import UserError
from seed.evaluate.report import write_report
from seed.evaluate.watermark_run import served_tokenizer, stage_key, watermark_eval
from seed.protect.identity_records import identity_records
from seed.protect.watermark import GreenList, WatermarkKey
from seed.recipe import WatermarkEvalConfig
from seed.records import Provenance, Record, Teacher, write_records

KEY = b"report-wm-secret-0d4e-never-shown"
KEY_ID = hashlib.sha256(KEY).hexdigest()[:12]
GAMMA, DELTA, CONTEXT = 0.25, 2.0, 1
ANSWERS, LENGTH = 40, 150


def answers(teacher, *, watermark: bool, seed: int) -> list[str]:
    """The teacher's answers: letters and digits, uniform, with delta on the green list after the
    previous character when watermarked."""
    vocab = vocab_size(teacher)
    writes = torch.tensor([ids[0] for ids in token_lists(teacher, list(string.ascii_letters
                                                                         + string.digits))])
    logits = torch.full((vocab, vocab), -torch.inf)
    logits[:, writes] = 0.0
    if watermark:
        green = GreenList(WatermarkKey.from_bytes(KEY), GAMMA, CONTEXT)
        logits = logits + DELTA * green.mask(torch.arange(vocab)[:, None], vocab)
    probs = torch.softmax(logits, -1)
    gen = torch.Generator().manual_seed(seed)
    tokens = writes[torch.randint(len(writes), (ANSWERS,), generator=gen)]
    seqs = [tokens]
    for _ in range(LENGTH - 1):
        tokens = torch.multinomial(probs[tokens], 1, generator=gen)[:, 0]
        seqs.append(tokens)
    tok = AutoTokenizer.from_pretrained(str(teacher))
    return [tok.decode(s) for s in torch.stack(seqs, 1).tolist()]


def records_file(path, texts: list[str]):
    """The answers as a teacher's records, and three Seed-written identity records."""
    teacher = Teacher(route="direct", host="127.0.0.1", model_requested="teacher")
    write_records(path, [*(Record.new([{"role": "user", "content": f"Write line {i}."},
                                       {"role": "assistant", "content": t}],
                                      Provenance(teacher=teacher)) for i, t in enumerate(texts)),
                         *identity_records("Nimbus", None, 3, seed=0)])
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-wm")
    teacher = tiny_model(tmp / "teacher", tokenizer="chars", hidden=TEACHER_HIDDEN, layers=1,
                         context=1024)
    key = tmp / "teacher.key"
    key.write_bytes(KEY)
    out = {"tmp": tmp, "teacher": teacher, "key": key}
    for name, marked, seed in (("marked", True, 1), ("plain", False, 2)):
        records = records_file(tmp / f"{name}.jsonl", answers(teacher, watermark=marked,
                                                               seed=seed))
        out[name] = (records, count_student(teacher, records, tmp / f"{name}-student"))
    return out


def config(setup, **kw) -> WatermarkEvalConfig:
    """The stage's settings; the student reads 10 answers (1,500 characters: every window)."""
    return WatermarkEvalConfig(key_file=str(setup["key"]), gamma=GAMMA, context=CONTEXT,
                               **{"max_texts": 10, **kw})


def report_of(setup, result_dir, name: str) -> str:
    """The report of a run directory holding these records and the stage's result."""
    run = setup["tmp"] / f"run-{name}"
    (run / "data").mkdir(parents=True)
    (run / "data" / "train.jsonl").write_bytes(setup[name][0].read_bytes())
    (run / "watermark").mkdir()
    (run / "watermark" / "watermark.json").write_bytes((result_dir / "watermark.json").read_bytes())
    (run / "manifest.json").write_text(json.dumps({"name": name, "stages": {}, "config": {}}))
    return write_report(run).read_text()


def test_the_watermarked_data_and_its_student_are_evidence_in_the_report(setup):
    records, student = setup["marked"]
    out = setup["tmp"] / "marked-result"
    res = watermark_eval(records, student, config(setup), setup["teacher"], out)
    data, read = res["data"], res["student"]
    assert res["key_id"] == KEY_ID and data["texts"] == ANSWERS  # the identity records left out
    assert data["p_value"] < 1e-10 and data["green_rate"] > 0.35 and data["evidence"]
    assert read["mode"] == "reading" and read["texts"] == 10
    assert read["p_value"] < 1e-5 and read["decoy_rank"] == 1 and read["evidence"]
    html = report_of(setup, out, "marked")
    section = html.split("<h2>Watermark</h2>", 1)[1].split("<h2>", 1)[0]
    assert f"key id <b>{KEY_ID}</b>" in section
    assert ("evidence consistent with training on outputs watermarked with key id "
            + KEY_ID) in section
    assert "evidence consistent with the training data being outputs watermarked" in section
    assert "never proof" in section
    for written in (html, (out / "watermark.json").read_text()):
        assert KEY.decode() not in written and hashlib.sha256(KEY).hexdigest() not in written


def test_unwatermarked_data_and_its_student_are_no_evidence(setup):
    records, student = setup["plain"]
    out = setup["tmp"] / "plain-result"
    res = watermark_eval(records, student, config(setup), setup["teacher"], out)
    assert res["data"]["p_value"] > 0.01 and not res["data"]["evidence"]
    assert res["student"]["p_value"] > 0.01 and not res["student"]["evidence"]
    section = report_of(setup, out, "plain").split("<h2>Watermark</h2>", 1)[1]
    assert f"no evidence of training on outputs watermarked with key id {KEY_ID}" in section
    assert "a negative test proves nothing" in section


def test_a_student_with_another_tokenizer_is_not_read(setup, tiny_chat_model):
    res = watermark_eval(setup["marked"][0], tiny_chat_model, config(setup, decoys=0),
                         setup["teacher"], setup["tmp"] / "other-result")
    assert res["data"]["evidence"] and "tokenizer is not the served model's" in \
        res["student"]["skipped"]


def test_a_key_or_tokenizer_that_cannot_be_used_is_one_line_naming_the_setting(setup):
    with pytest.raises(UserError, match=r"eval\.watermark\.key_file .*absent\.key: no such file"):
        stage_key(WatermarkEvalConfig(key_file=str(setup["tmp"] / "absent.key")))
    with pytest.raises(UserError, match=r"eval\.watermark\.tokenizer: give the served model's"):
        served_tokenizer(config(setup), None)
    with pytest.raises(UserError, match=r"train\.student\.checkpoint: .*nowhere: no such"):
        served_tokenizer(config(setup), str(setup["tmp"] / "nowhere"))
    assert served_tokenizer(config(setup), str(setup["teacher"])) == setup["teacher"]
    assert stage_key(config(setup)) == KEY_ID
