"""JSON-schema constrained decoding with llguidance: which tokens keep the output valid.

`compile_json_schema` turns a `response_format` schema into a grammar once per request;
`Constraint` follows one sequence through it and gives the allowed next tokens as a boolean mask.
llguidance (Microsoft's guidance-ai, also used by vLLM and llama.cpp) works on CPU from a fast
tokenizer's JSON, so custom tokenizers trained by Seed work as well as hub ones. This module knows
nothing about the model or HTTP.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import numpy as np

if TYPE_CHECKING:  # declared in llguidance's stubs only
    from llguidance._lib import JsonCompileOptions

# No free whitespace between JSON tokens: a weak model could otherwise pad forever.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


class GrammarTokenizer:
    """A tokenizer prepared for llguidance (about a second to build, so built once per model)."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_ids: set[int]):
        self.vocab_size = vocab_size
        self.ll = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size,
                                               eos_token=sorted(eos_ids)[0])

    def compile_json_schema(self, schema: dict[str, Any]) -> str:
        """The grammar for `schema`; ValueError (with llguidance's reason) if it is not usable."""
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                               defaults=_JSON_OPTIONS)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.ll)
        if is_error:
            raise ValueError(messages[0] if messages else "invalid JSON schema")
        return grammar

    def constraint(self, grammar: str) -> Constraint:
        return Constraint(llguidance.LLMatcher(self.ll, grammar), self.vocab_size)


class Constraint:
    """One sequence's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        if matcher.is_error():
            raise ValueError(matcher.get_error())

    def allowed_tokens(self, vocab: int) -> np.ndarray:
        """Boolean vector over `vocab` logits: True where the token keeps the output valid."""
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8),
                             bitorder="little")
        out = np.zeros(vocab, dtype=bool)
        n = min(vocab, len(bits))
        out[:n] = bits[:n].astype(bool)
        return out

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)

    def is_done(self) -> bool:
        """The output is complete: the grammar accepts nothing more but the end."""
        return self.matcher.is_stopped() or self.matcher.is_error()
