"""Sampling filters: the exact distribution a row samples from.

Filter order (documented contract, tested in tests/test_sampling.py):

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


def _sorted_keep(scaled_BV, samp: dict):
    """Top-k then top-p (renormalised after top-k) membership [B, V], via one descending sort."""
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


def filter_logits(logits_BV, samp: dict):
    """Temperature-scaled logits [B, V] with -inf outside the allowed set (filters 1-4 above).

    Rows with temperature 0 come back as a one-hot mask of the argmax (0 there, -inf elsewhere).
    The sort that top-k / top-p need is skipped (lax.cond) when no row uses them, which is
    the common greedy and plain-temperature case.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    V = logits_BV.shape[-1]
    temp_B = samp["temperature"]
    greedy_B = temp_B <= 0
    scaled = logits_BV / jnp.where(greedy_B, 1.0, temp_B)[:, None]
    needs_sort = jnp.any(~greedy_B & ((samp["top_k"] > 0) | (samp["top_p"] < 1)))
    keep_BV = jax.lax.cond(needs_sort, lambda: _sorted_keep(scaled, samp), lambda: jnp.ones(scaled.shape, bool))
    # min-p relative to the most likely token (which always passes, as min_p <= 1).
    p_full = jax.nn.softmax(scaled, axis=-1)
    keep_BV &= p_full >= samp["min_p"][:, None] * jnp.max(p_full, axis=-1, keepdims=True)
    greedy_mask = jax.nn.one_hot(jnp.argmax(logits_BV, axis=-1), V, dtype=jnp.bool_)
    keep_BV = jnp.where(greedy_B[:, None], greedy_mask, keep_BV)
    return jnp.where(keep_BV, jnp.where(greedy_B[:, None], 0.0, scaled), -jnp.inf)


def probs(logits_BV, samp: dict):
    """The exact distribution [B, V] that `sample` draws from (one-hot at temperature 0)."""
    return jax.nn.softmax(filter_logits(logits_BV, samp), axis=-1)
