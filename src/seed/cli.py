"""The `seed` command: one Typer app, one subcommand per stage.

Commands import their stage lazily so `seed --help` is instant. A `UserError` from any stage is
printed as one line and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from seed.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting stall torch on a CPU shared with other work: passive
# waiting trained 5-25x faster with 2 threads at load ~6-8 on 2 cores (docs/LOG.md, Quickstart).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(
    name="seed",
    help="Build a chat model you own from a stronger model you can call.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file.")],
    accept_terms_risk: Annotated[str | None, typer.Option(help="Train despite records the terms "
                                 "forbid; the reason is kept in the manifest and the model card."
                                 )] = None,
) -> None:
    """Run a recipe: generate -> train -> eval -> report, skipping stages that are up to date."""
    from seed.pipeline import run_recipe

    run_recipe(recipe, console=console, accept_terms_risk=accept_terms_risk)


@app.command()
def generate(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file (its [generate] section).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the records.")],
    prompts: Annotated[list[Path] | None, typer.Option(
        "--prompts", help="Prompts file (JSONL, CSV with a `prompt` column, or text lines); "
        "repeatable; added to the recipe's.")] = None,
    max_cost: Annotated[float | None, typer.Option(help="Stop starting requests past this "
                                                   "many dollars.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Stop starting requests past this "
                                                   "many tokens (prompt + completion).")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at most.")] = None,
    batch: Annotated[bool, typer.Option("--batch", help="Answer through the teacher's batch API "
                                        "(half price, within hours; generate.teacher.batch).")
                     ] = False,
    forecast: Annotated[bool, typer.Option("--forecast", help="Answer a sample of the prompts "
                                           "and print the expected cost, time and yield; write "
                                           "no records (generate.forecast).")] = False,
    forecast_sample: Annotated[int | None, typer.Option(
        help="Prompts the forecast answers (default: generate.forecast_sample, 100).")] = None,
) -> None:
    """Write teacher-answered training records (an HTTP teacher resumes where it stopped)."""
    from seed.recipe import load_recipe
    from seed.runs import check_output_dir

    r, _ = load_recipe(recipe)
    check_output_dir(out, "--out")
    if batch and r.generate.teacher.kind not in ("openai", "anthropic"):
        raise UserError(f"--batch: a {r.generate.teacher.kind} teacher has no batch API; use an "
                        "openai (or azure) or anthropic teacher")
    if forecast_sample is not None and not forecast:
        raise UserError("--forecast-sample goes with --forecast")
    if forecast and r.generate.teacher.kind not in ("openai", "anthropic"):
        raise UserError(f"--forecast: a {r.generate.teacher.kind} teacher is not forecast "
                        "(it forecasts answers from an openai or anthropic teacher)")
    if r.generate.teacher.kind in ("openai", "anthropic"):
        from seed.generate.teacher import apply_overrides, generate_from_teacher
        from seed.protect.identity_records import with_identity_records

        cfg = apply_overrides(r.generate, prompts, max_cost, max_tokens, concurrency)
        if forecast:
            from seed.generate.forecast import forecast as run_forecast

            sample = cfg.forecast_sample if forecast_sample is None else forecast_sample
            run_forecast(cfg, r.seed, out, sample, console=console)
            return
        if batch:
            from seed.generate.batch_route import batch_on

            cfg = batch_on(cfg)
        work = with_identity_records(
            lambda: generate_from_teacher(cfg, r.seed, out, console=console), r, out)
        info = work()
        console.print(f"{info['records_written']} records written ({info['prompts_answered']} "
                      f"prompts answered in all) to {out / 'train.jsonl'}")
        if "identity_records" in info:
            console.print(f"{info['identity_records']} identity records teach the name "
                          f"{r.policy.student_name!r}")
        if info["stopped"]:
            console.print(f"stopped: {info['stopped']}; rerun with a higher cap to finish")
        return
    if r.generate.teacher.kind in ("images", "pipeline"):
        from seed.generate.images import generate_images
        from seed.generate.teacher import apply_overrides

        cfg = apply_overrides(r.generate, prompts, max_cost, max_tokens, concurrency)
        info = generate_images(cfg, r.seed, out, console=console)
        console.print(f"{info['records_written']} image records written to "
                      f"{out / 'train.jsonl'} ({info.get('failed', 0)} prompts failed)")
        if info.get("stopped"):
            console.print(f"stopped: {info['stopped']}; rerun with a higher cap to finish")
        return
    from seed.pipeline import preflight

    info = preflight(r, out, console)()
    console.print(f"{info['train_records']} training records, {info['eval_records']} held-out "
                  f"prompts in {out}")


@app.command()
def train(
    records: Annotated[Path, typer.Argument(help="Training records (JSONL).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (model/, ...).")],
    recipe: Annotated[Path | None, typer.Option(help="Recipe with the [train] section.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the recipe's).")] = None,
    student_name: Annotated[str | None, typer.Option(help="The student's name (terms may "
                                                     "require a prefix).")] = None,
    distribute: Annotated[bool | None, typer.Option(
        "--distribute/--internal",
        help="Will the student be distributed? (default: the recipe's policy, else yes)")] = None,
    accept_terms_risk: Annotated[str | None, typer.Option(help="Train despite forbidden records; "
                                 "the reason is kept in policy.json and the model card.")] = None,
) -> None:
    """Train a student on records the terms gate allows; resumes from the last checkpoint in OUT."""
    from seed.policy.commands import gate_before_training, record_check, write_cards
    from seed.recipe import MAX_SEED, PolicyConfig, TrainConfig, load_recipe
    from seed.records import count_records
    from seed.runs import check_output_dir

    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed}: give a whole number from 0 to {MAX_SEED}")
    cfg, rseed, policy = TrainConfig(), 0, PolicyConfig()
    if recipe:
        r, _ = load_recipe(recipe)
        cfg, rseed, policy = r.train, r.seed, r.policy
    if cfg.student.checkpoint and not Path(cfg.student.checkpoint).is_dir():
        raise UserError(f"{cfg.student.checkpoint}: no such model directory")
    check_output_dir(out, "--out")
    count_records(records)  # validates the whole file before any training output is written
    check = gate_before_training(records, policy, console, student_name=student_name,
                                 distribute=distribute, accept_terms_risk=accept_terms_risk)
    from seed.train import train_student

    info = train_student(records, out, cfg, rseed if seed is None else seed, console=console)
    record_check(out / "policy.json", check, records)
    write_cards(check, policy, model_dir=out / "model", model_name=check.use.student_name
                or out.name, base_model=cfg.student.checkpoint, training={"steps": info["steps"]})
    console.print(f"trained {info['steps']} steps; model in {out / 'model'}")


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="Records file (JSONL) to check.")],
    student_name: Annotated[str | None, typer.Option(help="The student's name.")] = None,
    distribute: Annotated[bool, typer.Option("--distribute/--internal",
                                             help="Will the student be distributed?")] = True,
    commercial: Annotated[bool, typer.Option("--commercial/--noncommercial")] = True,
    classifier: Annotated[bool, typer.Option(help="The student is a classifier or embedding "
                                             "model, not a chat model.")] = False,
    unknown: Annotated[str, typer.Option(help="Records with unmatched terms: warn or block.")
                       ] = "warn",
    terms: Annotated[Path | None, typer.Option(help="Your own terms entries (TOML), tried "
                                               "before the built-in ones.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Check records against each teacher's terms; exit 1 when any is forbidden for this use."""
    from seed.policy.commands import check_command
    from seed.policy.gate import Use

    if unknown not in ("warn", "block"):
        raise UserError(f"--unknown {unknown!r}: use warn or block")
    use = Use(distribute=distribute, commercial=commercial, student_name=student_name,
              task="classifier" if classifier else "chat", unknown=unknown)
    raise typer.Exit(check_command(data, use, terms, as_json, console))


@app.command(name="import")
def import_(
    file: Annotated[Path, typer.Argument(help="Dataset file (JSON array or JSON lines).")],
    fmt: Annotated[str, typer.Option("--format", help="alpaca, sharegpt, messages, s1k "
                                        "(reasoning traces kept), openai-ft (OpenAI chat "
                                        "fine-tuning or preference JSONL: tools, tool calls, "
                                        "weights) or openai-stored (stored chat completions "
                                        "with their messages; teacher from each one's model).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Records file to write (JSONL).")],
    teacher: Annotated[str | None, typer.Option(help="Who wrote the answers: ROUTE:MODEL, e.g. "
                                                "direct:gpt-4o.")] = None,
    license: Annotated[str | None, typer.Option(help="The data's license (SPDX id or name).")
                       ] = None,
    dpi: Annotated[Path | None, typer.Option(help="A Data Provenance Initiative summary (JSON) "
                                             "declaring the teacher and license.")] = None,
    dpi_id: Annotated[str | None, typer.Option(help="Which dataset of the DPI summary.")] = None,
    name: Annotated[str | None, typer.Option(help="Dataset name for provenance.")] = None,
) -> None:
    """Turn an instruction dataset into records with declared provenance."""
    from seed.policy.importers import import_dataset
    from seed.runs import check_output_file

    check_output_file(out, "--out")
    info = import_dataset(file, fmt, out, name=name, teacher=teacher, license=license,  # type: ignore[arg-type]
                          dpi=dpi, dpi_id=dpi_id)
    who = ", ".join(info["teachers"]) or "no teacher declared"
    console.print(f"{info['records']} records ({who}; license "
                  f"{info['source'].get('license') or 'not declared'}) in {out}")


@app.command(name="eval")
def eval_(
    model: Annotated[str, typer.Argument(help="Student model directory (with --identity, or an "
                                         "OpenAI-compatible base URL).")],
    records: Annotated[Path | None, typer.Argument(help="Held-out evaluation records (JSONL); "
                                                   "not with --identity.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.")] = None,
    baseline: Annotated[Path | None, typer.Option(help="Model directory to compare with.")] = None,
    recipe: Annotated[Path | None, typer.Option(help="Recipe whose [eval] section to use.")] = None,
    identity: Annotated[bool, typer.Option("--identity", help="Ask 40 who-are-you probes in 9 "
                        "languages; report how often answers claim another model's identity."
                        )] = False,
    samples: Annotated[int, typer.Option(help="--identity: answers per probe.")] = 5,
    max_tokens: Annotated[int, typer.Option(help="--identity: tokens per answer.")] = 64,
    temperature: Annotated[float, typer.Option(help="--identity: sampling temperature.")] = 1.0,
    served_model: Annotated[str | None, typer.Option(help="--identity on a URL: the model name "
                                                     "the server answers to.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="--identity on a URL: the environment "
                                                    "variable holding its API key.")] = None,
) -> None:
    """Grade a student on verifiable held-out tasks (results.json, samples.jsonl), or with
    --identity probe who it says it is (identity.json)."""
    from seed.recipe import EvalConfig, load_recipe
    from seed.runs import check_output_dir

    r = load_recipe(recipe)[0] if recipe else None
    if out is not None:
        check_output_dir(out, "--out")
    if identity:
        from seed.protect.identity_eval import identity_eval

        name = r.policy.student_name if r else None
        identity_eval(model, out, samples=samples, max_tokens=max_tokens, temperature=temperature,
                      own_names=(name,) if name else (), served_model=served_model,
                      api_key_env=api_key_env, console=console)
        return
    if records is None or out is None:
        raise UserError("seed eval MODEL RECORDS --out DIR: give the held-out records and an "
                        "output directory (or --identity)")
    from seed.evaluate.verify import evaluate_tasks

    cfg = r.eval if r else EvalConfig()
    info = evaluate_tasks(Path(model), records, out, cfg, baseline_dir=baseline)
    console.print(f"accuracy {info['accuracy']:.1%} on {info['n']} held-out prompts")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run directory (runs/<name>).")]) -> None:
    """Write the run's self-contained HTML report."""
    from seed.evaluate.report import write_report

    console.print(f"report: {write_report(run_dir)}")


@app.command()
def stats(
    files: Annotated[list[Path], typer.Argument(help="Judge annotation files (Seed JSONL or "
                                                "AlpacaEval annotations.json[.gz]).")],
    as_json: Annotated[bool, typer.Option("--json",
                                          help="Print a JSON list, rates in percent.")] = False,
) -> None:
    """Recompute win rates, intervals and length-controlled win rates from annotations on disk."""
    from seed.evaluate.annotations import load_annotations
    from seed.evaluate.stats import summarize
    from seed.evaluate.stats_table import print_stats

    rows = summarize([load_annotations(f) for f in files])
    if as_json:
        keys = ("name", "n", "win_rate", "lc_win_rate", "ci_low", "ci_high", "avg_length")
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
    else:
        print_stats(rows, console)


@app.command()
def audit(
    usage_log: Annotated[Path, typer.Argument(help="The usage log `seed serve --usage-log` "
                                              "writes (JSONL).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys and their signals as "
                                          "JSON.")] = False,
    suggest: Annotated[bool, typer.Option("--suggest", help="Also print keys.toml edits for "
                                          "the flagged keys, for a person to review.")] = False,
) -> None:
    """Rank API keys by signals of a distillation campaign in a usage log: each signal with its
    value, evidence and percentile among keys. No single score; nothing is banned."""
    from seed.protect.audit import as_json as audit_json
    from seed.protect.audit import audit as run_audit
    from seed.protect.audit import read_log, render, suggestions

    requests = read_log(usage_log)
    audits = run_audit(requests)
    if as_json:
        print(json.dumps({"keys": audit_json(audits),
                          "suggestions": suggestions(audits) if suggest else None}, indent=2))
        return
    print("\n".join(render(audits, requests)))
    if suggest:
        print("\n# suggested keys.toml edits (review before applying)")
        print("\n".join(suggestions(audits)) or "# nothing flagged: no edits")


@app.command()
def judge(
    model: Annotated[Path, typer.Argument(help="Student model directory.")],
    recipe: Annotated[Path, typer.Option(help="Recipe with an [eval.judge] section.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    questions: Annotated[Path | None, typer.Option(
        help="Records or MT-Bench question.jsonl; overrides the recipe's.")] = None,
) -> None:
    """Judge a student against a baseline; writes judge_results.json and report.html, resumable."""
    from seed.evaluate.judge_report import write_judge_report
    from seed.evaluate.judge_run import run_judge
    from seed.recipe import chat_teacher, load_recipe
    from seed.runs import check_output_dir

    r, _ = load_recipe(recipe)
    if r.eval.judge is None:
        raise UserError(f"{recipe}: no [eval.judge] section; add one naming the judge endpoint")
    check_output_dir(out, "--out")
    cfg = r.eval.judge
    if questions:
        cfg = cfg.model_copy(update={"questions": str(questions)})
    if (model / "model_index.json").is_file():  # an image pipeline: the judge sees both images
        from seed.evaluate.judge_images import run_image_judge

        if not cfg.questions:
            raise UserError("an image student is judged on held-out image records: pass "
                            "--questions data/eval.jsonl (or set eval.judge.questions)")
        res = run_image_judge(cfg, model, out, cfg.questions)
    else:
        res = run_judge(cfg, model, out, teacher=chat_teacher(r.generate.teacher))
    st, req = res["stats"], res["requests"]
    if res["mode"] == "pairwise":
        lc = "" if st.get("lc_win_rate") is None else f"LC {st['lc_win_rate']:.1f}%, "
        console.print(f"student win rate {st['win_rate']:.1f}% [{st['ci_low']:.1f}, "
                      f"{st['ci_high']:.1f}] ({lc}n={st['n']}, {st['unparseable']} unparseable)")
    else:
        for name, sc in st["scores"].items():
            console.print(f"{name}: mean score {sc['mean']} (n={sc['n']})")
    console.print(f"judge requests: {req['requests_paid']} sent, {req['requests_cached']} cached")
    console.print(f"report: {write_judge_report(out)}")


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Model directory, or a server URL (http://...).")],
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    api_key: Annotated[str | None, typer.Option(envvar="SEED_API_KEY",
                                                help="Key for a server URL.")] = None,
) -> None:
    """Talk to a model in the terminal; replies stream token by token."""
    if model.startswith(("http://", "https://")):
        from seed.serve.client import chat_with_server

        chat_with_server(model, system=system, max_tokens=max_new_tokens,
                         temperature=temperature, api_key=api_key)
        return
    from seed.chat import chat_loop

    chat_loop(Path(model), system=system, max_new_tokens=max_new_tokens, temperature=temperature)


@app.command()
def serve(
    model: Annotated[Path | None, typer.Argument(help="Model directory (omit with --upstream).")
                     ] = None,
    recipe: Annotated[Path | None, typer.Option(
        help="Recipe whose [serve] table holds these settings (only that table is read); flags "
        "given here override it.")] = None,
    upstream: Annotated[str | None, typer.Option(
        help="Front this OpenAI-compatible server (vLLM, SGLang...) instead of a model.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")
                    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8000).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SEED_API_KEY",
                                                help="Require this key.")] = None,
    keys_file: Annotated[Path | None, typer.Option(
        help="File of accepted keys: one per line, or a keys.toml of per-key policies (each key "
        "by its SHA-256, with its limits; read again on SIGHUP or when it changes).")] = None,
    model_name: Annotated[str | None, typer.Option(help="Name clients ask for (default: the "
                                                   "directory name).")] = None,
    max_running: Annotated[int | None, typer.Option(help="Most sequences in one batch "
                                                    "(default 32).")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Most waiting sequences before 429 "
                                                  "(default 256).")] = None,
    max_prefill_tokens: Annotated[int | None, typer.Option(
        help="Prompt tokens prefilled per step: lower keeps running replies smoother when long "
        "prompts arrive, higher admits bursts faster (default 2048).")] = None,
    usage_log: Annotated[Path | None, typer.Option(help="Append one JSON line per request.")
                         ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the model (default: "
                                                "torch's choice; 1 is fastest for tiny models "
                                                "on a busy machine).")] = None,
    device: Annotated[str | None, typer.Option(help="Device for the model (default: cuda when "
                                               "there is one, else cpu).")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto (bfloat16 on a GPU, else float32), "
                                              "float32 or bfloat16.")] = None,
    max_body_bytes: Annotated[int | None, typer.Option(
        help="Largest request body read; a larger one is a 413 (default 8 MiB).")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(
        help="A Host name a loopback-bound server also answers to (repeatable; localhost, "
        "127.0.0.1 and [::1] always do).")] = None,
    upstream_timeout: Annotated[float | None, typer.Option(
        help="Seconds an upstream may take to answer (default 600).")] = None,
    tool_parser: Annotated[str | None, typer.Option(
        help="How the model writes tool calls: auto (read from its chat template), hermes "
        "(<tool_call>, Qwen), llama3_json or mistral ([TOOL_CALLS]).")] = None,
    reasoning_parser: Annotated[str | None, typer.Option(
        help="Where a reply's reasoning is: auto (<think>...</think> when the chat template "
        "writes <think>), think, or none.")] = None,
    watermark_key_file: Annotated[Path | None, typer.Option(
        help="Watermark every reply with the key in this file (raw bytes; never logged, only its "
        "id is shown); gamma, delta and context are serve.watermark_gamma, "
        "serve.watermark_delta and serve.watermark_context in a recipe.")] = None,
    watermark_served_dir: Annotated[Path | None, typer.Option(
        help="With --watermark-key-file: append each watermarked reply's windows, as keyed "
        "digests (no text, no token ids), to one file per key label here, for `seed watermark "
        "radioactivity --served-to LABEL`.")] = None,
) -> None:
    """Serve a model (or an upstream server) with an OpenAI-compatible API and a chat page."""
    from seed.recipe import load_serve_config
    from seed.serve.server import run_server

    run_server(load_serve_config(recipe, {
        "model": model, "upstream": upstream, "host": host, "port": port, "api_key": api_key,
        "keys_file": keys_file, "model_name": model_name, "max_running": max_running,
        "max_queue": max_queue, "max_prefill_tokens": max_prefill_tokens,
        "usage_log": usage_log, "threads": threads, "device": device, "dtype": dtype,
        "max_body_bytes": max_body_bytes, "allowed_hosts": allowed_host or None,
        "upstream_timeout": upstream_timeout, "tool_parser": tool_parser,
        "reasoning_parser": reasoning_parser, "watermark_key_file": watermark_key_file,
        "watermark_served_dir": watermark_served_dir}))


@app.command()
def push(
    path: Annotated[Path, typer.Argument(help="A run, model or dataset directory.")],
    repo: Annotated[str, typer.Option(help="The Hub repository, OWNER/NAME.")],
    private: Annotated[bool, typer.Option(help="Create the repository private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to commit to (made if new; "
                                                 "default main).")] = None,
    accept_terms_risk: Annotated[str | None, typer.Option(
        help="Push despite records the terms forbid for distribution; the reason goes in the "
        "card.")] = None,
    token_file: Annotated[Path | None, typer.Option(
        help="File holding the Hub token (default: HF_TOKEN, or `hf auth login`'s).")] = None,
    endpoint: Annotated[str | None, typer.Option(
        help="Hub URL (default: HF_ENDPOINT, else https://huggingface.co).")] = None,
    records: Annotated[Path | None, typer.Option(
        help="The records the model was trained on, where its directory does not name them."
        )] = None,
    terms: Annotated[Path | None, typer.Option(help="Your own terms entries (TOML), tried "
                                               "before the built-in ones.")] = None,
) -> None:
    """Push a dataset or a trained student to the Hugging Face Hub with its card, after the terms
    gate for distribution (blocked data is refused unless --accept-terms-risk)."""
    from seed.push import push as push_to_hub

    push_to_hub(path, repo, console=console, private=private, revision=revision,
                accept_terms_risk=accept_terms_risk, token_file=token_file, endpoint=endpoint,
                records=records, terms=terms)


watermark_app = typer.Typer(help="The watermark `seed serve --watermark-key-file` puts in replies.",
                            no_args_is_help=True)
app.add_typer(watermark_app, name="watermark")


@watermark_app.command("detect")
def watermark_detect(
    files: Annotated[list[Path], typer.Argument(
        help="Texts to test: plain text files, Seed records (.jsonl) or OpenAI response bodies "
        "(.json).")],
    key_file: Annotated[list[Path], typer.Option(
        help="The watermark key's file (repeatable: one per key epoch, Bonferroni-corrected).")],
    model: Annotated[Path, typer.Option(help="The served model's directory (its tokenizer).")],
    gamma: Annotated[float, typer.Option(help="The served green share (serve.watermark_gamma)."
                                         )] = 0.25,
    context: Annotated[int, typer.Option(help="The served window width "
                                         "(serve.watermark_context).")] = 2,
    threshold: Annotated[float, typer.Option(help="Exit 1 when the p-value is below this.")
                         ] = 1e-3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Test texts for the watermark: exit 1 when detected (p-value below --threshold), 0 when
    not, 2 for bad input. Prints key ids, never a key."""
    from seed.protect.detect import run_detect

    if run_detect(files, key_file, model, gamma=gamma, context=context, threshold=threshold,
                  as_json=as_json):
        raise typer.Exit(1)


@watermark_app.command("radioactivity")
def watermark_radioactivity(
    key_file: Annotated[Path, typer.Option(help="The watermark key's file (never printed).")],
    model: Annotated[str, typer.Option(
        help="The suspect: its model directory (reading mode), or with --endpoint the model's "
        "name there (API mode).")],
    texts: Annotated[list[Path] | None, typer.Option(
        help="Reading mode: texts to read the suspect with, as detect reads them (our "
        "watermarked outputs work best). API mode: prompts, one a line, or Seed records "
        "(.jsonl: their turns before the first reply).")] = None,
    endpoint: Annotated[str | None, typer.Option(
        help="The suspect's OpenAI-compatible base URL (API mode).")] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        help="API mode: our served model's directory (its tokenizer; the hash is over its "
        "token ids).")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="API mode: the environment variable that holds the suspect API's key.")] = None,
    max_tokens: Annotated[int, typer.Option(help="API mode: tokens per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="API mode: sampling temperature.")] = 0.0,
    max_cost: Annotated[float | None, typer.Option(
        help="API mode: stop starting requests past this many dollars (needs a price for the "
        "model).")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="API mode: the request cache (SQLite), so a rerun asks nothing again.")] = None,
    gamma: Annotated[float, typer.Option(help="The served green share (serve.watermark_gamma)."
                                         )] = 0.25,
    context: Annotated[int, typer.Option(help="The served window width "
                                         "(serve.watermark_context).")] = 2,
    decoys: Annotated[int, typer.Option(help="Random decoy keys to rank the real key among."
                                        )] = 100,
    threshold: Annotated[float, typer.Option(help="Exit 1 when the p-value is below this and "
                                             "the key ranks first among the decoys.")] = 1e-5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    served_to: Annotated[str | None, typer.Option(
        help="API mode: keep only the tuples our server served to this key label (its "
        "keys.toml label, key-N, or anonymous); needs --served-dir.")] = None,
    served_dir: Annotated[Path | None, typer.Option(
        help="API mode: the server's served-windows directory (serve.watermark_served_dir).")
        ] = None,
) -> None:
    """Was a suspect model trained on our watermarked outputs (Sander et al. 2024)? Exit 1 for
    evidence (consistent with training on them, never proof), 0 for none, 2 for bad input."""
    from seed.protect.radioactivity import run_reading

    if endpoint is None and (served_to is not None or served_dir is not None):
        raise UserError("--served-to and --served-dir filter API mode's tuples; give --endpoint "
                        "URL, or drop them to read a model directory")
    if endpoint is None:
        found = run_reading(Path(model), key_file, texts or [], gamma=gamma, context=context,
                            decoys=decoys, threshold=threshold, as_json=as_json)
    else:
        from seed.protect.radioactivity_api import run_api

        found = run_api(endpoint, model, key_file, texts or [], tokenizer, gamma=gamma,
                        context=context, decoys=decoys, threshold=threshold, as_json=as_json,
                        api_key_env=api_key_env, max_tokens=max_tokens, temperature=temperature,
                        max_cost=max_cost, cache=cache, served_to=served_to,
                        served_dir=served_dir)
    if found:
        raise typer.Exit(1)


export_app = typer.Typer(help="A trained student in the formats other runtimes load.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("gguf")
def export_gguf(
    model_dir: Annotated[Path, typer.Argument(help="The student's model directory, or a run "
                                              "directory (its final model/).")],
    out: Annotated[Path | None, typer.Option(help="The .gguf file to write (default: beside "
                                             "the model directory).")] = None,
    dtype: Annotated[str, typer.Option(help="f16 (half the size), f32 (exact weights) or q8_0."
                                       )] = "f16",
) -> None:
    """Write a Llama-family student as one GGUF file for llama.cpp, tokenizer and chat template
    included, and an Ollama Modelfile beside it (`ollama create NAME -f Modelfile`)."""
    from seed.export.gguf import export_gguf as write_gguf

    done = write_gguf(model_dir, out, dtype)
    console.print(f"wrote {done.path} ({done.size / 2**20:.2f} MiB, {done.tensors} tensors, "
                  f"{dtype}, tokenizer pre {done.vocab_pre}) and {done.modelfile}",
                  highlight=False, soft_wrap=True)


keys_app = typer.Typer(help="API keys for `seed serve --keys-file keys.toml`.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("hash")
def keys_hash() -> None:
    """Print the SHA-256 of a key read from stdin (or typed, unechoed): the `sha256` a keys.toml
    stores for it. The key never goes on the command line, where shell history would keep it."""
    from seed.serve.auth import hash_from_input

    print(hash_from_input(sys.stdin))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
