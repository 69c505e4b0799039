"""EAGLE-style speculative generation: a one-block draft that reads the target's own features.

The draft (a `feature_input` model, ModelConfig) runs at "pair" positions: its input at
position t is fuse([f_t; embed(x_{t+1})]), f_t the target's final feature (the final-norm
output its logits come from) at t, and its output f^_{t+1} is a guess of the next feature;
the draft token is sampled from f^_{t+1} @ the LM head, like the target's own. Given the
target's true features up to the round's start, the first draft token is almost the
target's own computation one position ahead; later ones feed the draft's guessed feature
back in (Li et al., EAGLE, 2024).

Two device programs per shape bucket (buckets as in infer/generation/batch.py):
  1. `_eagle_start`: the target prefills the prompts, returning its features at every
     prompt position, and samples the first token (exactly as `generate`, same key); the
     draft prefills the pairs (f_t, prompt_{t+1}) and (f_{P-1}, first), keeping its logits
     and guessed feature at the last pair.
  2. `_eagle_loop`: a `lax.while_loop` of rounds, both caches donated. A round:
       a. draft: x_0 from the kept logits, then k-1 steps each feeding (its last guessed
          feature, its last token) and drawing x_i from the filtered draft distribution p_i;
       b. target: ONE extend over [last, x_0..x_{k-1}] giving q_0..q_k and its features
          f_tlen..f_tlen+k;
       c. `accept` (vmapped) emits x_0..x_{j-1} and y (infer/generation/speculative_round.py);
       d. the draft rolls back to the target's length (its pairs past it used guessed
          features) and re-reads the j+1 pairs (f_tlen+i, emitted_i) with the TRUE features,
          keeping its logits and guessed feature at the last one for the next round.

Cache invariant at the start of a round, per live row: the target cache holds prompt +
emitted[:-1] (length tlen), `last` = emitted[-1]; the draft cache holds the pairs of
positions 0..tlen-1 (the last one is (f_tlen-1, last)), all with true features, and the
kept logits / feature are its output there.

Exactness: as infer/generation/speculative.py: each draft token is drawn from exactly the p
passed to the acceptance rule, so the output is an exact sample of the filtered target
(temperature 0: its greedy continuation, whatever the draft). Metrics: `SpeculativeResult`.
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from infer.config import ModelConfig, SamplingParams
from infer.generation import speculative_accept as SP
from infer.generation.batch import init_outputs
from infer.generation.speculative import draw_proposal
from infer.generation.speculative_round import (SpeculativeResult, pack_round_batch, record_round,
                                                speculative_result, verify_probs)
from infer.model.rows import capacity, extend_rows, init_cache
from infer.parallel.distributed import to_host
from infer.sampling import ACCEPT, DRAFT, request_keys, sample


def next_tokens(tokens_BT, lengths_B, first_B):
    """The token after each prompt position: tokens shifted left by one, `first` at position length - 1."""
    T = tokens_BT.shape[1]
    shifted_BT = jnp.concatenate([tokens_BT[:, 1:], jnp.zeros_like(tokens_BT[:, :1])], axis=1)
    at_end_BT = jnp.arange(T)[None, :] == (lengths_B - 1)[:, None]
    return jnp.where(at_end_BT, first_B[:, None], shifted_BT)


@functools.partial(jax.jit, static_argnames=("tcfg", "dcfg", "S"))
def _eagle_start(tparams, tcfg, dparams, dcfg, tokens_BT, lengths_B, samp, S):
    B = tokens_BT.shape[0]
    tcache = init_cache(tcfg, B, S)
    logits_BV, feats_BTD, tcache = extend_rows(tparams, tcfg, tokens_BT, lengths_B, tcache, hidden="all")
    first_B = sample(logits_BV, samp, request_keys(samp["seed"], lengths_B))  # as generate
    dcache = init_cache(dcfg, B, S)
    dlogits_BV, fhat_BD, dcache = extend_rows(dparams, dcfg, next_tokens(tokens_BT, lengths_B, first_B), lengths_B,
                                              dcache, features_BTD=feats_BTD, hidden=True)
    return first_B, tcache, dcache, dlogits_BV, fhat_BD


@functools.partial(jax.jit, static_argnames=("tcfg", "dcfg", "k", "max_out", "accept_rule"),
                   donate_argnames=("tcache", "dcache"))
def _eagle_loop(tparams, tcfg, dparams, dcfg, first_B, tcache, dcache, dlogits_BV, fhat_BD, active_B, samp, k,
                max_out, accept_rule):
    S = capacity(tcache)
    accept_B = jax.vmap(accept_rule)
    out_BO, n_B, done_B = init_outputs(first_B, active_B, samp, max_out)

    def cond(state):
        r, done = state[0], state[7]
        return (r < max_out) & ~jnp.all(done)

    def body(state):
        r, last_B, dlogits_BV, fhat_BD, tc, dc, out, done, n, hist = state
        live_B = ~done
        live_i = live_B.astype(jnp.int32)
        tlen_B = tc["lengths"]  # == dc["lengths"]: `last` sits at tlen, draft i at tlen + 1 + i
        dkeys = lambda i: request_keys(samp["seed"], tlen_B + 1 + i, DRAFT)

        # a. Draft: x_0 from the kept output, then k - 1 steps on its own guessed features (unrolled: k is static).
        x_B, p_BV = draw_proposal(dlogits_BV, samp, dkeys(0))
        xs, ps, f_BD = [x_B], [p_BV], fhat_BD
        for i in range(1, k):
            logits_BV, f_BD, dc = extend_rows(dparams, dcfg, xs[-1][:, None], live_i, dc,
                                              features_BTD=f_BD[:, None, :], hidden=True)
            x_B, p_BV = draw_proposal(logits_BV, samp, dkeys(i))
            xs.append(x_B)
            ps.append(p_BV)
        drafts_BK = jnp.stack(xs, axis=1)

        # b. Target: one pass over k + 1 positions, with its features there.
        q_BK1V, feats_BK1D, tc = verify_probs(tparams, tcfg, last_B, drafts_BK, live_B, tc, samp, hidden=True)

        # c. Accept per row; emitted x_0..x_{j-1}, y, truncated at the first stop token and at max_new.
        j_B, y_B = accept_B(drafts_BK, jnp.stack(ps, axis=1), q_BK1V, request_keys(samp["seed"], tlen_B, ACCEPT))
        out, n, hist, e_BK1, _, stopped_B = record_round(out, n, hist, drafts_BK, j_B, y_B, live_B, samp)
        tc["lengths"] = tlen_B + live_i * (j_B + 1)

        # d. Draft: back to tlen, then the j + 1 pairs (f_tlen+i, e_i) with the target's true features.
        dc["lengths"] = tlen_B
        new_dlogits_BV, new_fhat_BD, dc = extend_rows(dparams, dcfg, e_BK1, live_i * (j_B + 1), dc, logits=j_B,
                                                      features_BTD=feats_BK1D, hidden=True)
        dlogits_BV = jnp.where(live_B[:, None], new_dlogits_BV, dlogits_BV)
        fhat_BD = jnp.where(live_B[:, None], new_fhat_BD, fhat_BD)
        last_B = jnp.where(live_B, y_B, last_B)
        done = done | stopped_B | (n >= samp["max_new_tokens"]) | (tc["lengths"] + k + 1 > S)
        return r + 1, last_B, dlogits_BV, fhat_BD, tc, dc, out, done, n, hist

    state = (jnp.int32(0), first_B, dlogits_BV, fhat_BD, tcache, dcache, out_BO, done_B, n_B,
             jnp.zeros((k + 1,), jnp.int32))
    r, _, _, _, tcache, dcache, out_BO, _, n_B, hist = jax.lax.while_loop(cond, body, state)
    return out_BO, n_B, r, hist, tcache, dcache


def validate_eagle_pair(target_cfg: ModelConfig, draft_cfg: ModelConfig) -> None:
    """The draft must read the target's features (feature_input, same D) and share its vocabulary."""
    if not draft_cfg.feature_input:
        raise ValueError(f"draft_cfg.feature_input: {draft_cfg.name or 'the draft'} is not an EAGLE draft (it does "
                         f"not read the target's features); use infer.speculative_generate for a plain draft")
    if target_cfg.feature_input:
        raise ValueError(f"target_cfg.feature_input: the target {target_cfg.name or ''} must be a plain model")
    for f in ("d_model", "vocab_size"):
        if getattr(draft_cfg, f) != getattr(target_cfg, f):
            raise ValueError(f"draft_cfg.{f}: the draft's {f} ({getattr(draft_cfg, f)}) must equal the target's "
                             f"({getattr(target_cfg, f)}): it reads the target's features and shares its LM head")


def eagle_speculative_generate(target_params, target_cfg: ModelConfig, draft_params, draft_cfg: ModelConfig,
                               prompts: Sequence[Sequence[int]],
                               sampling: Union[SamplingParams, Sequence[SamplingParams]] = SamplingParams(),
                               k: int = 4, *, accept_rule: Optional[Callable] = None) -> SpeculativeResult:
    """Generate like `generate(target_params, target_cfg, prompts, sampling)` with an EAGLE draft proposing k
    tokens per target pass; the output is an exact sample of the (filtered) target (temperature 0: equal to
    `generate`'s greedy output). `accept_rule` as in `speculative_generate`."""
    validate_eagle_pair(target_cfg, draft_cfg)
    rb = pack_round_batch((target_cfg, draft_cfg), prompts, sampling, k)
    t0 = time.perf_counter()
    first, tcache, dcache, dlogits, fhat = _eagle_start(target_params, target_cfg, draft_params, draft_cfg,
                                                        jnp.asarray(rb.tokens), jnp.asarray(rb.lengths), rb.samp,
                                                        rb.S)
    first.block_until_ready()
    t1 = time.perf_counter()
    out, n, rounds, hist, _, _ = _eagle_loop(target_params, target_cfg, draft_params, draft_cfg, first, tcache,
                                             dcache, dlogits, fhat, jnp.asarray(rb.active), rb.samp, rb.k,
                                             rb.max_out, accept_rule or SP.accept)
    out, n = to_host((out, n))
    return speculative_result(out, n, rb.n_real, rounds, hist, rb.k, t0, t1, time.perf_counter())
