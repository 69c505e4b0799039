"""Token sampling: parameters, filters and the sampling rule.

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

import dataclasses
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int = 32
    stop_token_ids: Tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.stop_token_ids, int) or self.stop_token_ids is None:
            object.__setattr__(self, "stop_token_ids", () if self.stop_token_ids is None else (self.stop_token_ids,))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not self.temperature >= 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k: must be an int >= 0 (0 disables), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p: must be in [0, 1], got {self.min_p}")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens: must be an int >= 1, got {self.max_new_tokens!r}")
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids: must be >= 0, got {self.stop_token_ids}")

    def arrays(self, batch_size: int) -> dict:
        """Per-row device arrays of the filter settings (traced, so they never recompile)."""
        full = lambda v, dt: jnp.full((batch_size,), v, dt)
        return {
            "temperature": full(self.temperature, jnp.float32),
            "top_k": full(self.top_k, jnp.int32),
            "top_p": full(self.top_p, jnp.float32),
            "min_p": full(self.min_p, jnp.float32),
        }


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
    keep_sorted &= mass_before < samp["top_p"][:, None]
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


def row_keys(seed_key, rows_B, step):
    """One key per row and step: independent of batch size and of the row's neighbours."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(seed_key, r), step))(rows_B)


def sample(logits_BV, samp: dict, keys_B):
    """Draw one token per row [B] int32 from the filtered distribution."""
    filtered = filter_logits(logits_BV, samp)
    drawn = jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys_B, filtered)
    greedy = jnp.argmax(logits_BV, axis=-1)
    return jnp.where(samp["temperature"] <= 0, greedy, drawn).astype(jnp.int32)


def stop_array(stop_token_ids: Sequence[int]):
    """Stop ids padded with -1 to a multiple of 8 (so a few more stop ids do not recompile)."""
    n = max(8, -(-len(stop_token_ids) // 8) * 8)
    return jnp.asarray(list(stop_token_ids) + [-1] * (n - len(stop_token_ids)), jnp.int32)
