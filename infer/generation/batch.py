"""Batched generation with the decode loop on the device, over the paged step.

A call runs two device programs, each compiled once per shape bucket:
  1. `_start`: builds the page pools and each row's page table (every request's
     pages for its whole length are reserved up front, so the loop needs no host),
     prefills the right-padded prompts and samples the first token (timed as TTFT);
  2. `decode_loop`: a `lax.while_loop` of decode steps, the pools donated, that
     stops each row on one of its stop tokens or its max_new_tokens and ends when
     every row is done. No Python runs per token. On a GPU the whole loop is one
     command buffer (CUDA graph): one host submission per call.

Each prompt may have its own SamplingParams (one shared, or one per prompt). A
request's random draws depend only on its seed and the position of the token
drawn (infer/sampling/sampler.py), so it samples the same tokens alone or in any
row of any batch; prompts sharing one SamplingParams share its seed (give each
its own seed for independent samples of the same prompt).

Shapes are bucketed so new prompt lengths, batch sizes or max_new_tokens within
a bucket reuse the compiled programs: batch B and prompt length T go to the
next power of two (T at least 16), the output buffer to the next power of two
>= max_new_tokens, and the reserved length to the next power of two >=
T_bucket + that buffer (all capped at cfg.max_seq_len). Padding rows are inactive.

A row's output includes its stop token when it stops on one.
"""
from __future__ import annotations

import dataclasses
import time
from typing import List, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig, SamplingParams, as_per_request, batch_arrays
from infer.config.xla_flags import LOOP_COMPILER_OPTIONS
from infer.kv.metadata import bucket
from infer.kv.pool import DEFAULT_PAGE_SIZE
from infer.model.rows import capacity, extend_rows, init_cache
from infer.parallel.distributed import to_host
from infer.parallel.tensor_parallel import constrain_pools, mesh_context, prepare_tensor_parallel
from infer.sampling import is_stop, request_keys, sample


def bucket_shapes(n_prompts: int, longest_prompt: int, max_new_tokens: int, max_seq_len: int, extra: int = 0):
    """(B, T, max_out, S): the bucketed batch, prompt length, output buffer and reserved length per row.

    The reservation holds at least T + max_out positions, and at least longest_prompt +
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


def validate_prompts(cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens) -> None:
    """Refuse empty prompts, ids outside [0, V) and prompts that would not fit with their max_new_tokens."""
    if len(prompts) == 0:
        raise ValueError("prompts: no prompts given")
    max_new = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}]: empty prompt (need at least one token)")
        bad = [t for t in p if not (0 <= int(t) < cfg.vocab_size)]
        if bad:
            raise ValueError(f"prompts[{i}]: token id {bad[0]} outside [0, vocab_size={cfg.vocab_size})")
        if len(p) + max_new[i] > cfg.max_seq_len:
            raise ValueError(f"prompts[{i}]: prompt length {len(p)} + max_new_tokens {max_new[i]} exceeds the "
                             f"cache (max_seq_len={cfg.max_seq_len}); shorten the prompt or max_new_tokens")


def pack_prompts(prompts: Sequence[Sequence[int]], B: int, T: int):
    """Right-pad prompts into tokens [B, T], lengths [B] and active [B]; padding rows hold one dummy token."""
    tokens = np.zeros((B, T), np.int32)
    lengths = np.ones((B,), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
        lengths[i] = len(p)
    return tokens, lengths, np.arange(B) < len(prompts)


def prefill_and_sample(params, cfg, tokens_BT, lengths_B, samp, S, page_size=DEFAULT_PAGE_SIZE, mesh=None):
    """A fresh row cache reserving S positions per row, the right-padded prompts prefilled, and each
    request's first token sampled with the key of its position (unjitted: every generation loop's start).
    With a mesh the pools are split on their KV-head axis (tensor parallelism)."""
    cache = init_cache(cfg, tokens_BT.shape[0], S, page_size=page_size)
    cache["kv"] = constrain_pools(cache["kv"], mesh)
    logits_BV, cache = extend_rows(params, cfg, tokens_BT, lengths_B, cache)
    return sample(logits_BV, samp, request_keys(samp["seed"], lengths_B)), cache


def init_outputs(first_B, active_B, samp, max_out):
    """The loops' output state after the first token: out [B, max_out] (-1 = empty), count n [B], done [B]."""
    out_BO = jnp.full((first_B.shape[0], max_out), -1, jnp.int32).at[:, 0].set(jnp.where(active_B, first_B, -1))
    n_B = active_B.astype(jnp.int32)
    done_B = ~active_B | is_stop(first_B, samp["stop_ids"]) | (n_B >= samp["max_new_tokens"])
    return out_BO, n_B, done_B


_start = jax.jit(prefill_and_sample, static_argnames=("cfg", "S", "page_size", "mesh"))


def decode_loop(params, cfg, first_B, cache, active_B, samp, max_out):
    S = capacity(cache)
    rows_B = jnp.arange(first_B.shape[0])
    max_new_B = samp["max_new_tokens"]
    out_BO, n_B, done_B = init_outputs(first_B, active_B, samp, max_out)
    done_B = done_B | (cache["lengths"] >= S)

    def cond(state):
        step, _, _, _, _, done = state
        return (step < max_out) & ~jnp.all(done)

    def body(state):
        step, tok_B, cache, out, n, done = state
        logits_BV, cache = extend_rows(params, cfg, tok_B[:, None], (~done).astype(jnp.int32), cache)
        nxt_B = sample(logits_BV, samp, request_keys(samp["seed"], cache["lengths"]))
        out = out.at[rows_B, jnp.where(done, max_out, n)].set(nxt_B, mode="drop")
        n = n + (~done).astype(jnp.int32)
        done = done | is_stop(nxt_B, samp["stop_ids"]) | (n >= max_new_B) | (cache["lengths"] >= S)
        return step + 1, jnp.where(done, tok_B, nxt_B), cache, out, n, done

    state = (jnp.int32(1), first_B, cache, out_BO, n_B, done_B)
    step, _, cache, out_BO, n_B, _ = jax.lax.while_loop(cond, body, state)
    return out_BO, n_B, step - 1, cache


# the cache donated; on a GPU the whole loop is one command buffer (infer/config/xla_flags.py)
_decode_loop_jit = jax.jit(decode_loop, static_argnames=("cfg", "max_out"), donate_argnames=("cache",),
                           compiler_options=LOOP_COMPILER_OPTIONS)


def generate(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
             sampling: Union[SamplingParams, Sequence[SamplingParams]] = SamplingParams(),
             page_size: int = DEFAULT_PAGE_SIZE, mesh=None) -> GenerateResult:
    """Generate for prompts of different lengths, one SamplingParams shared or one per prompt; rows stop alone.

    mesh: a jax.sharding.Mesh with a "model" axis runs tensor-parallel over it (infer/parallel/tensor_parallel.py):
    parameters and page pools split by heads, FFN columns and vocabulary; same tokens as one device."""
    if mesh is not None:
        cfg, params = prepare_tensor_parallel(params, cfg, mesh)
    per = as_per_request(sampling, len(prompts))
    bad = [i for i, p in enumerate(per) if p.constraint is not None]
    if bad:  # the decode loop runs on the device; a grammar's matcher runs on the host between steps
        raise ValueError(f"sampling[{bad[0]}].constraint: structured outputs need the engine (infer.LLM or "
                         f"infer.Engine), not generate's on-device loop")
    validate_prompts(cfg, prompts, [p.max_new_tokens for p in per])
    n_real = len(prompts)
    B, T, max_out, S = bucket_shapes(n_real, max(len(p) for p in prompts), max(p.max_new_tokens for p in per),
                                     cfg.max_seq_len)
    tokens, lengths, active = pack_prompts(prompts, B, T)
    samp = batch_arrays(per, B)

    t0 = time.perf_counter()
    with mesh_context(mesh):
        first, cache = _start(params, cfg, jnp.asarray(tokens), jnp.asarray(lengths), samp, S, page_size, mesh)
        first.block_until_ready()
        t1 = time.perf_counter()
        out, n, steps, _ = _decode_loop_jit(params, cfg, first, cache, jnp.asarray(active), samp, max_out)
    out, n = to_host((out, n))  # on several processes the result may live partly on other hosts' devices
    t2 = time.perf_counter()
    toks = [out[i, :n[i]].tolist() for i in range(n_real)]
    return GenerateResult(tokens=toks, ttft_s=t1 - t0, decode_s=t2 - t1, decode_steps=int(steps),
                          num_generated=int(n[:n_real].sum()))
