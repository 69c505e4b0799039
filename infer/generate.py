"""Batched generation with the decode loop on the device.

A call does two device programs, each compiled once per shape bucket:
  1. `_start`: builds the cache, prefills the right-padded prompts and samples
     the first token (timed as TTFT);
  2. `_decode_loop`: a `lax.while_loop` of decode steps, the cache donated,
     that stops each row on a stop token or max_new_tokens and ends when every
     row is done. No Python runs per token.

Shapes are bucketed so new prompt lengths, batch sizes or max_new_tokens
within a bucket reuse the compiled programs: batch B and prompt length T go
to the next power of two (T at least 16), the output buffer to the next power
of two >= max_new_tokens, and the cache to the next power of two >= T_bucket +
that buffer (all capped at cfg.max_seq_len). Padding rows are inactive.

A row's output includes its stop token when it stops on one.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infer import sampling as S_
from infer.cache import init_cache
from infer.config import ModelConfig
from infer.model import _extend
from infer.sampling import SamplingParams


def bucket(n: int, minimum: int = 1, cap: int | None = None) -> int:
    b = max(minimum, 1 << max(0, int(n) - 1).bit_length())
    return min(b, cap) if cap is not None else b


def bucket_shapes(n_prompts: int, longest_prompt: int, max_new_tokens: int, max_seq_len: int, extra: int = 0):
    """(B, T, max_out, S): the bucketed batch, prompt length, output buffer and cache length.

    The cache holds at least T + max_out positions, and at least longest_prompt +
    max_new_tokens + extra (speculative decoding writes `extra` = k verify positions
    past the last kept token), capped at max_seq_len.
    """
    T = bucket(longest_prompt, minimum=16, cap=max_seq_len)
    max_out = bucket(max_new_tokens, minimum=16)
    S = bucket(max(T + max_out, longest_prompt + max_new_tokens + extra), cap=max_seq_len)
    return bucket(n_prompts), T, max_out, S


@dataclasses.dataclass
class GenerateResult:
    """Generated ids per prompt and the lecture's metrics (all times in seconds, device-synchronised)."""

    tokens: List[List[int]]
    ttft_s: float  # prefill + first token, for the whole batch
    decode_s: float  # the on-device decode loop
    decode_steps: int  # decode steps run (tokens after the first, per row at most)
    num_generated: int  # tokens produced over all prompts

    @property
    def latency_s(self) -> float:
        """Seconds per generated token for one request (inter-token latency)."""
        return self.decode_s / self.decode_steps if self.decode_steps else float("nan")

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second over all requests, prefill included."""
        total = self.ttft_s + self.decode_s
        return self.num_generated / total if total > 0 else float("nan")

    def metrics(self) -> dict:
        return {"ttft_s": self.ttft_s, "latency_s_per_token": self.latency_s, "tokens_per_s": self.tokens_per_s,
                "decode_s": self.decode_s, "decode_steps": self.decode_steps, "num_generated": self.num_generated}


def validate_prompts(cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    if len(prompts) == 0:
        raise ValueError("prompts: no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}]: empty prompt (need at least one token)")
        bad = [t for t in p if not (0 <= int(t) < cfg.vocab_size)]
        if bad:
            raise ValueError(f"prompts[{i}]: token id {bad[0]} outside [0, vocab_size={cfg.vocab_size})")
        if len(p) + max_new_tokens > cfg.max_seq_len:
            raise ValueError(f"prompts[{i}]: prompt length {len(p)} + max_new_tokens {max_new_tokens} exceeds the "
                             f"cache (max_seq_len={cfg.max_seq_len}); shorten the prompt or max_new_tokens")


def pack_prompts(prompts: Sequence[Sequence[int]], B: int, T: int):
    """Right-pad prompts into tokens [B, T], lengths [B] and active [B]; padding rows hold one dummy token."""
    tokens = np.zeros((B, T), np.int32)
    lengths = np.ones((B,), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
        lengths[i] = len(p)
    return tokens, lengths, np.arange(B) < len(prompts)


@functools.partial(jax.jit, static_argnames=("cfg", "S"))
def _start(params, cfg, tokens_BT, lengths_B, samp, seed_key, S):
    B = tokens_BT.shape[0]
    cache = init_cache(cfg, B, S)
    logits_BV, cache = _extend(params, cfg, tokens_BT, lengths_B, cache, logits_index_B=jnp.maximum(lengths_B - 1, 0))
    first_B = S_.sample(logits_BV, samp, S_.row_keys(seed_key, jnp.arange(B), 0))
    return first_B, cache


@functools.partial(jax.jit, static_argnames=("cfg", "max_out"), donate_argnames=("cache",))
def _decode_loop(params, cfg, first_B, cache, active_B, samp, stop_ids, max_new, seed_key, max_out):
    B = first_B.shape[0]
    S = cache["k"].shape[3]
    rows_B = jnp.arange(B)
    is_stop = lambda t: jnp.any(t[:, None] == stop_ids[None, :], axis=-1)
    out_BO = jnp.full((B, max_out), -1, jnp.int32).at[:, 0].set(jnp.where(active_B, first_B, -1))
    n_B = active_B.astype(jnp.int32)
    done_B = ~active_B | is_stop(first_B) | (n_B >= max_new) | (cache["lengths"] >= S)

    def cond(state):
        step, _, _, _, _, done = state
        return (step < max_new) & ~jnp.all(done)

    def body(state):
        step, tok_B, cache, out, n, done = state
        logits, cache = _extend(params, cfg, tok_B[:, None], (~done).astype(jnp.int32), cache)
        nxt_B = S_.sample(logits[:, 0], samp, S_.row_keys(seed_key, rows_B, step))
        out = out.at[rows_B, jnp.where(done, max_out, n)].set(nxt_B, mode="drop")
        n = n + (~done).astype(jnp.int32)
        done = done | is_stop(nxt_B) | (n >= max_new) | (cache["lengths"] >= S)
        return step + 1, jnp.where(done, tok_B, nxt_B), cache, out, n, done

    state = (jnp.int32(1), first_B, cache, out_BO, n_B, done_B)
    step, _, cache, out_BO, n_B, _ = jax.lax.while_loop(cond, body, state)
    return out_BO, n_B, step - 1, cache


def generate(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
             sampling: SamplingParams = SamplingParams()) -> GenerateResult:
    """Generate for prompts of different lengths; each row stops on its own."""
    validate_prompts(cfg, prompts, sampling.max_new_tokens)
    n_real = len(prompts)
    B, T, max_out, S = bucket_shapes(n_real, max(len(p) for p in prompts), sampling.max_new_tokens, cfg.max_seq_len)
    tokens, lengths, active = pack_prompts(prompts, B, T)
    samp = sampling.arrays(B)
    seed_key = jax.random.PRNGKey(sampling.seed)

    t0 = time.perf_counter()
    first, cache = _start(params, cfg, jnp.asarray(tokens), jnp.asarray(lengths), samp, seed_key, S)
    first.block_until_ready()
    t1 = time.perf_counter()
    out, n, steps, _ = _decode_loop(params, cfg, first, cache, jnp.asarray(active), samp,
                                    S_.stop_array(sampling.stop_token_ids), jnp.int32(sampling.max_new_tokens),
                                    seed_key, max_out)
    out = np.asarray(out)
    t2 = time.perf_counter()
    n = np.asarray(n)
    toks = [out[i, :n[i]].tolist() for i in range(n_real)]
    return GenerateResult(tokens=toks, ttft_s=t1 - t0, decode_s=t2 - t1, decode_steps=int(steps),
                          num_generated=int(n[:n_real].sum()))
