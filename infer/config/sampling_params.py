"""Sampling settings of one request, and their per-row device arrays for a batch.

A batch may mix requests with different settings: `batch_arrays` turns one
`SamplingParams` per row into per-row arrays (traced, so a new setting never
recompiles), including each request's seed, max_new_tokens and stop ids.
"""
from __future__ import annotations

import dataclasses
import math
import json
from typing import Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np


INT32_MAX = 2 ** 31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_TOP_LOGPROBS = 20  # the fixed N of the step's top-N log-probabilities (infer/sampling/processors.py)
MAX_LOGIT_BIAS = 300  # logit_bias entries per request
MAX_MIN_TOKENS_STOPS = 32  # stop ids (EOS included) that min_tokens can hold back
MAX_BIAS = 100.0  # |logit_bias value| (the OpenAI API's bound)

# The logits processors' fields and their neutral values; the static generate loop refuses any other value.
PROCESSOR_NEUTRAL = (("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("repetition_penalty", 1.0),
                     ("logit_bias", ()), ("min_tokens", 0), ("top_logprobs", 0))


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A structured-output constraint: the output must match it (infer/sampling/grammar.py applies it).

        Constraint.json_schema({"type": "object", "properties": {...}})   # OpenAI's response_format json_schema
        Constraint.json_object()                                          # any JSON object (json_object)
        Constraint.regex(r"[0-9]{3}-[0-9]{4}")                            # the whole output (vLLM's guided_regex)
        Constraint.grammar('start: "yes" | "no"')                         # Lark, llguidance's dialect (guided_grammar)

    kind and spec (text: a schema is its JSON) only, so it is hashable and compares by value. Checked when made
    (llguidance compiles it): a bad schema, regex or grammar is a ValueError saying what is wrong."""

    kind: str
    spec: str = ""

    def __post_init__(self):
        from infer.sampling.grammar import KINDS, grammar_text
        if self.kind not in KINDS:
            raise ValueError(f"constraint: kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.spec, str):
            raise ValueError(f"constraint: spec must be a string, got {type(self.spec).__name__}")
        try:
            grammar_text(self.kind, self.spec)
        except ValueError as e:
            raise ValueError(f"constraint ({self.kind}): {e}") from None

    @classmethod
    def json_schema(cls, schema: Union[dict, bool, str]) -> "Constraint":
        """From a schema (a dict, or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise ValueError(f"constraint (json_schema): the JSON schema is not valid JSON: {e}") from None
        try:
            return cls("json_schema", json.dumps(schema, sort_keys=True))
        except TypeError as e:
            raise ValueError(f"constraint (json_schema): the schema is not JSON data: {e}") from None

    @classmethod
    def json_object(cls) -> "Constraint":
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> "Constraint":
        return cls("regex", pattern)

    @classmethod
    def grammar(cls, lark: str) -> "Constraint":
        return cls("grammar", lark)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int = 32
    stop_token_ids: Tuple[int, ...] = ()
    seed: int = 0  # the request's key is derived from (seed, token position) only
    speculate: bool = True  # an engine with speculative decoding may verify proposals for it (False: opt out)
    # logits processors (engine only; infer/sampling/processors.py), applied before the filters above
    presence_penalty: float = 0.0  # OpenAI: logit -= presence * (count > 0), counts over the generated tokens
    frequency_penalty: float = 0.0  # OpenAI: logit -= frequency * count
    repetition_penalty: float = 1.0  # HF / vLLM: tokens in prompt or output: logit / r if logit > 0 else logit * r
    logit_bias: Tuple[Tuple[int, float], ...] = ()  # (token id, bias) pairs (a dict is accepted), added to the logit
    min_tokens: int = 0  # stop ids (EOS included) are masked until this many tokens are generated
    ignore_eos: bool = False  # the tokenizer's EOS ids do not stop the request (stop_token_ids still do)
    top_logprobs: int = 0  # also report the N most likely tokens and their log p per generated token (N <= 20)
    constraint: Optional[Constraint] = None  # structured output: JSON schema, regex or grammar (Constraint)

    def __post_init__(self):
        if isinstance(self.logit_bias, dict):
            object.__setattr__(self, "logit_bias", tuple(self.logit_bias.items()))
        try:
            bias = {}
            for t, b in (self.logit_bias or ()):
                if isinstance(t, bool) or not float(t).is_integer() or isinstance(b, bool):
                    raise TypeError
                bias[int(t)] = float(b)
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias: expected {{token id: bias}} or (id, bias) pairs, got "
                             f"{self.logit_bias!r}"[:300]) from None
        object.__setattr__(self, "logit_bias", tuple(sorted(bias.items())))
        if isinstance(self.stop_token_ids, int) or self.stop_token_ids is None:
            object.__setattr__(self, "stop_token_ids", () if self.stop_token_ids is None else (self.stop_token_ids,))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        # Every field lands in a per-row device array (float32, int32, uint32: `batch_arrays`, the engine's
        # `sampling_arrays`); a value those cannot hold is refused here, never in the step that batches it.
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and 0 <= self.temperature <= FLOAT32_MAX):
            raise ValueError(f"temperature: must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and 0 <= self.top_k <= INT32_MAX):
            raise ValueError(f"top_k: must be an int in [0, 2**31) (0 disables), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p: must be in [0, 1], got {self.min_p}")
        if not (isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= INT32_MAX):
            raise ValueError(f"max_new_tokens: must be an int in [1, 2**31), got {self.max_new_tokens!r}")
        if any(not 0 <= t <= INT32_MAX for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids: must be in [0, 2**31), got {self.stop_token_ids}")
        if not isinstance(self.speculate, bool):
            raise ValueError(f"speculate: must be a bool, got {self.speculate!r}")
        if not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed < 2 ** 32):
            raise ValueError(f"seed: must be an int in [0, 2**32), got {self.seed!r}")
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise ValueError(f"constraint: must be a Constraint (e.g. Constraint.json_schema(schema)) or None, "
                             f"got {type(self.constraint).__name__}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and -2 <= v <= 2):
                raise ValueError(f"{name}: must be a number in [-2, 2], got {v!r}")
        r = self.repetition_penalty
        if not (isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and 0 < r <= 100):
            raise ValueError(f"repetition_penalty: must be a number in (0, 100] (1: off), got {r!r}")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias: at most {MAX_LOGIT_BIAS} entries, got {len(self.logit_bias)}")
        for t, b in self.logit_bias:
            if not 0 <= t <= INT32_MAX:
                raise ValueError(f"logit_bias: token id {t} outside [0, 2**31)")
            if not (math.isfinite(b) and -MAX_BIAS <= b <= MAX_BIAS):
                raise ValueError(f"logit_bias: the bias of token {t} must be in [-100, 100], got {b!r}")
        if not (isinstance(self.min_tokens, int) and not isinstance(self.min_tokens, bool)
                and 0 <= self.min_tokens <= INT32_MAX):
            raise ValueError(f"min_tokens: must be an int in [0, 2**31), got {self.min_tokens!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos: must be a bool, got {self.ignore_eos!r}")
        if not (isinstance(self.top_logprobs, int) and not isinstance(self.top_logprobs, bool)
                and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"top_logprobs: must be an int in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")

    @property
    def has_penalties(self) -> bool:
        """Whether a penalty needs the token history (presence, frequency or repetition not neutral)."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    def may_speculate(self, num_generated: int) -> bool:
        """Whether a sample that has generated `num_generated` tokens may take proposals (the engine's speculation,
        infer/engine/speculation.py): not when opted out (speculate=False), constrained (its grammar matcher only
        ever consumes accepted tokens), penalized or still under min_tokens (those processors change with every
        accepted token, and a verify run applies them with one history)."""
        return (self.speculate and self.constraint is None and not self.has_penalties
                and num_generated >= self.min_tokens)

    def non_neutral_processors(self) -> Tuple[str, ...]:
        """The logits-processor fields set to anything but their neutral value (PROCESSOR_NEUTRAL)."""
        return tuple(name for name, neutral in PROCESSOR_NEUTRAL if getattr(self, name) != neutral)

    def arrays(self, batch_size: int) -> dict:
        """Per-row device arrays for `batch_size` rows that all use these settings."""
        return batch_arrays([self] * batch_size)


def batch_arrays(per_row: Sequence[SamplingParams], batch_size: int | None = None) -> dict:
    """Per-row arrays [B] of the filter settings, seeds and max_new_tokens, plus stop ids [B, n].

    Rows past len(per_row) (batch padding) repeat the last request's settings. Stop ids are
    padded with -1 to a multiple of 8 so a few more stop ids do not recompile.
    """
    B = batch_size or len(per_row)
    rows = [per_row[min(i, len(per_row) - 1)] for i in range(B)]
    for p in per_row:  # the static loops (infer.generate, speculative rounds, generate_text) have no processors
        bad = p.non_neutral_processors()
        if bad:
            raise ValueError(f"{bad[0]}: not supported by the static generate loop (infer.generate); "
                             f"serve it with the engine (infer.LLM / infer.Engine)")
    col = lambda f, dt: jnp.asarray(np.array([getattr(p, f) for p in rows], dt))
    n_stop = max(8, -(-max(len(p.stop_token_ids) for p in rows) // 8) * 8)
    stops = np.full((B, n_stop), -1, np.int32)
    for i, p in enumerate(rows):
        stops[i, :len(p.stop_token_ids)] = p.stop_token_ids
    return {
        "temperature": col("temperature", np.float32),
        "top_k": col("top_k", np.int32),
        "top_p": col("top_p", np.float32),
        "min_p": col("min_p", np.float32),
        "seed": col("seed", np.uint32),
        "max_new_tokens": col("max_new_tokens", np.int32),
        "stop_ids": jnp.asarray(stops),
    }


def as_per_request(sampling: Union[SamplingParams, Sequence[SamplingParams]], n: int) -> Tuple[SamplingParams, ...]:
    """One SamplingParams per prompt: a single one is shared, a sequence must have one per prompt."""
    if isinstance(sampling, SamplingParams):
        return (sampling,) * n
    sampling = tuple(sampling)
    bad = [i for i, p in enumerate(sampling) if not isinstance(p, SamplingParams)]
    if bad:
        raise ValueError(f"sampling[{bad[0]}]: expected a SamplingParams, got {type(sampling[bad[0]]).__name__}")
    if len(sampling) != n:
        raise ValueError(f"sampling: expected one SamplingParams or a sequence of {n} (one per prompt), "
                         f"got {len(sampling)} items")
    return sampling
