"""Prompt-lookup (n-gram) speculative decoding: proposals copied from the row's own context, no draft model.

Each round, for each row, `ngram_proposals` looks for the most recent earlier
occurrence in the row's history (prompt + tokens generated so far) of its last
n tokens, trying n = max_ngram down to min_ngram, and proposes the k tokens
that followed that occurrence. The target verifies them in one pass, exactly
as in infer/generation/speculative.py ("prompt lookup decoding"; vLLM's ngram
proposer). It pays off where the output copies its context: code edits,
retrieval answers, repeated phrases, summaries that quote.

Proposals past the history: a match ending at position i leaves d = L-1-i
tokens after it (L = history length), possibly fewer than k. The proposal
continues periodically, x_j = h[i + 1 + (j mod d)]: the match says "the tail
repeats with period d", and a repeating context is exactly where long
proposals pay. No match at any n: the last token repeated (the same formula
with i = L-2, d = 1). Any proposal is allowed; exactness does not depend on it.

Exactness: the proposals are a deterministic function of the history, so the
"draft distribution" p_i is one-hot at x_i. The rule of
`infer.generation.speculative_accept.accept` with one-hot p accepts x_i with
probability min(1, q_i(x_i) / 1) = q_i(x_i) and, on rejection, samples from
normalize(max(q_i - onehot(x_i), 0)) = q_i with x_i removed, so every
emitted token is an exact sample of the filtered target (temperature 0: the
target's greedy continuation). The rule is reused unchanged.

Two device programs per shape bucket (buckets as in infer/generation/batch.py):
  1. `_ngram_start`: prefill the target with the prompts, sample the first
     token (exactly as `generate`, same key) and write prompt + first token
     into the history buffer ctx [B, S] (h in the formulas above).
  2. `_ngram_loop`: a `lax.while_loop` of rounds, the cache donated. A round:
       a. propose: `ngram_proposals` on h (vectorised over rows and positions);
       b. target: ONE extend over [last, x_0..x_{k-1}] (k+1 positions) giving
          q_0..q_k, filtered with each row's sampling settings;
       c. `accept` (vmapped) with one-hot p emits x_0..x_{j-1} and y;
       d. each row keeps its emitted tokens up to its first stop token and its
          max_new_tokens, appends them to h, and the cache rolls back by
          setting the row's length.
No host work per round, and nothing depends on the prompts' values at trace
time, so every prompt set in a bucket reuses the compiled programs.

Cache invariant at the start of a round, per live row with n emitted tokens:
the cache holds prompt + emitted[:-1] (length P + n - 1), `last` is
emitted[-1], and ctx[:P + n] is prompt + emitted.

Metrics: `SpeculativeResult` with the definitions of speculative.py (one
row-round = one target verify pass for that row).
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig, SamplingParams
from infer.generation import speculative_accept as SP
from infer.generation.batch import init_outputs, prefill_and_sample
from infer.generation.speculative_round import (SpeculativeResult, pack_round_batch, record_round,
                                                speculative_result, verify_probs)
from infer.model.rows import capacity
from infer.sampling import ACCEPT, request_keys


def ngram_proposals(ctx_BS, len_B, k: int, min_ngram: int = 1, max_ngram: int = 3, xp=jnp):
    """Proposals [B, k] int32 and the matched n per row [B] (0: no match) from histories ctx [B, S].

    Row b's history h is ctx_BS[b, :len_B[b]] (len >= 1; entries past it are ignored). The match
    is the largest n in [min_ngram, max_ngram] for which the last n tokens occur earlier, ending
    at some i <= L-2, and among those the latest i; the proposals are h[i + 1 + (j mod (L-1-i))]
    (i = L-2 when nothing matches). See the module docstring.

    Vectorised: for each n, a mask [B, S] of end positions i with h[i-m] == h[L-1-m] for
    m < n (shifted copies of h against the row's tail), the latest i by argmax over the
    reversed mask. O(B S max_ngram^2) compares; no data-dependent shapes.
    xp: the array module, jnp (traced, in the device loops) or numpy (the engine's host-side proposer).
    """
    B, S = ctx_BS.shape
    ctx_BS = ctx_BS.astype(xp.int32)
    len_B = len_B.astype(xp.int32)
    pos_S = xp.arange(S, dtype=xp.int32)
    tail = lambda m: xp.take_along_axis(ctx_BS, xp.maximum(len_B - 1 - m, 0)[:, None], axis=1)  # [B, 1]
    shifted = lambda m: xp.pad(ctx_BS, ((0, 0), (m, 0)))[:, :S]  # shifted[:, i] = h[:, i - m]
    end_B = len_B - 2
    n_B = xp.zeros((B,), xp.int32)
    for n in range(min_ngram, max_ngram + 1):  # a longer n, found later, overrides a shorter one
        match_BS = (pos_S[None, :] >= n - 1) & (pos_S[None, :] <= len_B[:, None] - 2)
        for m in range(n):
            match_BS &= shifted(m) == tail(m)
        found_B = xp.any(match_BS, axis=1)
        end_B = xp.where(found_B, S - 1 - xp.argmax(match_BS[:, ::-1], axis=1), end_B)
        n_B = xp.where(found_B, n, n_B)
    period_B = len_B - 1 - end_B  # >= 1
    idx_BK = end_B[:, None] + 1 + xp.arange(k, dtype=xp.int32)[None, :] % period_B[:, None]
    return xp.take_along_axis(ctx_BS, idx_BK, axis=1), n_B


@functools.partial(jax.jit, static_argnames=("cfg", "S"))
def _ngram_start(params, cfg, tokens_BT, lengths_B, samp, S):
    B, T = tokens_BT.shape
    first_B, cache = prefill_and_sample(params, cfg, tokens_BT, lengths_B, samp, S)  # as generate does
    ctx_BS = jnp.zeros((B, S), jnp.int32).at[:, :T].set(tokens_BT).at[jnp.arange(B), lengths_B].set(first_B)
    return first_B, cache, ctx_BS


@functools.partial(jax.jit, static_argnames=("cfg", "k", "max_out", "min_ngram", "max_ngram", "accept_rule"),
                   donate_argnames=("cache",))
def _ngram_loop(params, cfg, first_B, cache, ctx_BS, active_B, samp, k, max_out, min_ngram, max_ngram, accept_rule):
    B, S_ctx = ctx_BS.shape
    S = capacity(cache)
    V = cfg.vocab_size
    rows_B = jnp.arange(B)
    idx_K1 = jnp.arange(k + 1, dtype=jnp.int32)
    accept_B = jax.vmap(accept_rule)
    out_BO, n_B, done_B = init_outputs(first_B, active_B, samp, max_out)

    def cond(state):
        r, done = state[0], state[5]
        return (r < max_out) & ~jnp.all(done)

    def body(state):
        r, last_B, c, ctx, out, done, n, hist = state
        live_B = ~done
        live_i = live_B.astype(jnp.int32)
        clen_B = c["lengths"]  # prompt + emitted[:-1]: `last` sits at position clen, proposal i at clen + 1 + i

        # a. Propose from the history (prompt + emitted, length clen + 1).
        drafts_BK, _ = ngram_proposals(ctx, clen_B + 1, k, min_ngram, max_ngram)

        # b. Target: one pass over k+1 positions.
        q_BK1V, c = verify_probs(params, cfg, last_B, drafts_BK, live_B, c, samp)

        # c. Accept per row; the proposals' distribution is one-hot.
        p_BKV = jax.nn.one_hot(drafts_BK, V, dtype=jnp.float32)
        j_B, y_B = accept_B(drafts_BK, p_BKV, q_BK1V, request_keys(samp["seed"], clen_B, ACCEPT))

        # d. Emitted tokens x_0..x_{j-1}, y (truncated at the first stop token and at max_new), also into the history.
        out, n, hist, e_BK1, write_BK1, stopped_B = record_round(out, n, hist, drafts_BK, j_B, y_B, live_B, samp)
        ctx = ctx.at[rows_B[:, None], jnp.where(write_BK1, clen_B[:, None] + 1 + idx_K1[None, :], S_ctx)].set(
            e_BK1, mode="drop")

        # Roll back by moving lengths: the cache keeps [last, x_0..x_{j-1}].
        c["lengths"] = clen_B + live_i * (j_B + 1)
        last_B = jnp.where(live_B, y_B, last_B)
        done = done | stopped_B | (n >= samp["max_new_tokens"]) | (c["lengths"] + k + 1 > S)
        return r + 1, last_B, c, ctx, out, done, n, hist

    state = (jnp.int32(0), first_B, cache, ctx_BS, out_BO, done_B, n_B, jnp.zeros((k + 1,), jnp.int32))
    r, _, cache, _, out_BO, _, n_B, hist = jax.lax.while_loop(cond, body, state)
    return out_BO, n_B, r, hist, cache


def _check_ngrams(min_ngram, max_ngram) -> None:
    is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not (is_int(min_ngram) and is_int(max_ngram) and 1 <= min_ngram <= max_ngram):
        raise ValueError(f"min_ngram, max_ngram: need ints with 1 <= min_ngram <= max_ngram, "
                         f"got {min_ngram!r}, {max_ngram!r}")


def ngram_speculative_generate(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
                               sampling: Union[SamplingParams, Sequence[SamplingParams]] = SamplingParams(),
                               k: int = 4, *, min_ngram: int = 1, max_ngram: int = 3,
                               accept_rule: Optional[Callable] = None) -> SpeculativeResult:
    """Generate like `generate(params, cfg, prompts, sampling)`, k prompt-lookup proposals per target pass.

    The output is an exact sample of the (filtered) target; at temperature 0 it equals the
    greedy output of `generate`. `sampling` is one SamplingParams or one per prompt. The
    n-gram lengths tried are max_ngram down to min_ngram (static: a new pair recompiles).
    `accept_rule` is the per-row rule (default `infer.generation.speculative_accept.accept`,
    called with one-hot draft probabilities); tests substitute a broken one.
    """
    _check_ngrams(min_ngram, max_ngram)
    rb = pack_round_batch((cfg,), prompts, sampling, k, proposals="proposed tokens")
    min_ngram, max_ngram = int(min_ngram), int(max_ngram)
    t0 = time.perf_counter()
    first, cache, ctx = _ngram_start(params, cfg, jnp.asarray(rb.tokens), jnp.asarray(rb.lengths), rb.samp, rb.S)
    first.block_until_ready()
    t1 = time.perf_counter()
    out, n, rounds, hist, _ = _ngram_loop(params, cfg, first, cache, ctx, jnp.asarray(rb.active), rb.samp, rb.k,
                                          rb.max_out, min_ngram, max_ngram, accept_rule or SP.accept)
    out = np.asarray(out)
    return speculative_result(out, n, rb.n_real, rounds, hist, rb.k, t0, t1, time.perf_counter())
