"""Speculative generation: a draft model proposes k tokens, the target verifies them in one pass.

Two device programs per shape bucket (buckets as in infer/generation/batch.py), over the paged step:
  1. `_spec_start`: prefill both caches with the prompts; the target samples
     the first token (exactly as `generate` does, same key).
  2. `_spec_loop`: a `lax.while_loop` of rounds, both caches donated. A round:
       a. draft: k cached steps, unrolled (the first feeds 1 or 2 tokens, see below),
          each drawing x_i from the filtered draft distribution p_i;
       b. target: ONE extend over [last, x_0..x_{k-1}] (k+1 positions) giving
          q_0..q_k, filtered with the same sampling settings as p;
       c. `accept` (vmapped: rows accept different counts j) emits
          x_0..x_{j-1} and one more token y;
       d. each row keeps its emitted tokens up to its first stop token and its
          max_new_tokens, and both caches roll back by setting the row's
          length (the cache is never copied; stale entries past the length are
          overwritten before they become valid).

Cache invariant at the start of a round, per live row with n emitted tokens:
the target cache holds prompt + emitted[:-1] (length P + n - 1) and `last`
is emitted[-1]; the draft cache holds the same, except that after a round
where every draft was accepted it lacks x_{k-1} (the draft never fed its own
last proposal): `lag` marks those rows and the next round's first draft step
feeds the two tokens [x_{k-1}, last] instead of [last].

Exactness: the target's logits and the draft's are float32 and both go
through `sampling.filter_logits` with the same per-row settings, and each
draft token is drawn from exactly the distribution passed to `accept` as p,
so every emitted token is an exact sample of the filtered target (temperature
0: the target's greedy continuation, whatever the draft proposes).

Metrics (`SpeculativeResult`), counted over rows that took part in a round
("row-rounds"; one row-round is one target verify pass for that row):
  accept_hist[j]        row-rounds in which exactly j drafts were accepted
                        (the rule's count, before stop/max_new truncation);
  acceptance_rate_by_position[i]  P(draft i accepted) = row-rounds with
                        j > i / all row-rounds (includes accepting 0..i-1);
  conditional_acceptance_by_position[i]  P(draft i accepted | drafts
                        0..i-1 accepted) = row-rounds with j > i / with j >= i;
  tokens_per_target_pass  tokens emitted by verify passes / row-rounds
                        (the first token, from the prefill, is not counted);
  tokens_per_s, ttft_s, latency_s_per_token as in GenerateResult.
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from infer.config import ModelConfig, SamplingParams
from infer.generation import speculative_accept as SP
from infer.generation.batch import init_outputs, prefill_and_sample
from infer.generation.speculative_round import (SpeculativeResult, pack_round_batch, record_round,
                                                speculative_result, verify_probs)
from infer.model.rows import capacity, extend_rows, init_cache
from infer.parallel.distributed import to_host
from infer.parallel.tensor_parallel import constrain_pools, mesh_context, prepare_tensor_parallel
from infer.sampling import ACCEPT, DRAFT, filter_logits, request_keys


def truncated_draft(params, cfg: ModelConfig, n_layers: int):
    """A draft made of the target's first n_layers blocks (same embedding, final norm and head).

    Slices the layer-stacked parameters; no copy of the target is needed
    beyond the slice. Useful as a self-speculative draft and in tests.
    """
    if not 1 <= n_layers <= cfg.n_layers:
        raise ValueError(f"n_layers: must be in [1, {cfg.n_layers}] for target {cfg.name or 'config'}, got {n_layers}")
    dparams = dict(params)
    dparams["layers"] = jax.tree_util.tree_map(lambda x: x[:n_layers], params["layers"])
    return dparams, cfg.replace(n_layers=n_layers, name=f"{cfg.name or 'target'}-first{n_layers}")


def draw_proposal(logits_BV, samp, keys_B):
    """Draft token [B] and the exact distribution [B, V] it was drawn from (one-hot at temperature 0)."""
    filtered_BV = filter_logits(logits_BV, samp)
    x_B = jax.vmap(jax.random.categorical)(keys_B, filtered_BV).astype(jnp.int32)
    return x_B, jax.nn.softmax(filtered_BV, axis=-1)


@functools.partial(jax.jit, static_argnames=("tcfg", "dcfg", "S", "mesh"))
def _spec_start(tparams, tcfg, dparams, dcfg, tokens_BT, lengths_B, samp, S, mesh=None):
    first_B, tcache = prefill_and_sample(tparams, tcfg, tokens_BT, lengths_B, samp, S, mesh=mesh)  # as generate
    dcache = init_cache(dcfg, tokens_BT.shape[0], S)
    dcache["kv"] = constrain_pools(dcache["kv"], mesh)
    _, dcache = extend_rows(dparams, dcfg, tokens_BT, lengths_B, dcache)
    return first_B, tcache, dcache


@functools.partial(jax.jit, static_argnames=("tcfg", "dcfg", "k", "max_out", "accept_rule"),
                   donate_argnames=("tcache", "dcache"))
def _spec_loop(tparams, tcfg, dparams, dcfg, first_B, tcache, dcache, active_B, samp, k, max_out, accept_rule):
    B = first_B.shape[0]
    S = capacity(tcache)
    accept_B = jax.vmap(accept_rule)
    out_BO, n_B, done_B = init_outputs(first_B, active_B, samp, max_out)
    false_B = jnp.zeros((B,), jnp.bool_)

    def cond(state):
        r, done = state[0], state[7]
        return (r < max_out) & ~jnp.all(done)

    def body(state):
        r, last_B, lag_B, lagtok_B, tc, dc, out, done, n, hist = state
        live_B = ~done
        live_i = live_B.astype(jnp.int32)
        lag_i = lag_B.astype(jnp.int32)

        # a. Draft: first step feeds [x_{k-1} of last round, last] for lagging rows, else [last].
        tok_B2 = jnp.stack([jnp.where(lag_B, lagtok_B, last_B), jnp.where(lag_B, last_B, 0)], axis=1)
        tlen_B = tc["lengths"]  # prompt + emitted[:-1]: `last` sits at position tlen, draft i at tlen + 1 + i
        logits_BV, dc = extend_rows(dparams, dcfg, tok_B2, live_i * (1 + lag_i), dc, logits=lag_i)
        dlen_B = dc["lengths"]  # holds prompt + all emitted tokens now
        dkeys = lambda i: request_keys(samp["seed"], tlen_B + 1 + i, DRAFT)
        x0_B, p0_BV = draw_proposal(logits_BV, samp, dkeys(0))

        # k is static: the remaining k-1 steps are unrolled (measured faster than lax.scan on CPU, and
        # no per-iteration loop condition on GPU).
        xs, ps = [x0_B], [p0_BV]
        for i in range(1, k):
            logits_BV, dc = extend_rows(dparams, dcfg, xs[-1][:, None], live_i, dc)
            x_B, p_BV = draw_proposal(logits_BV, samp, dkeys(i))
            xs.append(x_B)
            ps.append(p_BV)
        drafts_BK = jnp.stack(xs, axis=1)
        p_BKV = jnp.stack(ps, axis=1)

        # b. Target: one pass over k+1 positions.
        q_BK1V, tc = verify_probs(tparams, tcfg, last_B, drafts_BK, live_B, tc, samp)

        # c. Accept per row.
        j_B, y_B = accept_B(drafts_BK, p_BKV, q_BK1V, request_keys(samp["seed"], tlen_B, ACCEPT))

        # d. Emitted tokens x_0..x_{j-1}, y; truncated at the first stop token and at max_new.
        out, n, hist, _, _, stopped_B = record_round(out, n, hist, drafts_BK, j_B, y_B, live_B, samp)

        # Roll back by moving lengths: target keeps [last, x_0..x_{j-1}], draft keeps up to x_{min(j,k-1)-1}.
        tc["lengths"] = tlen_B + live_i * (j_B + 1)
        dc["lengths"] = dlen_B + live_i * jnp.minimum(j_B, k - 1)
        lag_B = jnp.where(live_B, j_B == k, lag_B)
        lagtok_B = jnp.where(live_B, drafts_BK[:, k - 1], lagtok_B)
        last_B = jnp.where(live_B, y_B, last_B)
        done = (done | stopped_B | (n >= samp["max_new_tokens"])
                | (tc["lengths"] + k + 1 > S) | (dc["lengths"] + k + 1 > S))
        return r + 1, last_B, lag_B, lagtok_B, tc, dc, out, done, n, hist

    state = (jnp.int32(0), first_B, false_B, jnp.zeros((B,), jnp.int32), tcache, dcache, out_BO, done_B, n_B,
             jnp.zeros((k + 1,), jnp.int32))
    r, _, _, _, tcache, dcache, out_BO, _, n_B, hist = jax.lax.while_loop(cond, body, state)
    return out_BO, n_B, r, hist, tcache, dcache


def validate_pair(target_cfg: ModelConfig, draft_cfg: ModelConfig) -> None:
    """The draft must share the target's vocabulary."""
    if draft_cfg.vocab_size != target_cfg.vocab_size:
        raise ValueError(f"draft_cfg.vocab_size: the draft's vocabulary ({draft_cfg.vocab_size}) must equal the "
                         f"target's ({target_cfg.vocab_size}); speculative sampling compares their distributions "
                         f"token by token")


def speculative_generate(target_params, target_cfg: ModelConfig, draft_params, draft_cfg: ModelConfig,
                         prompts: Sequence[Sequence[int]],
                         sampling: Union[SamplingParams, Sequence[SamplingParams]] = SamplingParams(), k: int = 4,
                         *, accept_rule: Optional[Callable] = None, mesh=None) -> SpeculativeResult:
    """Generate like `generate(target_params, target_cfg, prompts, sampling)`, k draft tokens per target pass.

    The output is an exact sample of the (filtered) target; at temperature 0
    it equals the target's greedy output. `sampling` is one SamplingParams or one per
    prompt. `accept_rule` is the per-row rule (default
    `infer.generation.speculative_accept.accept`); tests substitute a broken one to show
    the statistical test catches it. mesh: run target and draft tensor-parallel over its "model" axis.
    """
    validate_pair(target_cfg, draft_cfg)
    if mesh is not None:
        target_cfg, target_params = prepare_tensor_parallel(target_params, target_cfg, mesh)
        draft_cfg, draft_params = prepare_tensor_parallel(draft_params, draft_cfg, mesh)
    rb = pack_round_batch((target_cfg, draft_cfg), prompts, sampling, k)
    t0 = time.perf_counter()
    with mesh_context(mesh):
        first, tcache, dcache = _spec_start(target_params, target_cfg, draft_params, draft_cfg,
                                            jnp.asarray(rb.tokens), jnp.asarray(rb.lengths), rb.samp, rb.S, mesh)
        first.block_until_ready()
        t1 = time.perf_counter()
        out, n, rounds, hist, _, _ = _spec_loop(
            target_params, target_cfg, draft_params, draft_cfg, first, tcache, dcache, jnp.asarray(rb.active),
            rb.samp, rb.k, rb.max_out, accept_rule or SP.accept)
    out, n = to_host((out, n))
    return speculative_result(out, n, rb.n_real, rounds, hist, rb.k, t0, t1, time.perf_counter())
