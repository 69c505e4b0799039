"""The engine's device call for a step that verifies proposed tokens (speculative decoding).

    verify_step(params, cfg, tokens_T, meta, kv, copy_src_C, copy_dst_C, rows_SK1, drafts_SK, num_drafts_S,
                positions_S, samp, poison_P=None) -> (tokens_SK1, counts_S, logprobs_SK1, top, kv)

Like `engine_step` (infer/engine/device_step.py: page copies, the ragged model step), then per
sample s, whose sequence ran [last, x_0..x_{d-1}] (d = num_drafts_S[s] proposals, 0 <= d <= K)
with the logits of those d+1 tokens at rows_SK1[s, :d+1]:

  d = 0: one token drawn exactly as engine_step draws it (same key: seed and position), so a
         sequence that proposes nothing samples the same tokens as in an engine without speculation;
  d > 0: the exact acceptance rule of infer/generation/speculative_accept.py with one-hot draft
         probabilities (the proposals are a deterministic function of the history, as in prompt
         lookup: infer/generation/ngram.py), its pieces reused: acceptance probabilities a_i
         (forced to 0 past d), the accepted prefix j <= d from uniforms, and one more token from
         `emit_distribution` (the residual q_j minus x_j's one-hot; past d the draft row is all zero,
         so the residual is q_d itself: the bonus token). Key: (seed, position, ACCEPT).

tokens_SK1[s, :counts_S[s]] are the emitted tokens x_0..x_{j-1}, y (counts = j + 1; the rest is
padding), with their log p under the raw logits, and `top` = the top N (ids, log p) [S, K+1, N] of those
(infer/sampling/processors.py). An all-greedy step skips the filters and draws (accepted prefix = the
proposals that equal the target's argmax).

Logits processors (penalties, logit bias, min_tokens) run on all K+1 logits rows of a sample with its one
history: exact for logit_bias (the same at every position) and for every row of a sample without
proposals; the engine proposes nothing for a sequence with a penalty or still under min_tokens
(infer/engine/speculation.py), since those change from one position to the next.

samp["token_bitmask"] ([S, W], structured outputs) masks every one of a sample's K + 1 logits rows alike
(after the processors); a constrained sequence never proposes (infer/engine/speculation.py), so only its
first row (d = 0) is drawn from.
"""
import jax
import jax.numpy as jnp

from infer.config.xla_flags import LOOP_COMPILER_OPTIONS
from infer.engine.device_step import copy_pages, poison_pages
from infer.generation import speculative_accept as SP
from infer.model.step import run_step
from infer.sampling import ACCEPT, request_keys
from infer.sampling.filters import filter_logits, greedy_tokens
from infer.sampling.processors import apply_processors, split, top_logprobs
from infer.sampling.token_mask import apply_token_bitmask


def accept_up_to(drafts_K, draft_probs_KV, target_probs_K1V, num_drafts, key):
    """`speculative_accept.accept` for a row with only its first num_drafts proposals real (the draft rows past
    them all zero): (num_accepted in [0, num_drafts], next token)."""
    K = drafts_K.shape[0]
    key_u, key_next = jax.random.split(key)
    a_K = SP.acceptance_probs(drafts_K, draft_probs_KV, target_probs_K1V)
    a_K = jnp.where(jnp.arange(K) < num_drafts, a_K, 0.0)
    j = SP.num_accepted_from_uniforms(a_K, jax.random.uniform(key_u, (K,), jnp.float32))
    dist_V = SP.emit_distribution(draft_probs_KV, target_probs_K1V, j)
    return j, jax.random.categorical(key_next, jnp.log(dist_V)).astype(jnp.int32)


def verify_samples(logits_OV, rows_SK1, drafts_SK, num_drafts_S, positions_S, samp):
    """(tokens_SK1, counts_S, logprobs_SK1, top) from the step's logits (see the module docstring)."""
    S, K1 = rows_SK1.shape
    K = K1 - 1
    raw_SK1V = logits_OV[rows_SK1]
    samp, proc = split(samp)
    samp = dict(samp)
    bitmask_SW = samp.pop("token_bitmask", None)
    logits_SK1V = apply_processors(raw_SK1V, proc)
    V = logits_SK1V.shape[-1]
    if bitmask_SW is not None:
        logits_SK1V = apply_token_bitmask(logits_SK1V.reshape(S * K1, V),
                                          jnp.repeat(bitmask_SW, K1, axis=0)).reshape(S, K1, V)
    idx_K = jnp.arange(K, dtype=jnp.int32)
    live_SK = idx_K[None, :] < num_drafts_S[:, None]
    argmax_SK1 = greedy_tokens(logits_SK1V.reshape(S * K1, V)).reshape(S, K1)

    def greedy():
        match_SK = (drafts_SK == argmax_SK1[:, :K]) & live_SK
        j_S = jnp.sum(jnp.cumprod(match_SK.astype(jnp.int32), axis=1), axis=1)
        return argmax_SK1, j_S

    def sampled():
        rep = {name: jnp.repeat(v, K1, axis=0) for name, v in samp.items()}
        filtered_SK1V = filter_logits(logits_SK1V.reshape(S * K1, V), rep).reshape(S, K1, V)
        q_SK1V = jax.nn.softmax(filtered_SK1V, axis=-1)  # = probs(): the distributions `sample` draws from
        p_SKV = jax.nn.one_hot(drafts_SK, V, dtype=jnp.float32) * live_SK[..., None]
        j_S, y_S = jax.vmap(accept_up_to)(drafts_SK, p_SKV, q_SK1V, num_drafts_S,
                                          request_keys(samp["seed"], positions_S, ACCEPT))
        # no proposals: `sample`'s own draw (its filter shared), with the plain token key
        drawn_S = jax.vmap(jax.random.categorical)(request_keys(samp["seed"], positions_S), filtered_SK1V[:, 0])
        plain_S = jnp.where(samp["temperature"] <= 0, argmax_SK1[:, 0], drawn_S.astype(jnp.int32))
        j_S = jnp.where(num_drafts_S > 0, j_S, 0)
        y_S = jnp.where(num_drafts_S > 0, y_S, plain_S)
        idx_K1 = jnp.arange(K1, dtype=jnp.int32)
        drafts_SK1 = jnp.concatenate([drafts_SK, y_S[:, None]], axis=1)
        return jnp.where(idx_K1[None, :] < j_S[:, None], drafts_SK1, y_S[:, None]), j_S

    tokens_SK1, j_S = jax.lax.cond(jnp.all(samp["temperature"] <= 0), greedy, sampled)
    raw_SK1V = jax.nn.log_softmax(raw_SK1V.astype(jnp.float32), axis=-1)
    picked_SK1 = jnp.take_along_axis(raw_SK1V, tokens_SK1[..., None], axis=-1)[..., 0]
    return tokens_SK1, j_S + 1, picked_SK1, top_logprobs(raw_SK1V, proc)


def run_verify_step(params, cfg, tokens_T, meta, kv, copy_src_C, copy_dst_C, rows_SK1, drafts_SK, num_drafts_S,
                    positions_S, samp, poison_P=None):
    kv = copy_pages(kv, copy_src_C, copy_dst_C)
    if poison_P is not None:
        kv = poison_pages(kv, poison_P)
    logits_OV, kv = run_step(params, cfg, tokens_T, meta, kv)
    tokens_SK1, counts_S, logprobs_SK1, top = verify_samples(logits_OV, rows_SK1, drafts_SK, num_drafts_S,
                                                             positions_S, samp)
    return tokens_SK1, counts_S, logprobs_SK1, top, kv


verify_step = jax.jit(run_verify_step, static_argnames=("cfg",), donate_argnames=("kv",),
                      compiler_options=LOOP_COMPILER_OPTIONS)
