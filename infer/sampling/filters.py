"""Sampling filters: the exact distribution a row samples from.

Filter order (documented contract, tested in tests/test_sampling.py):

0. (engine steps only) the logits processors of infer/sampling/processors.py, on the raw
   logits: repetition penalty, then frequency and presence penalties, then logit_bias, then
   min_tokens's -inf on the stop ids; steps 1-4 below see the processed logits (tested in
   tests/test_sampling_processors.py). Reported log-probabilities stay those of the raw logits.
1. temperature: logits / temperature. temperature == 0 means greedy argmax
   (lowest token id on ties) and every other filter is ignored.
2. top-k: keep the k highest-logit tokens (exactly k: ties broken by lower
   token id). top_k == 0 disables it.
3. top-p (nucleus): on the probabilities renormalised after top-k, keep the
   smallest prefix of tokens sorted by probability whose mass reaches top_p
   (a token is kept if the mass strictly before it is < top_p, so the most
   likely token is always kept). top_p == 1 disables it.
4. min-p: keep tokens whose probability is >= min_p * (probability of the most
   likely token), measured on the temperature-scaled distribution (the ratio
   is the same after renormalisation because the top token is always kept).
   min_p == 0 disables it.

Filters are computed in float32 on [B, V] and are per-row arrays, so a batch
can mix settings and a new setting never recompiles anything.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sorted_keep(scaled_BV, samp: dict):
    """Top-k then top-p (renormalised after top-k) membership [B, V], via one descending sort.

    The reference twin of `threshold_keep`: the documented rule written as directly as possible. Two
    stable argsorts of [B, V] per call (~0.6 s each at [64, 49152] on a 2-core CPU), so not the hot path."""
    V = scaled_BV.shape[-1]
    # Sort descending; stable argsort on -x keeps lower ids first among ties.
    order_BV = jnp.argsort(-scaled_BV, axis=-1, stable=True)
    sorted_BV = jnp.take_along_axis(scaled_BV, order_BV, axis=-1)
    rank_V = jnp.arange(V, dtype=jnp.int32)[None, :]
    k_B = samp["top_k"]
    keep_sorted = jnp.where(k_B[:, None] > 0, rank_V < k_B[:, None], True)
    probs_sorted = jax.nn.softmax(jnp.where(keep_sorted, sorted_BV, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs_sorted, axis=-1) - probs_sorted
    # top_p == 1 keeps the whole vocabulary: rounding in the cumulative sum must not cut its tail.
    keep_sorted &= (mass_before < samp["top_p"][:, None]) | (samp["top_p"][:, None] >= 1.0)
    keep_sorted = keep_sorted.at[:, 0].set(True)  # the top token always survives
    inv_BV = jnp.argsort(order_BV, axis=-1)  # back to vocabulary order
    return jnp.take_along_axis(keep_sorted, inv_BV, axis=-1)


def _ordered_keys(x_BV):
    """float32 -> uint32 with the same order (negatives flipped, positives above them): thresholds on values
    become thresholds on integers that a bit-by-bit search can find exactly."""
    x_BV = x_BV.astype(jnp.float32)
    x_BV = jnp.where(x_BV == 0, 0.0, x_BV)  # -0.0 == +0.0: one key, so they tie as in a sort
    b = jax.lax.bitcast_convert_type(x_BV, jnp.uint32)
    return jnp.where((b >> 31) == 1, ~b, b | jnp.uint32(0x80000000))


def _largest_key(pred, B: int):
    """Per row, the largest uint32 t with pred(t) [B] true, for a pred that is true up to some t and false
    above it (pred(0) assumed true): 32 steps that each fix one bit, most significant first."""
    def body(i, prefix_B):
        cand_B = prefix_B | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(pred(cand_B), cand_B, prefix_B)
    return jax.lax.fori_loop(0, 32, body, jnp.zeros((B,), jnp.uint32))


def _ties_before(tie_BV):
    """For each tied entry, how many tied entries of its row have a lower token id [B, V] (exclusive count)."""
    c = jnp.cumsum(tie_BV.astype(jnp.int32), axis=-1)
    return c - tie_BV.astype(jnp.int32)


def threshold_keep(scaled_BV, samp: dict):
    """`sorted_keep`'s membership [B, V] without sorting: each filter is a threshold on a value, found bit by bit.

    top-k: the k-th largest scaled logit v_k is the largest key t with #(x >= t) >= k (32 counting passes);
    keep x > v_k, and of the tokens equal to v_k the lowest ids, up to k in all. top-p on the renormalised
    top-k probabilities p: the nucleus is every token whose mass strictly before it in the (probability
    descending, id ascending) order is < top_p; that order's masses are monotone, so the kept set is
    p > p* plus a prefix (by id) of the tokens equal to p*, where p* is the smallest probability with
    sum(p > p*) < top_p (32 masked-sum passes). Work O(32 B V) instead of two sorts: 11-15x faster at
    B = 8-64 on a 2-core CPU (`python -m infer.bench.sampling_bench`). Masses are masked sums rather than a
    running sum in sorted order, so a token whose mass-before equals top_p to within float32 rounding can
    land on the other side than in `sorted_keep`."""
    B, V = scaled_BV.shape
    k_B, top_p_B = jnp.minimum(samp["top_k"], V), samp["top_p"]
    all_BV = lambda: jnp.ones((B, V), bool)
    # each search runs only when some row uses its filter (the other rows' masks are all-True anyway)
    keep_BV = jax.lax.cond(jnp.any(k_B > 0), lambda: _top_k_keep(scaled_BV, k_B), all_BV)
    keep_BV &= jax.lax.cond(jnp.any(top_p_B < 1), lambda: _top_p_keep(scaled_BV, keep_BV, top_p_B), all_BV)
    # the top token always survives (the lowest id among the largest logits)
    return keep_BV | (jnp.arange(V, dtype=jnp.int32)[None, :] == greedy_tokens(scaled_BV)[:, None])


def _top_k_keep(scaled_BV, k_B):
    """The k largest per row (k_B <= V; 0: all), ties at the k-th value broken by lower id."""
    B = scaled_BV.shape[0]
    u_BV = _ordered_keys(scaled_BV)
    kth_B = _largest_key(lambda t_B: jnp.sum(u_BV >= t_B[:, None], axis=-1) >= k_B, B)
    above_BV = u_BV > kth_B[:, None]
    tie_BV = u_BV == kth_B[:, None]
    room_B = k_B - jnp.sum(above_BV, axis=-1)
    keep_BV = above_BV | (tie_BV & (_ties_before(tie_BV) < room_B[:, None]))
    return jnp.where(k_B[:, None] > 0, keep_BV, True)


def _top_p_keep(scaled_BV, keep_BV, top_p_B):
    """The nucleus of the distribution renormalised over keep_BV (top_p_B >= 1: all)."""
    B = scaled_BV.shape[0]
    p_BV = jax.nn.softmax(jnp.where(keep_BV, scaled_BV, -jnp.inf), axis=-1)
    q_BV = jax.lax.bitcast_convert_type(p_BV, jnp.uint32)  # p >= 0: bit order is value order
    mass_above = lambda t_B: jnp.sum(jnp.where(q_BV > t_B[:, None], p_BV, 0.0), axis=-1)
    # the largest t with mass(p > t) >= top_p; the smallest kept probability p* is the next key up
    t0_B = _largest_key(lambda t_B: mass_above(t_B) >= top_p_B, B)
    star_B = t0_B + jnp.uint32(1)
    mass_gt_B = mass_above(star_B)
    pstar_B = jax.lax.bitcast_convert_type(star_B, jnp.float32)
    tie_BV = q_BV == star_B[:, None]
    before_BV = mass_gt_B[:, None] + _ties_before(tie_BV).astype(jnp.float32) * pstar_B[:, None]
    nucleus_BV = (q_BV > star_B[:, None]) | (tie_BV & (before_BV < top_p_B[:, None]))
    # top_p == 1, or a top_p above the rounded total mass: no cut (as `sorted_keep`)
    no_cut_B = (top_p_B >= 1.0) | (mass_above(jnp.zeros((B,), jnp.uint32)) < top_p_B)
    return nucleus_BV | no_cut_B[:, None]


def greedy_tokens(logits_BV):
    """argmax over V per row [B] int32: the lowest id among ties, the first NaN if a row has one (as jnp.argmax).

    Written as a max and a min-index reduction: XLA's CPU argmax (a variadic reduce) is ~8x slower
    at [8, 49152] (1.7 ms vs 0.2 ms, BENCHMARKS.md "SmolLM2-135M on CPU").
    """
    V = logits_BV.shape[-1]
    m_B1 = jnp.max(logits_BV, axis=-1, keepdims=True)  # NaN if the row has one
    hit_BV = (logits_BV == m_B1) | jnp.isnan(logits_BV)
    return jnp.min(jnp.where(hit_BV, jnp.arange(V, dtype=jnp.int32), V), axis=-1)


def filter_logits(logits_BV, samp: dict):
    """Temperature-scaled logits [B, V] with -inf outside the allowed set (filters 1-4 above).

    Rows with temperature 0 come back as a one-hot mask of the argmax (0 there, -inf elsewhere).
    The threshold search that top-k / top-p need (`threshold_keep`) is skipped (lax.cond) when no row uses
    them, which is the common greedy and plain-temperature case.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    V = logits_BV.shape[-1]
    temp_B = samp["temperature"]
    greedy_B = temp_B <= 0
    scaled = logits_BV / jnp.where(greedy_B, 1.0, temp_B)[:, None]
    needs_filter = jnp.any(~greedy_B & ((samp["top_k"] > 0) | (samp["top_p"] < 1)))
    keep_BV = jax.lax.cond(needs_filter, lambda: threshold_keep(scaled, samp), lambda: jnp.ones(scaled.shape, bool))
    # min-p relative to the most likely token (which always passes, as min_p <= 1).
    p_full = jax.nn.softmax(scaled, axis=-1)
    keep_BV &= p_full >= samp["min_p"][:, None] * jnp.max(p_full, axis=-1, keepdims=True)
    greedy_mask = jax.nn.one_hot(jnp.argmax(logits_BV, axis=-1), V, dtype=jnp.bool_)
    keep_BV = jnp.where(greedy_B[:, None], greedy_mask, keep_BV)
    return jnp.where(keep_BV, jnp.where(greedy_B[:, None], 0.0, scaled), -jnp.inf)


def probs(logits_BV, samp: dict):
    """The exact distribution [B, V] that `sample` draws from (one-hot at temperature 0)."""
    return jax.nn.softmax(filter_logits(logits_BV, samp), axis=-1)
