"""What the engine tracks per request: its sequences, their tokens and state, and the updates it reports.

A request (one prompt, one SamplingParams, `n` samples) owns `n` sequences once its
prompt is prefilled; before that it has one (the prompt runs once and its pages are
shared by the samples, copy-on-write). A sequence is the scheduler's unit:

    tokens          prompt + generated ids (the last generated id is not yet in the pools)
    num_computed    how many of `tokens` have their keys/values in the pools

    waiting  --admit-->  running  --last token / abort-->  finished
       ^                    |
       +----- preempt ------+   (pages freed; recomputed later from its tokens, prefix cache permitting)
"""
from __future__ import annotations

import dataclasses
import enum
from typing import List, Optional, Tuple

from infer.config import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


# Finish reasons (the OpenAI API's words).
STOP, LENGTH, ABORT = "stop", "length", "abort"


@dataclasses.dataclass
class RequestMetrics:
    """Wall-clock stamps (time.perf_counter seconds) of one request; the derived latencies are properties."""

    arrival: float
    first_scheduled: Optional[float] = None
    first_token: Optional[float] = None
    last_token: Optional[float] = None
    finished: Optional[float] = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at first admission
    token_times: List[float] = dataclasses.field(default_factory=list)  # when each output token came back

    @property
    def queue_s(self) -> Optional[float]:
        return None if self.first_scheduled is None else self.first_scheduled - self.arrival

    @property
    def ttft_s(self) -> Optional[float]:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def e2e_s(self) -> Optional[float]:
        return None if self.finished is None else self.finished - self.arrival

    @property
    def tpot_s(self) -> Optional[float]:
        """Mean seconds per output token after the first (time per output token)."""
        if self.first_token is None or self.last_token is None or self.num_output_tokens < 2:
            return None
        return (self.last_token - self.first_token) / (self.num_output_tokens - 1)

    @property
    def itl_s(self) -> List[float]:
        """Inter-token latencies: the gaps between consecutive output steps of this request."""
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def output_tokens_per_s(self) -> Optional[float]:
        e2e = self.e2e_s
        return None if not e2e else self.num_output_tokens / e2e

    def as_dict(self) -> dict:
        return {"queue_s": self.queue_s, "ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "e2e_s": self.e2e_s,
                "output_tokens_per_s": self.output_tokens_per_s, "num_prompt_tokens": self.num_prompt_tokens,
                "num_output_tokens": self.num_output_tokens, "num_cached_tokens": self.num_cached_tokens}


@dataclasses.dataclass
class Sequence:
    seq_id: int
    request: "Request"
    index: int  # which of the request's n samples
    tokens: List[int]
    seed: int
    num_computed: int = 0
    status: Status = Status.WAITING
    admitted_at: int = -1  # admission counter: the latest admitted running sequence is preempted first
    finish_reason: Optional[str] = None
    detok: object = None  # a StreamingDetokenizer when the engine has a tokenizer
    text: str = ""  # text emitted so far (stop strings cut it)
    held: str = ""  # decoded text held back: it could still turn into a stop string
    logprobs: List[float] = dataclasses.field(default_factory=list)
    draft: List[int] = dataclasses.field(default_factory=list)  # proposed tokens this step verifies (speculation)
    top_logprobs: list = dataclasses.field(default_factory=list)  # per output token [(id, log p)] (top_logprobs)
    matcher: object = None  # structured output: its grammar matcher (infer/sampling/grammar.py's Matcher)

    @property
    def num_prompt(self) -> int:
        return len(self.request.prompt)

    @property
    def output(self) -> List[int]:
        return self.tokens[self.num_prompt:]

    @property
    def is_prefill(self) -> bool:
        """More than the one newest token still has to run (a prompt, or a recompute after preemption)."""
        return self.num_computed < len(self.tokens) - 1


@dataclasses.dataclass
class Request:
    request_id: str
    prompt: List[int]
    sampling: SamplingParams
    n: int
    stop: Tuple[str, ...]
    metrics: RequestMetrics
    sequences: List[Sequence] = dataclasses.field(default_factory=list)
    forked: bool = False  # the n samples exist (the prompt's prefill finished)

    @property
    def finished(self) -> bool:
        return self.forked and all(s.status is Status.FINISHED for s in self.sequences)


@dataclasses.dataclass
class RequestUpdate:
    """What one engine step produced for one sample of one request."""

    request_id: str
    index: int  # the sample (0 .. n-1)
    new_token_ids: List[int]
    new_text: str
    finished: bool
    finish_reason: Optional[str]  # "stop" (stop id or string), "length" (max tokens or context), "abort"
    new_logprobs: List[float] = dataclasses.field(default_factory=list)  # log p of each new token (raw logits)
    output: Optional["RequestOutput"] = None  # the whole request's output, on its last update
    # per new token, its request's top_logprobs most likely [(id, log p)] under the raw logits (None: not asked)
    new_top_logprobs: Optional[List[List[Tuple[int, float]]]] = None


@dataclasses.dataclass
class CompletionOutput:
    """One sample of a finished request (LLM.generate's result, Engine.result)."""

    index: int
    text: str
    token_ids: List[int]
    finish_reason: Optional[str]
    logprobs: List[float]
    top_logprobs: Optional[List[List[Tuple[int, float]]]] = None  # per token (SamplingParams.top_logprobs > 0)


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: List[int]
    outputs: List[CompletionOutput]
    metrics: RequestMetrics

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> List[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> Optional[str]:
        return self.outputs[0].finish_reason
