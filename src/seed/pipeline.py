"""`seed run`: a recipe's stages in order (generate -> train -> [rl] -> eval -> report) in a run
directory.

Each stage is skipped when its inputs (its config and the files it reads) and its outputs are
unchanged since it last finished, so a rerun resumes after a crash and a complete run costs seconds.
Everything a user can get wrong is checked before the run directory is touched.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from seed.errors import UserError
from seed.recipe import IMAGE_TEACHERS, JudgeConfig, Recipe, chat_teacher, load_recipe
from seed.records import count_records
from seed.runs import Run, check_output_dir

GENERATE_OUT = ["data/train.jsonl", "data/eval.jsonl"]
TRAIN_OUT = ["train/model", "train/initial", "train/metrics.jsonl"]
RL_OUT = ["rl/model", "rl/metrics.jsonl"]
EVAL_OUT = ["eval/results.json", "eval/samples.jsonl"]
REPORT_OUT = ["report.html"]
JUDGE_OUT = "judge/judge_results.json"
WATERMARK_OUT = "watermark/watermark.json"


def preflight(recipe: Recipe, data_dir: Path | None = None, console: Console | None = None,
              check_teacher: bool = True) -> Callable[[], dict[str, Any]]:
    """Fail on bad input before anything is written; return the generate stage's work.

    `check_teacher=False` (generation already done) skips what only generating needs, such as an
    HTTP teacher's key, so a finished run can be rerun without it.
    """
    teacher, data = recipe.generate.teacher, data_dir or Path("data")
    if teacher.kind == "tasks":
        if check_teacher:  # reasoning-gym (~2 s to import) checks the task specs
            from seed.endpoints.tasks import TasksEndpoint

            TasksEndpoint(teacher.tasks)
        work = partial(_generate_tasks, recipe, data)
    elif teacher.kind in ("openai", "anthropic"):
        from seed.generate.teacher import Generation

        def build() -> Generation:
            # Building it checks the prompt files, the key and the endpoint; nothing is written.
            return Generation(recipe.generate, recipe.seed, data, console or Console())

        generation = build() if check_teacher else None
        work = partial(_generate_http, generation or build)
        judge = recipe.eval.judge
        if judge is not None and not judge.questions:
            raise UserError("eval.judge.questions: an HTTP teacher gives no held-out prompts; "
                            "name a questions file (records or MT-Bench question.jsonl)")
    elif teacher.kind in IMAGE_TEACHERS:
        from seed.generate.images import image_work

        work = image_work(recipe.generate, recipe.seed, data, console or Console(), check_teacher)
    else:
        raise UserError("generate.teacher.kind = \"local\": `seed run` takes a tasks or an "
                        "openai teacher; serve the model with `seed serve` and point an openai "
                        "teacher at it")
    if recipe.rl is not None and teacher.kind in IMAGE_TEACHERS:
        raise UserError("[rl]: GRPO trains text students; remove [rl] from an image recipe")
    ckpt = recipe.train.student.checkpoint
    if ckpt and not Path(ckpt).is_dir():
        raise UserError(f"train.student.checkpoint: {ckpt}: no such model directory")
    if recipe.policy.overrides:
        from seed.policy.terms import load_terms

        load_terms(recipe.policy.overrides)
    if recipe.eval.watermark is not None:  # the key and the served tokenizer, read now
        from seed.evaluate.watermark_run import served_tokenizer, stage_key

        stage_key(recipe.eval.watermark)
        served_tokenizer(recipe.eval.watermark, ckpt)
    if recipe.generate.identity_records is not None:
        from seed.protect.identity_records import with_identity_records

        return with_identity_records(work, recipe, data)
    return work


def _student(recipe: Recipe) -> str:
    """The run's final student: the [rl] stage's when the recipe has one, else train's."""
    return "rl/model" if recipe.rl is not None else "train/model"


def _rl_stage(run: Run, recipe: Recipe, console: Console, check: Any) -> None:
    """[rl]: GRPO (seed.train.grpo) from train's student on the same records, into rl/."""
    rl = recipe.rl
    assert rl is not None
    config = rl.model_copy(update={"student": rl.student.model_copy(
        update={"checkpoint": str(run.path("train/model"))})})
    info = _stage(run, console, "rl", [rl.model_dump(), recipe.seed],
                  ["data/train.jsonl", "train/model"], RL_OUT,
                  partial(_train, run.path("data/train.jsonl"), run.path("rl"), config,
                          recipe.seed, console, _report(recipe, check, "rl")), workdir="rl")
    console.print(f"rl: {info.get('steps')} GRPO steps from train's student")


def _generate_tasks(recipe: Recipe, data: Path) -> dict[str, Any]:
    """A procedural teacher's records (reasoning-gym is imported only when it generates)."""
    from seed.generate import generate_from_tasks

    return generate_from_tasks(recipe.generate, recipe.seed, data)


def _train(records: Path, out: Path, config: Any, seed: int, console: Console,
           report: Any = None) -> dict[str, Any]:
    """One training stage; torch and transformers (~4 s to import) only when a stage trains,
    so a rerun that skips every stage never imports them."""
    from seed.train import train_student

    return train_student(records, out, config, seed, console=console, report=report)


def _report(recipe: Recipe, check: Any, stage: str) -> Any:
    """What `train.report_to`'s trackers show beside a stage's metrics: the recipe (endpoint
    keys by their environment variable's name only) and the terms gate's decision."""
    from seed.train.trackers import Report

    return Report(_run_name(recipe, stage),
                  {"recipe": recipe.model_dump(mode="json"), "terms": check.to_dict()})


def _run_name(recipe: Recipe, stage: str) -> str:
    return recipe.name if stage == "train" else f"{recipe.name}-{stage}"


def _report_eval(run: Run, recipe: Recipe, ev: dict[str, Any]) -> None:
    """The eval results, added to the student's tracker runs (reopened) after the eval stage."""
    config = recipe.rl if recipe.rl is not None else recipe.train
    if not config.report_to or not ev:
        return
    from seed.train.trackers import report_summary

    stage = "rl" if recipe.rl is not None else "train"
    report_summary(config.report_to, run.path(stage), _run_name(recipe, stage), {"eval": ev})


def _generate_http(generation: Any) -> dict[str, Any]:
    """An HTTP teacher's records; a budget stop keeps them and stops the run before training.

    `generation` is a built `Generation`, or a function that builds one (when preflight skipped it).
    """
    if callable(generation):
        generation = generation()
    if generation.config.forecast:  # its sample lands in the cache: the run pays nothing twice
        from seed.generate.forecast import forecast

        forecast(generation.config, generation.seed, generation.out_dir,
                 generation.config.forecast_sample, generation.console)
    info = generation.run()
    if info["stopped"]:
        raise UserError(f"generation stopped ({info['stopped']}); the records so far are kept "
                        "in data/, raise the cap and run again to finish")
    kept = ("requests_paid", "answers_from_cache", "failed", "cost", "usage_estimated_requests",
            "verify")
    return {"train_records": count_records(generation.out_dir / "train.jsonl"),
            "eval_records": count_records(generation.out_dir / "eval.jsonl"),  # generate.tasks
            **{k: info[k] for k in kept if k in info}}


def _stage(run: Run, console: Console, name: str, config: Any, inputs: list[str],
           outputs: list[str], work: Any, workdir: str | None = None) -> dict[str, Any]:
    """Run one stage unless it is up to date.

    A stage that stopped part-way with the same inputs resumes from what it left in `workdir`
    (training checkpoints); when its inputs changed, `workdir` is cleared first, since what is
    there was made from other inputs.
    """
    h = run.inputs_hash(config, [run.path(p) for p in inputs])
    if run.is_fresh(name, h):
        run.skipped(name)
        console.print(f"[dim]{name}: up to date, skipped[/dim]")
        return run.manifest["stages"][name].get("info", {})
    previous = run.manifest["stages"].get(name)
    if workdir and previous and previous.get("inputs_hash") != h:
        shutil.rmtree(run.path(workdir), ignore_errors=True)
    console.rule(f"[bold]{name}")
    with run.stage(name, h, outputs) as info:
        info.update(work() or {})
    return info


def _terms_gate(run: Run, recipe: Recipe, console: Console,
                accept_terms_risk: str | None) -> Any:
    """seed.policy: refuse to train on records whose terms forbid this use; card the data.

    Runs on every invocation (it is cheap), keeps the decision and any accepted risk in the
    manifest, and writes the dataset card next to the records.
    """
    from seed.policy.commands import gate_before_training, write_cards

    check = gate_before_training(run.path("data/train.jsonl"), recipe.policy, console,
                                 accept_terms_risk=accept_terms_risk)
    run.manifest["policy"] = check.to_dict()
    run.save()
    write_cards(check, recipe.policy, data_dir=run.path("data"),
                model_name=recipe.policy.student_name or recipe.name)
    return check


def _model_card(run: Run, recipe: Recipe, check: Any, train: dict[str, Any],
                ev: dict[str, Any]) -> None:
    """The model card, with the terms decision and this run's eval results.

    A card is documentation about the weights, not part of them: it is rewritten on every run
    (cheap) and `hash_path` leaves README.md out, so a new card never makes a stage stale.
    """
    from seed.policy.commands import write_cards

    write_cards(check, recipe.policy, model_dir=run.path(_student(recipe)),
                model_name=recipe.policy.student_name or recipe.name,
                base_model=recipe.train.student.checkpoint,
                training={k: train[k] for k in ("steps", "tokens", "params") if k in train},
                eval_results={k: ev[k] for k in ("accuracy", "baseline_accuracy")
                              if ev.get(k) is not None})


def _judge_stage(run: Run, recipe: Recipe, judge: JudgeConfig, console: Console) -> None:
    """[eval.judge] (seed.evaluate.judge_run): the student judged against a baseline."""
    from seed.evaluate.judge_run import run_judge

    def work() -> dict[str, Any]:
        if recipe.generate.teacher.kind == "shapes":  # images: the judge sees both pictures
            from seed.evaluate.judge_images import run_image_judge

            res = run_image_judge(judge, run.path("train/model"), run.path("judge"),
                                  run.path("data/eval.jsonl"))
        else:
            res = run_judge(judge, run.path(_student(recipe)), run.path("judge"),
                            questions_path=run.path("data/eval.jsonl"),
                            teacher=chat_teacher(recipe.generate.teacher))
        st = res["stats"]
        return {"requests": res["requests"], **{k: st[k] for k in
                ("n", "win_rate", "lc_win_rate", "ci_low", "ci_high") if k in st}}

    info = _stage(run, console, "judge", judge.model_dump(),
                  ["data/eval.jsonl", _student(recipe)], [JUDGE_OUT], work)
    if "win_rate" in info:
        console.print(f"judge: student win rate {info['win_rate']:.1f}% "
                      f"[{info['ci_low']:.1f}, {info['ci_high']:.1f}] vs the baseline")


def _watermark_stage(run: Run, recipe: Recipe, console: Console) -> None:
    """[eval.watermark] (seed.evaluate.watermark_run): the teacher's watermark in the training
    data and in the student."""
    from seed.evaluate.watermark_run import served_tokenizer, stage_key, watermark_eval

    config = recipe.eval.watermark
    assert config is not None
    tokenizer = served_tokenizer(config, recipe.train.student.checkpoint)

    def work() -> dict[str, Any]:
        res = watermark_eval(run.path("data/train.jsonl"), run.path(_student(recipe)), config,
                             tokenizer, run.path("watermark"))
        return {"key_id": res["key_id"], "p_data": res["data"]["p_value"],
                "p_student": res["student"].get("p_value")}

    info = _stage(run, console, "watermark",
                  [config.model_dump(), stage_key(config), str(tokenizer)],
                  ["data/train.jsonl", _student(recipe)], [WATERMARK_OUT], work)
    student = "not tested" if info.get("p_student") is None else f"p {info['p_student']:.3g}"
    console.print(f"watermark: key id {info['key_id']}: training data p {info['p_data']:.3g}, "
                  f"student {student}")


def _eval_config(recipe: Recipe) -> dict[str, Any]:
    """What the eval stage's result depends on: [eval.images] for an image recipe, the rest for
    text (so a text recipe's eval does not rerun when image settings change, and the reverse)."""
    if recipe.generate.teacher.kind == "shapes":
        return recipe.eval.images.model_dump()
    return recipe.eval.model_dump(exclude={"judge", "watermark", "images"})


def _evaluate(run: Run, recipe: Recipe) -> dict[str, Any]:
    """The held-out eval of a procedural teacher's prompts: answers or images, graded."""
    teacher = recipe.generate.teacher
    if teacher.kind == "shapes":
        from seed.evaluate.images import evaluate_images

        return evaluate_images(run.path("train/model"), run.path("data/eval.jsonl"),
                               run.path("eval"), recipe.eval.images, teacher,
                               baseline_dir=run.path("train/initial"),
                               train_records=run.path("data/train.jsonl"))
    from seed.evaluate.verify import evaluate_tasks

    # after [rl], the baseline is the SFT student the RL stage started from
    baseline = "train/model" if recipe.rl is not None else "train/initial"
    return evaluate_tasks(run.path(_student(recipe)), run.path("data/eval.jsonl"),
                          run.path("eval"), recipe.eval, baseline_dir=run.path(baseline))


def run_recipe(path: str | Path, console: Console | None = None,
               accept_terms_risk: str | None = None) -> Path:
    """Run every stage of a recipe; return the run directory."""
    console = console or Console()
    recipe, text = load_recipe(path)
    check_output_dir(Path(recipe.runs_dir) / recipe.name, f"{path}: runs_dir")
    run = Run(Path(recipe.runs_dir) / recipe.name)
    gen_config = [recipe.generate.model_dump(), recipe.seed]
    if recipe.generate.identity_records is not None:  # the name its identity records teach
        gen_config.append(recipe.policy.student_name)
    generated = run.is_fresh("generate", run.inputs_hash(gen_config, []))
    generate = preflight(recipe, run.path("data"), console, check_teacher=not generated)
    run.begin(recipe.name, text, recipe.model_dump(mode="json"), recipe.seed)

    from seed.evaluate.report import write_report

    # Only a procedural teacher (or generate.tasks) gives verifiable held-out prompts (eval.jsonl).
    verifiable = recipe.generate.teacher.kind in ("tasks", "shapes") or bool(recipe.generate.tasks)
    gen = _stage(run, console, "generate", gen_config, [],
                 GENERATE_OUT if verifiable else GENERATE_OUT[:1], generate)
    if gen:
        console.print(f"generate: {gen['train_records']} training records, "
                      f"{gen['eval_records']} held-out prompts")
    check = _terms_gate(run, recipe, console, accept_terms_risk)
    tr = _stage(run, console, "train", [recipe.train.model_dump(), recipe.seed],
                ["data/train.jsonl"], TRAIN_OUT,
                partial(_train, run.path("data/train.jsonl"), run.path("train"), recipe.train,
                        recipe.seed, console, _report(recipe, check, "train")), workdir="train")
    if recipe.rl is not None:
        _rl_stage(run, recipe, console, check)
    ev: dict[str, Any] = {}
    if verifiable:
        ev = _stage(run, console, "eval", _eval_config(recipe),
                    ["data/eval.jsonl", "train/model", "train/initial",
                     *([_student(recipe)] if recipe.rl is not None else [])], EVAL_OUT,
                    partial(_evaluate, run, recipe), workdir="eval")
    _model_card(run, recipe, check, tr, ev)
    _report_eval(run, recipe, ev)
    if recipe.eval.judge is not None:
        _judge_stage(run, recipe, recipe.eval.judge, console)
    if recipe.eval.watermark is not None:
        _watermark_stage(run, recipe, console)
    _stage(run, console, "report", None, [*EVAL_OUT, "train/metrics.jsonl", "data/train.jsonl",
                                          JUDGE_OUT, WATERMARK_OUT], REPORT_OUT,
           lambda: {"path": str(write_report(run.root))})
    if ev:
        console.print(
            f"[bold green]held-out accuracy: {ev['accuracy']:.1%}[/bold green] "
            f"({'SFT' if recipe.rl is not None else 'untrained'} student: "
            f"{ev['baseline_accuracy']:.1%}, n={ev['n']})"
        )
    console.print(f"report: {run.path('report.html')}")
    if recipe.generate.teacher.kind in IMAGE_TEACHERS:
        console.print(f"serve the student: seed serve {run.path('train/model')}")
    else:
        console.print(f"chat with the student: seed chat {run.path(_student(recipe))}")
    return run.root
