"""Recipes: the TOML file that names every stage's settings, validated with pydantic.

Every model forbids unknown keys, so a typo is an error that names its dotted path
(`train.lerning_rate: unknown key`) instead of a setting silently ignored. Stage sections are
optional where a stage can be left out; their defaults are the values the quickstart was tuned with.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from seed.errors import UserError


class Strict(BaseModel):
    # inf and nan are valid TOML floats, and no setting of Seed's means anything with them
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TaskSpec(Strict):
    """One reasoning-gym task family, its weight in the mix and its difficulty settings."""

    name: str
    weight: float = Field(1.0, gt=0)
    config: dict[str, Any] = Field(default_factory=dict)


class OpenAIEndpointConfig(Strict):
    """`kind = "openai"`: any OpenAI-compatible chat-completions server."""

    kind: Literal["openai"] = "openai"
    base_url: str
    model: str
    api_key_env: str | None = None
    api_key_file: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    api_version: str | None = None  # Azure OpenAI
    route: str | None = None  # direct, azure, bedrock, openrouter; inferred from the URL when unset
    batch: bool = False  # generate through the Batch API (half price, within the window)


class AnthropicEndpointConfig(Strict):
    """`kind = "anthropic"`: Claude through Anthropic's native Messages API
    (seed.endpoints.anthropic): system prompt caching, thinking blocks, `stop_reason`."""

    kind: Literal["anthropic"] = "anthropic"
    model: str
    base_url: str = "https://api.anthropic.com"
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    api_key_file: str | None = None  # when set, the key is read from it, not api_key_env
    anthropic_version: str = "2023-06-01"
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. anthropic-beta
    route: str | None = None  # direct, bedrock, ...; inferred from the URL when unset
    thinking_budget: int | None = Field(None, ge=1024)  # extended thinking's budget_tokens
    adaptive_thinking: bool = False  # `thinking: {type: adaptive}` (models that choose)
    cache_system: bool = True  # mark the system prompt for Anthropic's prompt cache
    batch: bool = False  # answer through Message Batches (half price, within 24 h)

    @model_validator(mode="after")
    def _key_file_wins(self) -> AnthropicEndpointConfig:
        # api_key_env has a default; a key file given alone must not be shadowed by it
        if self.api_key_file and "api_key_env" not in self.model_fields_set:
            self.api_key_env = None
        return self


class LocalEndpointConfig(Strict):
    """`kind = "local"`: a Hugging Face model directory, loaded in process."""

    kind: Literal["local"] = "local"
    path: str


class TasksEndpointConfig(Strict):
    """`kind = "tasks"`: reasoning-gym generators, answering with their ground truth."""

    kind: Literal["tasks"] = "tasks"
    tasks: list[TaskSpec] = Field(default_factory=list)


class ShapesConfig(Strict):
    """`kind = "shapes"`: procedural two-object images, exactly verifiable (seed.endpoints.shapes).

    Captions name a left and a right object ("red circle left of blue square"); `held_out` of
    the compositions are kept for evaluation and never drawn for training."""

    kind: Literal["shapes"] = "shapes"
    size: int = Field(32, ge=12, le=256)  # canvas side in pixels
    colors: list[str] = Field(default_factory=lambda: ["red", "green", "blue", "yellow"],
                              min_length=1)
    shapes: list[str] = Field(default_factory=lambda: ["circle", "square", "triangle"],
                              min_length=1)
    background: Literal["black", "white"] = "black"
    held_out: float = Field(0.25, ge=0, lt=1)  # share of compositions kept for evaluation
    seed: int = 0  # picks the held-out compositions and each image's jitter


# Anything that answers chat messages; `kind` picks the variant, and each variant takes only its
# own keys, so a `base_url` under `kind = "tasks"` is an unknown key.
EndpointConfig = Annotated[OpenAIEndpointConfig | AnthropicEndpointConfig | LocalEndpointConfig
                           | TasksEndpointConfig, Field(discriminator="kind")]


class ImagesEndpointConfig(Strict):
    """`kind = "images"`: any server speaking OpenAI's Images API (`POST /v1/images/generations`)
    as the teacher of image records (seed.endpoints.images_api)."""

    kind: Literal["images"] = "images"
    base_url: str
    model: str  # dall-e-2, dall-e-3, gpt-image-1, gpt-image-1-mini, gpt-image-1.5, or a server's
    api_key_env: str | None = None
    api_key_file: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    route: str | None = None  # direct, azure, ...; inferred from the URL when unset


class PipelineTeacherConfig(Strict):
    """`kind = "pipeline"`: a local diffusers pipeline directory draws the teacher's images."""

    kind: Literal["pipeline"] = "pipeline"
    path: str
    device: str = "cpu"


# What `generate.teacher` can be: a chat teacher, or one that draws images.
TeacherConfig = Annotated[OpenAIEndpointConfig | AnthropicEndpointConfig | LocalEndpointConfig
                          | TasksEndpointConfig | ShapesConfig | ImagesEndpointConfig
                          | PipelineTeacherConfig, Field(discriminator="kind")]
IMAGE_TEACHERS = ("shapes", "images", "pipeline")  # the kinds that write image records


def chat_teacher(teacher: TeacherConfig) -> EndpointConfig | None:
    """`teacher` when it answers chat messages (the judge's default baseline), else None."""
    if isinstance(teacher, OpenAIEndpointConfig | AnthropicEndpointConfig | LocalEndpointConfig
                  | TasksEndpointConfig):
        return teacher
    return None


class PromptFile(Strict):
    """A prompts file: JSONL (`messages` or `prompt`), CSV (a named column) or text lines."""

    path: str
    format: Literal["auto", "jsonl", "csv", "text"] = "auto"
    column: str | None = None  # CSV
    license: str | None = None
    name: str | None = None


class SelfInstructConfig(Strict):
    seed_tasks: str  # JSONL with `instruction` (the Self-Instruct format) or any prompts file
    num_instructions: int = Field(100, gt=0)
    license: str | None = None


class EvolInstructConfig(Strict):
    rounds: int = Field(1, gt=0)
    breadth_share: float = Field(0.25, ge=0, le=1)
    keep_original: bool = True


# Requests in flight at most: each is a coroutine and a pooled connection, and past this many a
# machine runs out of sockets before any teacher's rate limit is the bound.
MAX_CONCURRENCY = 10_000
DAY = 86_400.0  # seconds: the longest wait (a timeout, a backoff) that is not a mistake


class LimitsConfig(Strict):
    concurrency: int = Field(32, gt=0, le=MAX_CONCURRENCY)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    max_attempts: int = Field(6, gt=0)
    timeout: float = Field(120.0, gt=0, le=DAY)
    retry_on_length: bool = False
    backoff_base: float = Field(1.0, gt=0, le=DAY)  # seconds before the first retry; doubles
    backoff_max: float = Field(60.0, gt=0, le=DAY)


class BatchConfig(Strict):
    """`[generate.batch]`: how a batch run (`generate.teacher.batch = true`) waits and splits."""

    poll_interval: float = Field(30.0, gt=0, le=DAY)  # seconds between polls of the jobs
    completion_window: str = "24h"  # OpenAI's (the only value it takes today); Anthropic's is 24h
    retry_online: bool = True  # expired and failed items through the online API, else failed
    max_requests: int | None = Field(None, gt=0)  # per job, below the provider's own limit
    max_bytes: int | None = Field(None, gt=0)  # per job input file, below the provider's


class FiltersConfig(Strict):
    exact_duplicates: bool = True
    near_duplicates: float | None = Field(None, gt=0, lt=1)  # MinHash Jaccard threshold
    embedding_model: str | None = None  # a local sentence-transformers directory
    embedding_threshold: float = Field(0.95, gt=0, le=1)
    min_prompt_chars: int = Field(1, ge=0)
    max_prompt_chars: int | None = Field(None, gt=0)
    drop_refusals: bool = True  # answers: refusals and "as an AI language model"
    # Answers claiming, in the first person, to be another model or made by its vendor ("I am
    # ChatGPT", "我是通义千问"; seed.protect.identity): drop them, keep them flagged
    # (meta.identity_claims), or off. Answer filters apply to HTTP teachers' answers, which is
    # where such claims come from; a tasks teacher writes generator ground truth, never filtered.
    identity: Literal["drop", "flag", "off"] = "drop"
    min_answer_chars: int = Field(1, ge=0)
    # image records: drop an image whose 64-bit dHash is within this many bits of one kept
    # (None: exact sha256 duplicates only)
    image_hamming: int | None = Field(None, ge=0, le=64)


class IdentityRecordsConfig(Strict):
    """`[generate.identity_records]`: Seed-written records teaching the student its own
    `policy.student_name` (seed.protect.identity_records)."""

    count: int = Field(40, ge=0)  # 0 removes those an earlier run added
    developer: str | None = Field(None, min_length=1, max_length=100)  # named in the answers


class PromptExpansionConfig(Strict):
    """`[generate.expand]`: for an image teacher, a chat teacher writes `variations` detailed
    image prompts from each prompt of the files (seed.generate.images)."""

    teacher: OpenAIEndpointConfig
    variations: int = Field(2, gt=0, le=16)
    keep_original: bool = True
    params: dict[str, Any] = Field(default_factory=dict)  # the chat teacher's sampling


class VerifyConfig(Strict):
    """`[generate.verify]`: each sampled answer is checked before it is kept (rejection sampling;
    seed.generate.verify). The answer is read from the reply's content, never its reasoning."""

    kind: Literal["task", "math", "json_schema"]  # reasoning-gym's scorer, math-verify, a schema
    keep: Literal["first_correct", "all_correct", "pairs"] = "first_correct"
    # where the answer is in a reply: auto = the last <answer>...</answer>, else the last
    # \boxed{...}, else the last "Answer:" line, else the whole reply
    extract: Literal["auto", "answer_tag", "boxed", "answer_line", "whole"] = "auto"
    threshold: float = Field(1.0, gt=0, le=1)  # task: the scorer's score that counts as correct
    reference: str = "answer"  # math: the prompts' field (JSONL key, CSV column) with the answer
    json_schema: dict[str, Any] | None = None  # json_schema: default generate.response_schema


class PriceSpec(Strict):
    """One `[generate.prices]` row as a table: dollars per million tokens (seed.generate.budget;
    cached input and cache writes default to input, batch prices to half of online)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)
    cache_write: float | None = Field(None, ge=0)
    batch_input: float | None = Field(None, ge=0)
    batch_output: float | None = Field(None, ge=0)


class GenerateConfig(Strict):
    teacher: TeacherConfig
    num_records: int = Field(1000, gt=0)
    # openai teachers: prompt sources, sampling, limits, budget (see seed.generate.teacher)
    prompts: list[PromptFile] = Field(default_factory=list)
    self_instruct: SelfInstructConfig | None = None
    evol_instruct: EvolInstructConfig | None = None
    turns: int = Field(1, gt=0)  # user turns per conversation; the teacher writes follow-ups
    samples: int = Field(1, gt=0, le=128)  # answers per prompt (`n`; OpenAI's limit is 128)
    # openai teachers: prompts (and held-out eval.jsonl) from these reasoning-gym families
    tasks: list[TaskSpec] = Field(default_factory=list)
    verify: VerifyConfig | None = None  # check each answer before it is kept
    params: dict[str, Any] = Field(default_factory=dict)  # temperature, max_tokens, logprobs, ...
    response_schema: dict[str, Any] | None = None  # JSON schema the answer must satisfy
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)  # with generate.teacher.batch
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    identity_records: IdentityRecordsConfig | None = None
    # $/1M tokens: "model" = [input, output], or a PriceSpec table (cached, batch prices)
    prices: dict[str, tuple[float, float] | PriceSpec] = Field(default_factory=dict)
    forecast: bool = False  # `seed run`: print the forecast (seed.generate.forecast) first
    forecast_sample: int = Field(100, gt=0)  # prompts the forecast answers (and pays for)
    # image teachers: dollars per image, by "model", "model:quality", "model:size" or
    # "model:size:quality" (the most specific wins); token-priced models use `prices`
    image_prices: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    expand: PromptExpansionConfig | None = None  # image prompts written by a chat teacher
    max_cost: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    eval_prompts: int = Field(200, ge=0)
    # Evaluation items come from a seed this far from the training seed (reasoning-gym builds item
    # i from Random(seed + i), so nearby seeds share items); overlapping questions are dropped too.
    eval_seed_offset: int = 1_000_000_007

    @model_validator(mode="after")
    def _openai_only(self) -> GenerateConfig:
        # The tasks teacher answers its own prompts with ground truth: nothing to verify.
        if self.teacher.kind not in ("openai", "anthropic"):
            for key in ("tasks", "verify"):
                if getattr(self, key):
                    raise PydanticCustomError(
                        "openai_only", "{key} is for an HTTP teacher's answers (a tasks teacher "
                        "takes its families under generate.teacher.tasks)", {"key": key})
        if self.forecast and self.teacher.kind not in ("openai", "anthropic"):
            raise PydanticCustomError("forecast", "forecast is for an openai or anthropic "
                                      "teacher's answers; a {kind} teacher is not forecast",
                                      {"kind": self.teacher.kind})
        return self

    @field_validator("prices")
    @classmethod
    def _prices(cls, prices: dict[str, tuple[float, float] | PriceSpec]
                ) -> dict[str, tuple[float, float] | PriceSpec]:
        for model, pair in prices.items():  # a table's fields are checked by PriceSpec
            if isinstance(pair, tuple) and min(pair) < 0:  # a budget would grow forever
                raise PydanticCustomError("price", "{model}: prices are dollars per million "
                                          "tokens, 0 or more", {"model": repr(model)})
        return prices

    @field_validator("params")
    @classmethod
    def _params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters Seed itself reads have the types it reads them as; others go to the
        teacher as they are, and it answers for them."""
        if "n" in params:
            raise PydanticCustomError("params_n", "n: set generate.samples instead")
        for key, (types, least) in _PARAM_TYPES.items():
            value = params.get(key)
            if value is not None and (isinstance(value, bool) != (types is bool)
                                      or not isinstance(value, types)
                                      or (least is not None and value < least)):
                raise PydanticCustomError("param_type", "{key}: {value} is not {what}",
                                          {"key": key, "value": repr(value),
                                           "what": _PARAM_WHAT[key]})
        return params


# generate.params that Seed reads (to pace and count requests): their types and least values.
_PARAM_TYPES: dict[str, tuple[Any, float | None]] = {
    "max_tokens": (int, 1), "max_completion_tokens": (int, 1), "logprobs": (bool, None),
    "top_logprobs": (int, 0), "temperature": ((int, float), 0)}
_PARAM_WHAT = {"max_tokens": "a whole number of tokens, 1 or more",
               "max_completion_tokens": "a whole number of tokens, 1 or more",
               "logprobs": "true or false", "top_logprobs": "a whole number, 0 or more",
               "temperature": "a number, 0 or more"}


class StudentConfig(Strict):
    size: str = "tiny"  # a named from-scratch size, see seed.train.models.SIZES
    checkpoint: str | None = None  # a local model directory to start from instead
    chat_template: str | None = None  # a Jinja template, or a file holding one, for a checkpoint


class TokenizerConfig(Strict):
    kind: Literal["digits", "chars", "bpe"] = "digits"
    vocab_size: int = Field(512, gt=0)


class LoraSettings(Strict):
    """LoRA adapters (peft) instead of full fine-tuning; QLoRA with load_in_4bit on a CUDA GPU."""

    rank: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    load_in_4bit: bool = False
    merge: bool = True  # model/ holds base + adapter merged; adapter/ always holds the adapter


class DistillSettings(Strict):
    """Distillation: `kd` from records' top-k logprobs, `online_kd` from a local teacher model."""

    teacher: str | None = None  # online_kd: a local model directory sharing the student's tokenizer
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, gt=0, lt=1)  # jsd mixture weight
    temperature: float = Field(1.0, gt=0)
    weight: float = Field(1.0, ge=0, le=1)  # loss = weight * KD + (1 - weight) * SFT
    top_k: int = Field(20, gt=0)  # kd: teacher alternatives kept per token


class DpoSettings(Strict):
    """Direct preference optimization from records with meta.chosen / meta.rejected."""

    beta: float = Field(0.1, gt=0)


class GrpoSettings(Strict):
    """`[train.grpo]`: RL with verifiable rewards (`train.mode = "grpo"`, seed.train.grpo).

    Each step samples `group` completions for each of `prompts_per_step` prompts (the train
    records' prompts) from the current weights, scores them with `reward`, and takes one clipped
    policy-gradient step on the group-normalised advantages.
    """

    group: int = Field(8, ge=2)  # completions per prompt (G)
    prompts_per_step: int = Field(16, gt=0)  # over all processes
    max_new_tokens: int = Field(16, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0)  # KL to the starting model (k3); 0: no reference model
    clip: float = Field(0.2, gt=0, lt=1)  # the ratio's clip range: [1 - clip, 1 + clip]
    reward: str = "task"  # "task": the record's reasoning-gym verifier; or "package.module:fn"
    scale_rewards: bool = True  # divide advantages by the group's std; false: Dr. GRPO
    normalise: Literal["token", "sequence"] = "token"  # DAPO token-mean or GRPO's per sequence


class DiffusionSettings(Strict):
    """`[train.diffusion]`: a text-to-image student (`train.mode = "diffusion"`).

    From scratch (no train.student.checkpoint): a pixel-space UNet of `channels` per resolution
    (cross-attention where `attention` is true), a CLIP text encoder of `text_layers` x
    `text_width` and a word-level tokenizer, trained with rectified flow. From a diffusers
    checkpoint: latent training with its own VAE and prediction type (the shape keys are unused).
    """

    timesteps: Literal["logit_normal", "uniform"] = "logit_normal"  # how training draws t
    caption_dropout: float = Field(0.1, ge=0, lt=1)  # empty captions, for classifier-free guidance
    ema_decay: float = Field(0.999, ge=0, lt=1)  # 0: no EMA; model/ holds the EMA weights
    size: int = Field(16, ge=8, le=1024)  # the canvas (square pixels) of a from-scratch student
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    attention: list[bool] = Field(default_factory=lambda: [False, False, True], min_length=1)
    layers_per_block: int = Field(1, gt=0)
    head_dim: int = Field(16, gt=0)
    text_width: int = Field(64, gt=0)
    text_layers: int = Field(1, gt=0)
    sample_steps: int = Field(12, gt=0)  # the saved pipeline's default steps and guidance
    guidance: float = Field(3.0, ge=0)


class TrainConfig(Strict):
    mode: Literal["sft", "kd", "online_kd", "dpo", "diffusion", "grpo"] = "sft"
    student: StudentConfig = Field(default_factory=StudentConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    seq_len: int = Field(256, gt=0)
    batch_size: int = Field(16, gt=0)  # packed sequences per micro-batch
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(200, gt=0)
    log_every: int = Field(10, gt=0)
    threads: int | None = Field(None, gt=0, le=4096)  # 4096 ran (slowly); 100000 aborted
    lora: LoraSettings | None = None
    distill: DistillSettings = Field(default_factory=DistillSettings)
    dpo: DpoSettings = Field(default_factory=DpoSettings)
    grpo: GrpoSettings = Field(default_factory=GrpoSettings)
    diffusion: DiffusionSettings = Field(default_factory=DiffusionSettings)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on a CUDA GPU
    compile: bool = False  # torch.compile; rows are fixed-length, so packing never recompiles
    grad_checkpointing: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (ddp) or shard (fsdp)
    loss_chunk: int | None = Field(None, ge=0)  # SFT loss this many tokens at a time; 0: off
    eval_fraction: float = Field(0.0, ge=0, lt=1)  # records held out for eval loss
    # An assistant turn's thinking trace (reasoning_content): train = thought and answer in the
    # loss (as R1-Distill, OpenThoughts and s1 do), answer = thought shown but masked, drop = gone
    reasoning: Literal["train", "answer", "drop"] = "train"
    eval_every: int = Field(100, gt=0)
    peak_flops: float | None = Field(None, gt=0)  # per device, for MFU where it is not known
    # Experiment trackers that also get metrics.jsonl's lines (seed.train.trackers). Where a run
    # is reported changes no weight: left out of dumps, so no fingerprint or stage hash moves.
    report_to: list[Literal["tensorboard", "trackio", "wandb", "mlflow"]] = Field(
        default_factory=list, exclude=True)


class JudgeConfig(Strict):
    """`[eval.judge]`: grade the student against a baseline with a judge model (seed.evaluate)."""

    endpoint: EndpointConfig  # the judge: an openai server or a local model directory
    baseline: EndpointConfig | None = None  # default: the generate teacher
    mode: Literal["pairwise", "single"] = "pairwise"
    questions: str | None = None  # records or MT-Bench question.jsonl; default: held-out prompts
    references: str | None = None  # MT-Bench reference answers, for reference-guided grading
    max_questions: int | None = Field(None, gt=0)
    prompts_dir: str | None = None  # your own copy of seed/evaluate/prompts/
    json_schema: bool = True  # send response_format with a JSON schema (constrained decoding)
    max_tokens: int = Field(512, gt=0)  # the judge's reply
    answer_max_tokens: int = Field(256, gt=0)  # the student's and the baseline's answers
    concurrency: int = Field(8, gt=0, le=MAX_CONCURRENCY)  # judge and baseline requests in flight
    requests_per_minute: float | None = Field(None, gt=0)
    max_attempts: int = Field(6, gt=0)
    timeout: float = Field(120.0, gt=0, le=DAY)  # seconds per request

    @model_validator(mode="after")
    def _anthropic_reads_text(self) -> JudgeConfig:
        # Seed maps no response format onto Anthropic's Messages API: its judge is read from text
        if self.endpoint.kind == "anthropic":
            if self.json_schema and "json_schema" in self.model_fields_set:
                raise PydanticCustomError(
                    "anthropic_schema", "json_schema = true: an anthropic judge takes no "
                    "response format in Seed; set json_schema = false (its reply is read from "
                    "its text)")
            self.json_schema = False
        return self


class WatermarkEvalConfig(Strict):
    """`[eval.watermark]`: the teacher watermarked its replies with a key you hold; test the
    training data (detect) and the student (radioactivity, reading mode) for it
    (seed.evaluate.watermark_run). The settings are the teacher server's."""

    key_file: str  # the key's file; never the key itself (a recipe is kept in the run manifest)
    gamma: float = Field(0.25, gt=0, lt=1)  # serve.watermark_gamma
    context: int = Field(2, ge=1, le=8)  # serve.watermark_context
    tokenizer: str | None = None  # the served model's directory; default train.student.checkpoint
    decoys: int = Field(100, ge=0, le=10_000)  # decoy keys the real one is ranked among
    max_texts: int = Field(200, gt=0)  # training answers the student reads
    threshold: float = Field(1e-5, gt=0, lt=1)  # p-value under which a result is evidence


class ImageEvalConfig(Strict):
    """`[eval.images]`: an image student draws every held-out prompt once per sampling seed and the
    procedural teacher's verifier grades each image (seed.evaluate.images)."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)  # sampling seeds
    steps: int | None = Field(None, gt=0, le=1000)  # denoising steps; default: the pipeline's
    guidance: float | None = Field(None, ge=0, le=50)  # CFG scale; default: the pipeline's
    batch_size: int = Field(64, gt=0)  # images denoised together
    max_prompts: int | None = Field(None, gt=0)  # held-out prompts drawn; default: all
    train_prompts: int = Field(0, ge=0)  # also grade this many training prompts, for comparison
    grid: int = Field(24, ge=0)  # held-out samples shown in the report
    clip_model: str | None = None  # a local CLIP directory for the CLIP score; skipped when unset


class EvalConfig(Strict):
    max_new_tokens: int = Field(32, gt=0)
    batch_size: int = Field(64, gt=0)
    samples: int = Field(12, ge=0)  # conversations shown in the report
    judge: JudgeConfig | None = None  # also judge the student against a baseline
    watermark: WatermarkEvalConfig | None = None  # test data and student for the teacher's key
    images: ImageEvalConfig = Field(default_factory=ImageEvalConfig)  # image recipes only


class PolicyConfig(Strict):
    """How the student will be used, which the terms gate checks the training records against."""

    student_name: str | None = None
    distribute: bool = True  # the strict default: assume the student leaves the building
    commercial: bool = True
    task: Literal["chat", "classifier", "image_generator"] = "chat"
    unknown: Literal["warn", "block"] = "warn"  # records whose terms cannot be matched or read
    overrides: str | None = None  # a terms file of your own (e.g. written permission you hold)
    license: str | None = None  # the student's own license, for its model card


class ServeConfig(Strict):
    """`seed serve`: what to serve, where, for whom, and the engine's limits; built once, from a
    recipe's `[serve]` table and the command's flags (which win), then passed whole to the server
    and its engine process. The API key never appears in a dump, a repr or a recipe."""

    model: Path | None = None  # a model directory; or
    upstream: str | None = None  # an OpenAI-compatible server to front instead (vLLM, SGLang, ...)
    model_name: str | None = None  # what clients ask for; default: the model directory's name
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, exclude=True)  # --api-key or SEED_API_KEY only
    keys_file: Path | None = None  # accepted keys: one per line, or a keys.toml (serve/policy.py)
    usage_log: Path | None = None  # one JSON line per request (a key by its label, never its value)
    # Host names a loopback-bound server also answers to (localhost, 127.0.0.1 and [::1] always
    # do); any other Host header is refused, so a web page cannot reach it by DNS rebinding.
    allowed_hosts: list[str] = Field(default_factory=list)
    # The largest request body read (seed.serve.guard says why 8 MiB); 1 GiB of JSON never parses.
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, le=1024 ** 3)
    upstream_timeout: float = Field(600.0, gt=0)  # seconds an upstream may take to answer
    max_running: int = Field(32, gt=0, le=4096)  # sequences in one batch
    max_queue: int = Field(256, ge=0)  # waiting sequences before a 429
    max_prefill_tokens: int = Field(2048, gt=0)  # prompt tokens prefilled per engine step
    threads: int | None = Field(None, gt=0)  # CPU threads for the model; default: torch's choice
    device: str | None = None  # default: cuda when there is one, else cpu
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 on a GPU, else float32
    # How the model writes tool calls; auto: read from the chat template (serve/tools.py)
    tool_parser: Literal["auto", "hermes", "llama3_json", "mistral"] = "auto"
    # Where a reply's reasoning is; auto: <think>...</think> when the chat template writes <think>
    reasoning_parser: Literal["auto", "none", "think"] = "auto"
    # Watermark every reply with the key in this file (seed.protect.watermark; the key is read by
    # the engine process and never logged, only its id is shown): delta added to a gamma share of
    # the vocabulary, green after each window of `watermark_context` tokens
    watermark_key_file: Path | None = None
    watermark_gamma: float = Field(0.25, gt=0, lt=1)
    watermark_delta: float = Field(2.0, ge=0, le=20)
    watermark_context: int = Field(2, ge=1, le=8)
    # Append the windows of each watermarked reply, as keyed digests (no text, no token ids), to
    # one file per key label here, for `seed watermark radioactivity --served-to LABEL`
    # (seed.protect.served); off when unset
    watermark_served_dir: Path | None = None
    # An image pipeline directory (one with model_index.json; seed.serve.images): images in one
    # denoising batch, images waiting before a 429, and how long a response_format url lives (s)
    max_images_running: int = Field(16, gt=0, le=1024)
    max_images_queue: int = Field(64, ge=0)
    image_url_ttl: float = Field(3600.0, gt=0)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not _HOST_NAME.fullmatch(host):
                raise PydanticCustomError("host_name", "'{host}' is not a host name; give names "
                                          "like seed.internal or [fd00::1], without a scheme or "
                                          "port", {"host": host})
        return [h.lower() for h in hosts]


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")

MAX_SEED = 2**32 - 1  # what every seeded generator takes (numpy's range; torch's is wider)

NO_KEYS_IN_RECIPES = ("keep keys out of recipes: list them in the file serve.keys_file names, or "
                      "pass --api-key (SEED_API_KEY)")


class Recipe(Strict):
    name: str  # the run directory's name: runs_dir/<name>
    seed: int = Field(0, ge=0, le=MAX_SEED)
    runs_dir: str = "runs"
    generate: GenerateConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    # `[rl]`: a second training stage on train's student (mode = "grpo", on the same records);
    # `seed run` then grades, cards and serves rl/model, with train/model as eval's baseline
    rl: TrainConfig | None = None
    eval: EvalConfig = Field(default_factory=EvalConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    serve: ServeConfig | None = None  # `seed serve --recipe` reads only this table

    @field_validator("name")
    @classmethod
    def _one_directory_name(cls, name: str) -> str:
        # The run is written to runs_dir/<name>: a path there would write somewhere else.
        if name.strip() in ("", ".") or any(bad in name for bad in ("/", "\\", "..", "\0")):
            raise PydanticCustomError("run_name", "{name} is not a plain directory name (no "
                                      "'/', '\\' or '..'); it names the run directory "
                                      "runs_dir/<name>", {"name": repr(name)})
        return name

    @field_validator("rl")
    @classmethod
    def _rl_after_train(cls, rl: TrainConfig | None) -> TrainConfig | None:
        if rl is not None and rl.mode != "grpo":
            raise PydanticCustomError("rl_mode", "the [rl] stage trains with mode = \"grpo\"; "
                                      "set rl.mode = \"grpo\" (other modes go in [train])")
        if rl is not None and rl.student.checkpoint:
            raise PydanticCustomError("rl_student", "the [rl] stage starts from train's student "
                                      "(train/model); remove rl.student.checkpoint")
        return rl

    @field_validator("serve", mode="before")
    @classmethod
    def _no_api_key(cls, table: Any) -> Any:
        # A recipe's text is kept in its run's manifest: a key written in it would be persisted.
        if isinstance(table, dict) and "api_key" in table:
            raise ValueError(NO_KEYS_IN_RECIPES)
        return table


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field can hold, through `| None`, lists, dicts and `Annotated`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def recipe_path(loc: tuple[int | str, ...]) -> str:
    """An error's location as the dotted path a recipe's author writes.

    Under a union discriminated by `kind`, pydantic puts the variant's tag in the location
    (`generate.teacher.tasks.base_url`); the author wrote no such table, so the tag is left out.
    """
    parts: list[str] = []
    models: list[type[BaseModel]] = [Recipe]
    for part in loc:
        if len(models) > 1:
            variant = [m for m in models if "kind" in m.model_fields
                       and m.model_fields["kind"].default == part]
            if variant:
                models = variant
                continue
        parts.append(str(part))
        if isinstance(part, str):
            fields = [m.model_fields[part] for m in models if part in m.model_fields]
            models = [m for f in fields for m in _models_in(f.annotation)]
    return ".".join(parts)


def _describe(err: Mapping[str, Any]) -> str:
    where = recipe_path(err["loc"]) or "(top level)"
    if err["type"] == "union_tag_not_found":
        return f"{where}.kind: missing key"
    if err["type"] == "union_tag_invalid":
        *others, last = err["ctx"]["expected_tags"].split(", ")
        return f"{where}.kind: input should be {', '.join(others)} or {last}"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if err["type"] == "missing":
        return f"{where}: missing key"
    msg = err["msg"]  # pydantic's messages start with a capital; the values in them are kept
    return f"{where}: {msg[:1].lower()}{msg[1:]}"


def read_toml(path: str | Path) -> tuple[dict[str, Any], str]:
    """A recipe file's tables and its text; a missing file or bad TOML is a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give the recipe's TOML file")
    if not path.is_file():
        raise UserError(f"{path}: no such recipe file; check the path")
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text), text
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8 "
                        "TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix the syntax") from None


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    """Read and validate a recipe; return it with its text (kept in the run manifest)."""
    data, text = read_toml(path)
    try:
        return Recipe.model_validate(data), text
    except ValidationError as e:
        problems = "; ".join(_describe(err) for err in e.errors())
        raise UserError(f"{path}: {problems}") from None


def load_serve_config(recipe: str | Path | None, flags: dict[str, Any]) -> ServeConfig:
    """The serve config: a recipe's `[serve]` table (no other table is read, so a serve-only recipe
    needs no `[generate]`) with the flags that were given (not None) on top, validated once.

    A problem names `serve.<key>` and the recipe when the value came from it, else the flag.
    """
    table: dict[str, Any] = {}
    if recipe is not None:
        data, _ = read_toml(recipe)
        if not isinstance(data.get("serve"), dict):
            raise UserError(f"{recipe}: no [serve] table; add one (serve.model, serve.port, ...) "
                            "or drop --recipe")
        table = data["serve"]
        if "api_key" in table:
            raise UserError(f"{recipe}: serve.api_key: {NO_KEYS_IN_RECIPES}")
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return ServeConfig.model_validate({**table, **given})
    except ValidationError as e:
        problems = "; ".join(_describe({**err, "loc": (_source(err["loc"], given, recipe),)})
                             for err in e.errors())
        raise UserError(problems) from None


def _source(loc: tuple[int | str, ...], flags: dict[str, Any], recipe: str | Path | None) -> str:
    """Where a serve setting came from: its flag, or `serve.<key>` in the recipe."""
    key = str(loc[0]) if loc else ""
    if key in flags:
        flag = {"model": "MODEL", "allowed_hosts": "--allowed-host"}.get(key)
        return flag or "--" + key.replace("_", "-")
    return f"{recipe}: serve.{key}" if key else f"{recipe}: [serve]"
