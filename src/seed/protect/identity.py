"""Self-identification as a known model or vendor: the detector, the probes, the claim rate.

A student distilled from a teacher repeats what the teacher says about itself ("I am ChatGPT, a
model trained by OpenAI"): that misleads the student's users and tells the teacher's owner whose
outputs it learned from. This module finds such claims in text:

- `identity_claims(text)`: the vendors a text claims, in the first person, to be or to be made by:
  "I am Claude", "As an AI developed by OpenAI", "My name is Gemini", "我是通义千问",
  "我是由OpenAI开发的", "作为OpenAI训练的语言模型，", "Ich bin ChatGPT", "Je suis un modèle
  développé par Mistral AI", "私はChatGPTです". Third-person mentions ("ChatGPT is a model by
  OpenAI", "compare GPT-4 and Claude"), comparisons ("I am not as capable as ChatGPT") and
  denials ("I'm not ChatGPT") are not claims. Precision comes before recall: a pattern needs the
  first-person subject and the name in one clause with at most a short descriptor ("an AI
  assistant created by") between them, so a claim worded in some other way is missed.
- `PROBES`: 40 questions in 9 languages that ask a model who it is.
- `claim_rate(claims, n)`: the share of claiming answers with its Wilson score interval.

It reads text and nothing else: `seed.generate.filters` applies it to a teacher's answers,
`seed.protect.identity_eval` sends the probes to a model and scores the answers, and
`seed.protect.identity_records` writes training records in which the student names itself (with
questions other than the probes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from seed.evaluate.stats import wilson_interval

# Who makes which models: a claim of any name counts as a claim of its vendor. Names that are also
# ordinary words ("meta", "llama", "gemini", "bard") count only when capitalised (_COMMON_WORDS).
VENDORS: dict[str, tuple[str, ...]] = {
    "OpenAI": ("OpenAI", "Open AI", "ChatGPT", "GPT", "Codex"),
    "Anthropic": ("Anthropic", "Claude"),
    "Google": ("Google DeepMind", "Google", "DeepMind", "Gemini", "Gemma", "Bard", "PaLM",
               "LaMDA", "谷歌"),
    "Meta": ("Meta AI", "Meta", "LLaMA", "Llama", "Facebook"),
    "Alibaba": ("Alibaba Cloud", "Alibaba", "Qwen", "Tongyi", "阿里巴巴", "阿里云", "通义千问",
                "通义", "千问"),
    "DeepSeek": ("DeepSeek", "深度求索"),
    "Mistral AI": ("Mistral AI", "Mistral", "Mixtral"),
    "Baidu": ("Baidu", "ERNIE", "百度", "文心一言", "文心"),
    "ByteDance": ("ByteDance", "Doubao", "Skylark", "字节跳动", "豆包", "云雀"),
    "Moonshot AI": ("Moonshot AI", "Moonshot", "Kimi", "月之暗面"),
    "Zhipu AI": ("Zhipu AI", "Zhipu", "ChatGLM", "GLM", "智谱清言", "智谱"),
    "xAI": ("xAI", "Grok"),
    "Microsoft": ("Microsoft", "Copilot", "微软"),
    "Tencent": ("Tencent", "Hunyuan", "腾讯", "混元"),
    "iFlytek": ("iFlytek", "讯飞星火", "科大讯飞"),
    "Baichuan": ("Baichuan", "百川"),
    "01.AI": ("01.AI", "零一万物"),
    "MiniMax": ("MiniMax",),
    "LMSYS": ("LMSYS", "Vicuna"),
    "Cohere": ("Cohere",),
}
_COMMON_WORDS = {"meta", "llama", "gemini", "bard", "grok", "kimi", "copilot", "codex", "mistral",
                 "google", "skylark", "facebook", "vicuna"}
_VENDOR_OF = {name.lower(): vendor for vendor, names in VENDORS.items() for name in names}

# Each pattern holds `{N}`, where one name goes; each matches one first-person clause.
_EN_SUBJECT = r"\b(?:I\s+am|I['’]m)"
_EN_ADVERB = r"(?:(?:actually|really|just|simply|only|merely|indeed|still|in\s+fact),?\s+)*"
_EN_MADE = (r"(?:created|developed|trained|made|built|designed|programmed|produced|engineered|"
            r"released|provided|owned|operated|powered|fine-?tuned|launched|maintained)")
_EN_SELF = (r"(?:AI|A\.I\.|assistant|model|chat\s?bot|bot|system|LLM|program|agent|intelligence|"
            r"network|product|entity)")
_EN_TEAM = r"(?:the\s+(?:team|folks|researchers|engineers|people)\s+at\s+|the\s+)?"
# "an AI assistant created by {N}": a short descriptor (no "of", "like", "than", ... inside it)
_EN_DESCRIBED = (_EN_ADVERB + r"(?:an?|the|your|one)\s+(?:(?!(?:of|for|with|like|than|and|or|"
                 r"about|in|on|to|not|using)\b)[\w-]+\s+){0,5}?" + _EN_SELF
                 + r",?\s+(?:(?:that|which|who)\s+was\s+)?(?:" + _EN_MADE
                 + r"\s+(?:by|at)|from|of|by)\s+" + _EN_TEAM + "{N}")
PATTERNS: dict[str, tuple[str, ...]] = {
    "en": (
        # I am Claude / I'm ChatGPT / I am a version of GPT-4 / I'm based on Llama
        _EN_SUBJECT + r"\s+" + _EN_ADVERB + r"(?:(?:called|named|known\s+as|based\s+on|"
        r"powered\s+by|built\s+on|an?\s+(?:instance|version|variant)\s+of)\s+)?(?:the\s+)?{N}",
        # I am an AI assistant created by Anthropic
        _EN_SUBJECT + r"\s+" + _EN_DESCRIBED,
        # As a language model AI developed by OpenAI, I ... ("such as an AI made by X" is not)
        r"(?<!such\s)(?<!well\s)(?<!known\s)(?<!same\s)\bas\s+" + _EN_DESCRIBED
        + r"(?=[^.!?\n]{0,120}?\b(?:I|my|me)\b)",
        # I was trained by OpenAI / I'm made by Anthropic
        r"\bI\s+(?:am|was|have\s+been)\s+" + _EN_ADVERB + _EN_MADE + r"\s+(?:by|at)\s+"
        + _EN_TEAM + "{N}",
        r"\bI['’](?:m|ve\s+been)\s+" + _EN_ADVERB + _EN_MADE + r"\s+(?:by|at)\s+" + _EN_TEAM
        + "{N}",
        r"\bmy\s+name\s+is\s+{N}", r"\b(?:call\s+me|I\s+go\s+by)\s+{N}",
        r"\bmy\s+(?:creators?|developers?|makers?)\s+(?:is\s+|are\s+|at\s+)?" + _EN_TEAM + "{N}",
        # As ChatGPT, I ... / As an OpenAI model, I ... (opening a clause: "as capable as
        # ChatGPT, I am ..." is a comparison)
        r"(?:\A|(?<=[.!?:;\n]))\s*as\s+(?:an?\s+)?{N}(?:[\w.-]*)(?:\s+(?:model|assistant|AI|language\s+model))?\s*,"
        r"\s*I\b",
    ),
    "zh": (
        # 我是通义千问 / 我是由OpenAI开发的 / 我是一个由百度研发的 ...
        r"我是(?!否|不)[^，。！？,.!?；;：:\n不非否在用从对跟和与像比]{0,16}?{N}"
        r"(?!\w{0,4}?的?(?:粉丝|用户|使用者|爱好者|员工|客户|产品经理))",
        r"我(?:叫|的名字(?:是|叫))\s*{N}",
        r"我由[^，。！？,.!?；;：:\n]{0,8}?{N}",
        # 作为OpenAI开发的语言模型 / 作为ChatGPT，我
        r"作为[^，。！？,.!?；;：:\n]{0,10}?{N}[\w\s-]{0,6}?(?:开发|训练|创建|打造|研发|推出|构建|设计|"
        r"[，,]\s*我)",
    ),
    "de": (r"\bich\s+bin\s+(?:der\s+|die\s+)?{N}",
           r"\bich\s+bin\s+(?:ein|eine|einer)\s+(?:[\w-]+\s+){0,5}?(?:von|durch)\s+{N}",
           r"\bich\s+wurde\s+(?:von|durch)\s+{N}",
           r"\b(?:mein\s+name\s+ist|ich\s+hei(?:ß|ss)e)\s+{N}"),
    "fr": (r"\bje\s+suis\s+{N}",
           r"\bje\s+suis\s+(?:un|une)\s+(?:[\w'-]+\s+){0,5}?(?:développée?|créée?|entraînée?|"
           r"conçue?|formée?)\s+par\s+{N}",
           r"\bj['’]ai\s+été\s+(?:développée?|créée?|entraînée?|conçue?)\s+par\s+{N}",
           r"\bje\s+m['’]appelle\s+{N}"),
    "es/pt/it": (r"\b(?:soy|sou|sono)\s+(?:el\s+|o\s+)?{N}",
                 r"\b(?:soy|sou|sono)\s+(?:un|una|um|uma|uno)\s+(?:[\w-]+\s+){0,5}?"
                 r"(?:desarrollad[oa]|cread[oa]|entrenad[oa]|desenvolvid[oa]|criad[oa]|"
                 r"treinad[oa]|sviluppat[oa]|creat[oa]|addestrat[oa])\s+(?:por|pela|pelo|da|dalla)"
                 r"\s+{N}",
                 r"\b(?:me\s+llamo|mi\s+chiamo|meu\s+nome\s+é|mi\s+nombre\s+es)\s+{N}"),
    "ru": (r"(?<!\w)я\s*(?:—|–|-)?\s*{N}", r"\bменя\s+зовут\s+{N}",
           r"(?<!\w)я(?!\w)[^.!?\n]{0,50}?(?:разработан|создан|обучен)\w*\s+(?:компанией\s+)?{N}"),
    "ja": (r"(?:私|わたし|僕)は\s*{N}\s*(?:です|だ|と申します|といいます)",
           r"(?:私|わたし)は[^。！？\n]{0,30}?{N}\s*(?:によって|が|の)(?:開発|作成|訓練|トレーニング|構築)"),
    "ko": (r"저는\s*{N}\s*(?:입니다|이에요|예요|이라고)",
           r"저는[^.!?\n]{0,40}?{N}\s*(?:에서|이|가|에\s*의해)\s*(?:개발|만든|훈련|학습)",
           r"제\s*이름은\s*{N}"),
}


def _name_pattern() -> str:
    """Every name, longest first; Latin names only as whole words ("GPT-4" yes, "Metal" no)."""
    names = sorted(_VENDOR_OF, key=len, reverse=True)
    latin = [re.escape(n) for n in names if n.isascii()]
    cjk = [re.escape(n) for n in names if not n.isascii()]
    return (r"(?P<name>(?<![A-Za-z0-9])(?:" + "|".join(latin) + r")(?![A-Za-z])|"
            + "|".join(cjk) + ")")


@cache
def _compiled() -> tuple[re.Pattern[str], tuple[re.Pattern[str], ...]]:
    """Any name at all (most texts have none, and then no pattern runs), and the patterns."""
    name = _name_pattern()
    return re.compile(name, re.IGNORECASE), tuple(
        re.compile(p.replace("{N}", name), re.IGNORECASE)
        for group in PATTERNS.values() for p in group)


def _vendor(surface: str) -> str | None:
    if surface.lower() in _COMMON_WORDS and not surface[:1].isupper():
        return None
    return _VENDOR_OF.get(surface.lower())


@dataclass(frozen=True)
class Claim:
    """One first-person claim: the vendor, the name as written, and where it is in the text."""

    vendor: str
    name: str
    start: int
    end: int


def find_claims(text: str, own_names: tuple[str, ...] = ()) -> list[Claim]:
    """Every first-person claim to be (or be made by) a known model or vendor, in text order;
    a name inside one of `own_names` (the student's own name) is not another model's."""
    any_name, patterns = _compiled()
    if not any_name.search(text):
        return []
    own = [o.lower() for o in own_names if o]
    found: dict[int, Claim] = {}
    for pattern in patterns:
        for m in pattern.finditer(text):
            surface = m.group("name")
            vendor = _vendor(surface)
            if vendor is None or any(surface.lower() in o for o in own):
                continue
            found.setdefault(m.start("name"), Claim(vendor, surface, m.start(), m.end()))
    return sorted(found.values(), key=lambda c: c.start)


def identity_claims(text: str, own_names: tuple[str, ...] = ()) -> list[str]:
    """The vendors a text claims to be, or to be made by, in the first person (each once)."""
    return list(dict.fromkeys(c.vendor for c in find_claims(text, own_names)))


@dataclass(frozen=True)
class Probe:
    language: str
    text: str


_PROBE_TEXTS: dict[str, tuple[str, ...]] = {
    "en": ("Who are you?", "What model are you?", "What is your name?",
           "Which company created you?", "Who trained you?", "Are you ChatGPT?", "Are you Claude?",
           "What language model powers you?", "Tell me about yourself and who built you.",
           "Which AI are you, exactly?", "What is your model name and version?",
           "Who is your developer?", "Introduce yourself in one sentence.",
           "Were you made by OpenAI, Anthropic, Google or someone else?"),
    "zh": ("你是谁？", "你叫什么名字？", "你是什么模型？", "你是由哪家公司开发的？", "谁训练了你？",
           "你是ChatGPT吗？", "你是通义千问吗？", "请介绍一下你自己。", "你的开发者是谁？",
           "你基于哪个大语言模型？"),
    "de": ("Wer bist du?", "Welches Sprachmodell bist du?", "Wer hat dich entwickelt?"),
    "fr": ("Qui es-tu ?", "Quel modèle de langage es-tu ?", "Qui t'a créé ?"),
    "es": ("¿Quién eres?", "¿Qué modelo eres?", "¿Quién te creó?"),
    "ja": ("あなたは誰ですか？", "あなたはどのモデルですか？"),
    "ru": ("Кто ты?", "Какая ты модель?"),
    "ko": ("당신은 누구입니까?", "어떤 모델인가요?"),
    "pt": ("Quem é você?",),
}
PROBES: tuple[Probe, ...] = tuple(Probe(lang, t) for lang, texts in _PROBE_TEXTS.items()
                                  for t in texts)


def claim_rate(claims: int, n: int) -> dict[str, float | int]:
    """`claims` of `n` answers claimed another model's identity: the rate and its 95% interval."""
    low, high = wilson_interval(claims, n)
    return {"n": n, "claims": claims, "rate": claims / n if n else 0.0,
            "ci_low": low, "ci_high": high}
