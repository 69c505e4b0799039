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

import dataclasses
import functools
import time
from typing import Callable, List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig, SamplingParams, as_per_request, batch_arrays
from infer.generation import speculative_accept as SP
from infer.generation.speculative_emit import emit_round
from infer.generation.batch import GenerateResult, bucket_shapes, pack_prompts, validate_prompts
from infer.model.rows import capacity, extend_rows, init_cache
from infer.sampling import ACCEPT, DRAFT, filter_logits, is_stop, probs, request_keys, sample


@dataclasses.dataclass
class SpeculativeResult(GenerateResult):
    """GenerateResult plus the acceptance statistics defined in the module docstring."""

    k: int = 0
    rounds: int = 0  # iterations of the device loop (verify passes over the whole batch)
    accept_hist: List[int] = dataclasses.field(default_factory=list)  # [k+1] row-rounds by drafts accepted
    verify_tokens: int = 0  # tokens emitted by verify passes (num_generated minus each row's first token)

    @property
    def target_passes(self) -> int:
        return int(sum(self.accept_hist))

    @property
    def acceptance_rate_by_position(self) -> List[float]:
        h, tot = np.asarray(self.accept_hist, np.float64), max(1, self.target_passes)
        return [float(h[i + 1:].sum() / tot) for i in range(self.k)]

    @property
    def conditional_acceptance_by_position(self) -> List[float]:
        h = np.asarray(self.accept_hist, np.float64)
        return [float(h[i + 1:].sum() / h[i:].sum()) if h[i:].sum() else float("nan") for i in range(self.k)]

    @property
    def mean_accepted(self) -> float:
        h = np.asarray(self.accept_hist, np.float64)
        return float((h * np.arange(len(h))).sum() / h.sum()) if h.sum() else float("nan")

    @property
    def tokens_per_target_pass(self) -> float:
        return self.verify_tokens / self.target_passes if self.target_passes else float("nan")

    def metrics(self) -> dict:
        m = super().metrics()
        m.update(k=self.k, rounds=self.rounds, target_passes=self.target_passes, accept_hist=list(self.accept_hist),
                 mean_accepted=self.mean_accepted, tokens_per_target_pass=self.tokens_per_target_pass,
                 acceptance_rate_by_position=self.acceptance_rate_by_position,
                 conditional_acceptance_by_position=self.conditional_acceptance_by_position)
        return m


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


def _draw(logits_BV, samp, keys_B):
    """Draft token [B] and the exact distribution [B, V] it was drawn from (one-hot at temperature 0)."""
    filtered_BV = filter_logits(logits_BV, samp)
    x_B = jax.vmap(jax.random.categorical)(keys_B, filtered_BV).astype(jnp.int32)
    return x_B, jax.nn.softmax(filtered_BV, axis=-1)


@functools.partial(jax.jit, static_argnames=("tcfg", "dcfg", "S"))
def _spec_start(tparams, tcfg, dparams, dcfg, tokens_BT, lengths_B, samp, S):
    B = tokens_BT.shape[0]
    tcache = init_cache(tcfg, B, S)
    logits_BV, tcache = extend_rows(tparams, tcfg, tokens_BT, lengths_B, tcache)
    first_B = sample(logits_BV, samp, request_keys(samp["seed"], lengths_B))  # the key generate uses
    dcache = init_cache(dcfg, B, S)
    _, dcache = extend_rows(dparams, dcfg, tokens_BT, lengths_B, dcache)
    return first_B, tcache, dcache


@functools.partial(jax.jit, static_argnames=("tcfg", "dcfg", "k", "max_out", "accept_rule"),
                   donate_argnames=("tcache", "dcache"))
def _spec_loop(tparams, tcfg, dparams, dcfg, first_B, tcache, dcache, active_B, samp, k, max_out, accept_rule):
    B = first_B.shape[0]
    S = capacity(tcache)
    V = tcfg.vocab_size
    rows_B = jnp.arange(B)
    idx_K1 = jnp.arange(k + 1, dtype=jnp.int32)
    samp_rep = {name: jnp.repeat(v, k + 1, axis=0) for name, v in samp.items()}  # row-major [B*(k+1)]
    max_new = samp["max_new_tokens"]
    accept_B = jax.vmap(accept_rule)

    out_BO = jnp.full((B, max_out), -1, jnp.int32).at[:, 0].set(jnp.where(active_B, first_B, -1))
    n_B = active_B.astype(jnp.int32)
    done_B = ~active_B | is_stop(first_B, samp["stop_ids"]) | (n_B >= max_new)
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
        x0_B, p0_BV = _draw(logits_BV, samp, dkeys(0))

        # k is static: the remaining k-1 steps are unrolled (measured faster than lax.scan on CPU, and
        # no per-iteration loop condition on GPU).
        xs, ps = [x0_B], [p0_BV]
        for i in range(1, k):
            logits_BV, dc = extend_rows(dparams, dcfg, xs[-1][:, None], live_i, dc)
            x_B, p_BV = _draw(logits_BV, samp, dkeys(i))
            xs.append(x_B)
            ps.append(p_BV)
        drafts_BK = jnp.stack(xs, axis=1)
        p_BKV = jnp.stack(ps, axis=1)

        # b. Target: one pass over k+1 positions.
        verify_BK1 = jnp.concatenate([last_B[:, None], drafts_BK], axis=1)
        tlogits_BK1V, tc = extend_rows(tparams, tcfg, verify_BK1, live_i * (k + 1), tc, logits="all")
        q_BK1V = probs(tlogits_BK1V.reshape(B * (k + 1), V), samp_rep).reshape(B, k + 1, V)

        # c. Accept per row.
        j_B, y_B = accept_B(drafts_BK, p_BKV, q_BK1V, request_keys(samp["seed"], tlen_B, ACCEPT))

        # d. Emitted tokens x_0..x_{j-1}, y; truncate at the first stop token and at max_new.
        e_BK1, write_BK1, c_B, stopped_B = emit_round(drafts_BK, j_B, y_B, live_B, n, max_new, samp["stop_ids"])
        out = out.at[rows_B[:, None], jnp.where(write_BK1, n[:, None] + idx_K1[None, :], max_out)].set(
            e_BK1, mode="drop")
        n = n + c_B

        # Roll back by moving lengths: target keeps [last, x_0..x_{j-1}], draft keeps up to x_{min(j,k-1)-1}.
        tc["lengths"] = tlen_B + live_i * (j_B + 1)
        dc["lengths"] = dlen_B + live_i * jnp.minimum(j_B, k - 1)
        lag_B = jnp.where(live_B, j_B == k, lag_B)
        lagtok_B = jnp.where(live_B, drafts_BK[:, k - 1], lagtok_B)
        last_B = jnp.where(live_B, y_B, last_B)
        hist = hist + jnp.sum(jax.nn.one_hot(j_B, k + 1, dtype=jnp.int32) * live_i[:, None], axis=0)
        done = (done | stopped_B | (n >= max_new)
                | (tc["lengths"] + k + 1 > S) | (dc["lengths"] + k + 1 > S))
        return r + 1, last_B, lag_B, lagtok_B, tc, dc, out, done, n, hist

    state = (jnp.int32(0), first_B, false_B, jnp.zeros((B,), jnp.int32), tcache, dcache, out_BO, done_B, n_B,
             jnp.zeros((k + 1,), jnp.int32))
    r, _, _, _, tcache, dcache, out_BO, _, n_B, hist = jax.lax.while_loop(cond, body, state)
    return out_BO, n_B, r, hist, tcache, dcache


def validate_pair(target_cfg: ModelConfig, draft_cfg: ModelConfig, k) -> None:
    if draft_cfg.vocab_size != target_cfg.vocab_size:
        raise ValueError(f"draft_cfg.vocab_size: the draft's vocabulary ({draft_cfg.vocab_size}) must equal the "
                         f"target's ({target_cfg.vocab_size}); speculative sampling compares their distributions "
                         f"token by token")
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"k: number of draft tokens per round must be an int >= 1, got {k!r}")


def speculative_generate(target_params, target_cfg: ModelConfig, draft_params, draft_cfg: ModelConfig,
                         prompts: Sequence[Sequence[int]],
                         sampling: Union[SamplingParams, Sequence[SamplingParams]] = SamplingParams(), k: int = 4,
                         *, accept_rule: Optional[Callable] = None) -> SpeculativeResult:
    """Generate like `generate(target_params, target_cfg, prompts, sampling)`, k draft tokens per target pass.

    The output is an exact sample of the (filtered) target; at temperature 0
    it equals the target's greedy output. `sampling` is one SamplingParams or one per
    prompt. `accept_rule` is the per-row rule (default
    `infer.generation.speculative_accept.accept`); tests substitute a broken one to show
    the statistical test catches it.
    """
    validate_pair(target_cfg, draft_cfg, k)
    k = int(k)
    per = as_per_request(sampling, len(prompts))
    max_new = [p.max_new_tokens for p in per]
    for cfg in (target_cfg, draft_cfg):
        validate_prompts(cfg, prompts, max_new)
        for i, p in enumerate(prompts):
            if len(p) + max_new[i] + k > cfg.max_seq_len:
                raise ValueError(f"prompts[{i}]: prompt length {len(p)} + max_new_tokens {max_new[i]} "
                                 f"+ k {k} (verify positions) exceeds max_seq_len={cfg.max_seq_len} of "
                                 f"{cfg.name or 'a model'}; shorten the prompt, max_new_tokens or k")
    cap = min(target_cfg.max_seq_len, draft_cfg.max_seq_len)
    n_real = len(prompts)
    B, T, max_out, S = bucket_shapes(n_real, max(len(p) for p in prompts), max(max_new), cap, extra=k)
    tokens, lengths, active = pack_prompts(prompts, B, T)
    samp = batch_arrays(per, B)

    t0 = time.perf_counter()
    first, tcache, dcache = _spec_start(target_params, target_cfg, draft_params, draft_cfg, jnp.asarray(tokens),
                                        jnp.asarray(lengths), samp, S)
    first.block_until_ready()
    t1 = time.perf_counter()
    out, n, rounds, hist, _, _ = _spec_loop(
        target_params, target_cfg, draft_params, draft_cfg, first, tcache, dcache, jnp.asarray(active), samp, k,
        max_out, accept_rule or SP.accept)
    out = np.asarray(out)
    t2 = time.perf_counter()
    n = np.asarray(n)[:n_real]
    toks = [out[i, :n[i]].tolist() for i in range(n_real)]
    return SpeculativeResult(tokens=toks, ttft_s=t1 - t0, decode_s=t2 - t1, decode_steps=int(max(n.max() - 1, 0)),
                             num_generated=int(n.sum()), k=k, rounds=int(rounds),
                             accept_hist=np.asarray(hist).tolist(), verify_tokens=int(n.sum() - n_real))
