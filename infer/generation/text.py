"""Text in, text out.

Two paths, one job each:

- `generate_text`: encode, run `generate` (the whole decode loop on the
  device, for throughput), decode. No streaming.
- `TextStream`: interactive streaming. A host loop calls the jitted prefill and
  `decode_step` once per token, samples with the same rule and the same
  per-(request seed, position) keys as `generate` (so its output is identical,
  token for token, at any temperature), and turns ids into text with `StreamingDetokenizer`, yielding each
  completed piece of text as soon as its token exists. The per-token host
  round trip costs some throughput; that is the price of seeing text early.

Both stop on the tokenizer's EOS ids plus `sampling.stop_token_ids`; the stop
token is part of `token_ids` but not of the text.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterator, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig, SamplingParams
from infer.generation.batch import bucket_shapes, generate, validate_prompts
from infer.io.detokenize import StreamingDetokenizer
from infer.model.rows import decode_step, init_cache, prefill
from infer.sampling import request_keys, sample


def _with_eos(sampling: SamplingParams, tokenizer) -> SamplingParams:
    if sampling.ignore_eos:
        return sampling
    stops = tuple(dict.fromkeys(tuple(sampling.stop_token_ids) + tuple(tokenizer.eos_ids)))
    return dataclasses.replace(sampling, stop_token_ids=stops)


@dataclasses.dataclass
class TextResult:
    text: str
    prompt_ids: List[int]
    token_ids: List[int]  # generated ids, stop token included when generation stopped on one
    metrics: dict


def prompt_ids(tokenizer, prompt: str, add_special_tokens: Optional[bool] = None) -> List[int]:
    """The prompt's ids: the tokenizer's own default for special tokens unless add_special_tokens says."""
    if add_special_tokens is None:
        return tokenizer.encode(prompt)
    return tokenizer.encode(prompt, add_special_tokens=add_special_tokens)


def generate_text(params, cfg: ModelConfig, tokenizer, prompt: str,
                  sampling: SamplingParams = SamplingParams(),
                  add_special_tokens: Optional[bool] = None) -> TextResult:
    """Generate a completion of one text prompt with the on-device loop of `infer.generate`.

    add_special_tokens=False encodes the prompt as it is (e.g. a rendered chat template, which
    writes its own BOS).
    """
    sampling = _with_eos(sampling, tokenizer)
    ids_in = prompt_ids(tokenizer, prompt, add_special_tokens)
    result = generate(params, cfg, [ids_in], sampling)
    ids = result.tokens[0]
    text_ids = ids[:-1] if ids and ids[-1] in sampling.stop_token_ids else ids
    detok = StreamingDetokenizer(tokenizer, ids_in)  # same text as the stream: decoded in context
    text = detok.add_many(text_ids) + detok.flush()
    return TextResult(text=text, prompt_ids=ids_in, token_ids=ids, metrics=result.metrics())


@jax.jit
def _pick(logits_BV, samp, position):
    """Sample the token at `position` of the (single-row) request: the key generate uses for it."""
    return sample(logits_BV, samp, request_keys(samp["seed"], jnp.full(logits_BV.shape[:1], position, jnp.int32)))


class TextStream:
    """Iterate to get text chunks as they are produced; afterwards `.text`, `.token_ids`, `.metrics()`.

    warmup=True compiles prefill, decode_step and sampling for these shapes before the clock
    starts, so the metrics exclude compilation (shapes are bucketed as in `infer.generation.batch`).
    """

    def __init__(self, params, cfg: ModelConfig, tokenizer, prompt: str,
                 sampling: SamplingParams = SamplingParams(), warmup: bool = False,
                 add_special_tokens: Optional[bool] = None):
        self.params, self.cfg, self.tokenizer = params, cfg, tokenizer
        self.sampling = _with_eos(sampling, tokenizer)
        self.prompt_ids = prompt_ids(tokenizer, prompt, add_special_tokens)
        validate_prompts(cfg, [self.prompt_ids], self.sampling.max_new_tokens)
        self.token_ids: List[int] = []
        self.text = ""
        self.ttft_s = self.decode_s = float("nan")
        n = len(self.prompt_ids)
        _, self._T, _, self._S = bucket_shapes(1, n, self.sampling.max_new_tokens, cfg.max_seq_len)
        if warmup:
            self._run_steps(np.zeros((1, self._T), np.int32), 1, n_decode=1)

    def _run_steps(self, tokens_BT, length, n_decode):
        """Prefill + n_decode steps on throwaway data (compilation only)."""
        samp = self.sampling.arrays(1)
        cache = init_cache(self.cfg, 1, self._S)
        logits, cache = prefill(self.params, self.cfg, tokens_BT, np.array([length], np.int32), cache)
        tok = _pick(logits, samp, jnp.int32(length))
        for i in range(n_decode):
            logits, cache = decode_step(self.params, self.cfg, tok, cache)
            tok = _pick(logits, samp, jnp.int32(length + i + 1))
        np.asarray(tok)

    def __iter__(self) -> Iterator[str]:
        sp = self.sampling
        stops = set(sp.stop_token_ids)
        samp = sp.arrays(1)
        n_prompt = len(self.prompt_ids)
        detok = StreamingDetokenizer(self.tokenizer, self.prompt_ids)
        tokens = np.zeros((1, self._T), np.int32)
        tokens[0, :len(self.prompt_ids)] = self.prompt_ids

        t0 = time.perf_counter()
        cache = init_cache(self.cfg, 1, self._S)
        logits, cache = prefill(self.params, self.cfg, tokens, np.array([len(self.prompt_ids)], np.int32), cache)
        tok = _pick(logits, samp, jnp.int32(n_prompt))
        t = int(tok[0])
        self.ttft_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        step = 0
        while True:
            self.token_ids.append(t)
            if t in stops:
                break
            piece = detok.add(t)
            if piece:
                self.text += piece
                yield piece
            step += 1
            if step >= sp.max_new_tokens:
                break
            logits, cache = decode_step(self.params, self.cfg, tok, cache)
            tok = _pick(logits, samp, jnp.int32(n_prompt + step))
            t = int(tok[0])
        self.decode_s = time.perf_counter() - t1
        piece = detok.flush()
        if piece:
            self.text += piece
            yield piece

    def metrics(self) -> dict:
        """Same keys as GenerateResult.metrics(); times include the per-token host round trip."""
        n = len(self.token_ids)
        steps = max(n - 1, 0)
        total = self.ttft_s + self.decode_s
        return {"ttft_s": self.ttft_s, "latency_s_per_token": self.decode_s / steps if steps else float("nan"),
                "tokens_per_s": n / total if total > 0 else float("nan"), "decode_s": self.decode_s,
                "decode_steps": steps, "num_generated": n}
