"""Logits processors of the engine step (penalties, logit bias, min_tokens) and its top-N log-probabilities.

    proc = processing_arrays(per_sample, histories, num_prompts, S, W, V)   # host: numpy rows [S, ...]
    logits_SV = apply_processors(logits_SV, proc)                           # device, before `sample`'s filters
    ids_SN, logprobs_SN = top_logprobs(log_softmax(raw logits), proc)       # device, N = MAX_TOP_LOGPROBS

Order (step 0 of the filter contract in filters.py; every step on float32 logits, per row):

  a. repetition penalty r (HF / vLLM): every token seen in the prompt or the output so far:
     logit / r if logit > 0 else logit * r;
  b. frequency and presence penalties (OpenAI): logit -= frequency * count + presence * (count > 0),
     count = the token's occurrences among the generated tokens (not the prompt);
  c. logit_bias: the request's bias added to each listed token's logit;
  d. min_tokens: while fewer than min_tokens tokens have been generated, the stop ids (EOS included,
     unless ignore_eos) get -inf, so none can be drawn (stop strings are not held back).

Then temperature, top-k, top-p, min-p (filters.py) on the processed logits.

Representation (fixed shapes, so a new setting never compiles a new program): every row's history
is a padded [S, W] array of token ids (prompt then output, W = the engine's max_model_len, padding
= V, which the scatters drop), and the counts [S, V] are rebuilt from it in the step by one
scatter-add. Chosen over a [S, V] count array kept on the device because that one is state: it would
have to follow each sequence across rows, forks (n > 1), preemption and speculation's rollback; the
history is what the host already holds (`seq.tokens`), so it is always right, and the scatter costs
O(S * W) per step (`token_stats`: one scatter-add for counts, seen tokens and biases). The price: a
step where some row has a penalty sends S * W int32 to the device (16 rows x 4096 = 256 KiB). When no
row of a step uses a penalty the engine passes one cached all-padding history (no host work, no
transfer), and the whole processing is skipped with a lax.cond when every row is neutral. logit_bias and min_tokens's masked stop ids share one padded [S, NB] list of
(id, value) pairs (NB = MAX_LOGIT_BIAS + MAX_MIN_TOKENS_STOPS), scattered into a [S, V] bias.

Log-probabilities (the drawn token's and the top N) are those of the RAW logits: log_softmax of the
model's output before any processor or filter (as vLLM's default "raw_logprobs"); a token a bias or a
penalty pushed down still shows its model probability. `top_logprobs` computes the fixed N = 20 with
lax.top_k (descending; ties: lower id first) only when some row asks (lax.cond), else zeros.
"""
from __future__ import annotations

from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infer.config.sampling_params import MAX_LOGIT_BIAS, MAX_MIN_TOKENS_STOPS, MAX_TOP_LOGPROBS, SamplingParams

NUM_BIAS = MAX_LOGIT_BIAS + MAX_MIN_TOKENS_STOPS  # NB: (id, value) slots per row
KEYS = ("presence", "frequency", "repetition", "history", "num_prompt", "bias_ids", "bias_vals", "top_logprobs")

_NO_HISTORY: dict = {}  # (S, W, V) -> a device array [S, W] of padding: steps where no row uses a penalty


def processing_arrays(per_sample: Sequence[SamplingParams], histories: Sequence[Sequence[int]],
                      num_prompts: Sequence[int], S: int, W: int, V: int) -> dict:
    """The processors' per-row arrays for S rows (rows past per_sample are neutral padding).

    histories[s]: the sample's tokens so far (prompt then output; len <= W), num_prompts[s]: how many of them
    are the prompt. Stop ids (already holding EOS unless ignore_eos) are masked while the output is shorter than
    min_tokens."""
    n = len(per_sample)
    col = lambda f, dt, pad: np.array([getattr(p, f) for p in per_sample] + [pad] * (S - n), dt)
    out = {"presence": col("presence_penalty", np.float32, 0.0),
           "frequency": col("frequency_penalty", np.float32, 0.0),
           "repetition": col("repetition_penalty", np.float32, 1.0),
           "top_logprobs": col("top_logprobs", np.int32, 0),
           "num_prompt": np.array(list(num_prompts) + [0] * (S - n), np.int32)}
    bias_ids = np.full((S, NUM_BIAS), V, np.int32)
    bias_vals = np.zeros((S, NUM_BIAS), np.float32)
    for s, p in enumerate(per_sample):
        pairs = list(p.logit_bias)
        if p.min_tokens and len(histories[s]) - num_prompts[s] < p.min_tokens:
            pairs += [(t, -np.inf) for t in p.stop_token_ids if t < V]
        if pairs:
            bias_ids[s, :len(pairs)] = [t for t, _ in pairs]
            bias_vals[s, :len(pairs)] = [b for _, b in pairs]
    out["bias_ids"], out["bias_vals"] = bias_ids, bias_vals
    if any(p.has_penalties for p in per_sample):
        hist = np.full((S, W), V, np.int32)
        for s, p in enumerate(per_sample):
            if p.has_penalties:
                hist[s, :len(histories[s])] = histories[s]
        out["history"] = jnp.asarray(hist)  # a jax.Array either way: one argument type, one compiled program
    else:
        key = (S, W, V)
        if key not in _NO_HISTORY:
            _NO_HISTORY[key] = jnp.full((S, W), V, jnp.int32)
        out["history"] = _NO_HISTORY[key]
    return out


def split(samp: dict):
    """(the filters' settings, the processors' arrays or None when the step was built without them)."""
    if "history" not in samp:
        return samp, None
    return {k: v for k, v in samp.items() if k not in KEYS}, {k: samp[k] for k in KEYS}


def any_active(proc: dict, V: int):
    """Whether some row's processing is not neutral (a traced bool)."""
    return (jnp.any(proc["presence"] != 0) | jnp.any(proc["frequency"] != 0) | jnp.any(proc["repetition"] != 1)
            | jnp.any(proc["bias_ids"] < V))


def token_stats(proc: dict, V: int):
    """(output counts [S, V] float32, seen in prompt or output [S, V] bool, bias [S, V] float32) from the padded
    history (padding V) and the (id, value) list, by ONE scatter-add into [S, 3 V] (an output token adds 1 to
    its count slot, every history token 1 to its seen slot, a bias pair its value to its bias slot): one scatter
    instead of three compiles in a third of the time on XLA:CPU. Counts are exact in float32 up to 2**24."""
    history_SW, num_prompt_S = proc["history"], proc["num_prompt"]
    S, W = history_SW.shape
    pad = 3 * V  # out of range: dropped
    is_out_SW = jnp.arange(W, dtype=jnp.int32)[None, :] >= num_prompt_S[:, None]
    real_SW = history_SW < V
    count_idx = jnp.where(is_out_SW & real_SW, history_SW, pad)
    seen_idx = jnp.where(real_SW, V + history_SW, pad)
    bias_idx = jnp.where(proc["bias_ids"] < V, 2 * V + proc["bias_ids"], pad)
    idx_SX = jnp.concatenate([count_idx, seen_idx, bias_idx], axis=1)
    vals_SX = jnp.concatenate([jnp.ones((S, 2 * W), jnp.float32), proc["bias_vals"]], axis=1)
    rows_SX = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32)[:, None], idx_SX.shape)
    acc = jnp.zeros((S, 3 * V), jnp.float32).at[rows_SX, idx_SX].add(vals_SX, mode="drop")
    return acc[:, :V], acc[:, V:2 * V] > 0, acc[:, 2 * V:]


def process(logits_SxV, proc: dict):
    """The processors (a-d above) on logits [S, V] or [S, K, V] (each row's K positions share its history and
    settings): float32, unconditionally. `apply_processors` is the entry that skips the work for neutral steps."""
    x = logits_SxV.astype(jnp.float32)
    S, V = x.shape[0], x.shape[-1]
    counts_SV, seen_SV, bias_SV = token_stats(proc, V)
    mid = (1,) * (x.ndim - 2)
    per_row = lambda a_S: a_S.reshape((S,) + mid + (1,))  # [S] -> broadcast over the positions and V
    per_tok = lambda a_SV: a_SV.reshape((S,) + mid + (V,))
    r = per_row(proc["repetition"])
    x = jnp.where(per_tok(seen_SV), jnp.where(x > 0, x / r, x * r), x)
    counts = per_tok(counts_SV)
    x = x - per_row(proc["frequency"]) * counts - per_row(proc["presence"]) * (counts > 0)
    return x + per_tok(bias_SV)


def apply_processors(logits_SxV, proc):
    """`process` when some row is not neutral (lax.cond), else the logits as float32; proc None: as float32."""
    x = logits_SxV.astype(jnp.float32)
    if proc is None:
        return x
    return jax.lax.cond(any_active(proc, x.shape[-1]), lambda: process(x, proc), lambda: x)


def top_logprobs(logprobs_SxV, proc):
    """(ids [S, ..., N] int32, log p [S, ..., N] float32) of the N = MAX_TOP_LOGPROBS most likely tokens per row,
    descending, when some row asks for top_logprobs (zeros otherwise); proc None: N = 0 (nothing asked)."""
    shape = logprobs_SxV.shape[:-1]
    N = 0 if proc is None else min(MAX_TOP_LOGPROBS, logprobs_SxV.shape[-1])
    lp = logprobs_SxV.astype(jnp.float32)
    none = lambda: (jnp.zeros(shape + (N,), jnp.int32), jnp.zeros(shape + (N,), jnp.float32))
    if proc is None:
        return none()

    def run():
        vals, ids = jax.lax.top_k(lp, N)
        return ids.astype(jnp.int32), vals
    return jax.lax.cond(jnp.any(proc["top_logprobs"] > 0), run, none)


def host_top_logprobs(ids_N, logprobs_N, n: int) -> List[tuple]:
    """The first n (id, log p) pairs of one token's top-N row, as Python numbers."""
    return [(int(t), float(v)) for t, v in zip(ids_N[:n], logprobs_N[:n])]
