"""Argument checking and the packing every decode kernel shares.

- GQA packing: q [B, N, H] -> [B, K, Gp, H]: the G query heads of one KV head
  become the rows of one tile, zero-padded to Gp (a tile-friendly size).
- Caches are read layer-stacked: contiguous k/v [L, B, K, S, H], paged pools
  [L, P, K, Z, H], scales the same minus H. An un-stacked input gets L = 1 via
  a free reshape; the kernels index `layer` themselves, so the stacked cache
  is never sliced or copied.
- Visible keys of row b are [lo_B[b], hi_B[b]).
"""
from typing import Optional

import jax.numpy as jnp

from pallas_kernels.attention.decode_reference import as_layer_stacked


def pack_q(q_BNH, K: int, Gp: int):
    B, N, H = q_BNH.shape
    if N % K:
        raise ValueError(f"q: N={N} query heads is not a multiple of the cache's K={K} kv heads")
    G = N // K
    q_BKGH = q_BNH.reshape(B, K, G, H)
    if Gp > G:
        q_BKGH = jnp.pad(q_BKGH, ((0, 0), (0, 0), (0, Gp - G), (0, 0)))
    return q_BKGH


def unpack_out(out_BKGH, m_BKG, l_BKG, G: int, dtype, return_stats: bool):
    B, K, _, H = out_BKGH.shape
    out_BNH = out_BKGH[:, :, :G].reshape(B, K * G, H).astype(dtype)
    if return_stats:
        return out_BNH, (m_BKG[:, :, :G].reshape(B, K * G), l_BKG[:, :, :G].reshape(B, K * G))
    return out_BNH


def stack_cache(k, v, k_scale, v_scale, name: str):
    """Layer-stack k/v (rank 4 -> 5) and scales (rank 3 -> 4); check they agree."""
    k, v = as_layer_stacked(k, 4), as_layer_stacked(v, 4)
    if k.ndim != 5 or k.shape != v.shape:
        raise ValueError(f"{name}: k and v must both be rank 4 or 5 with equal shapes, got {k.shape} and {v.shape}")
    if (k_scale is None) != (v_scale is None):
        raise ValueError(f"{name}: give both k_scale and v_scale or neither")
    if k_scale is not None:
        k_scale, v_scale = as_layer_stacked(k_scale, 3), as_layer_stacked(v_scale, 3)
        if k_scale.shape != k.shape[:-1] or v_scale.shape != k.shape[:-1]:
            raise ValueError(f"{name}: scales must have shape {k.shape[:-1]}, got {k_scale.shape} and {v_scale.shape}")
        if k.dtype != jnp.int8:
            raise ValueError(f"{name}: scales given but k has dtype {k.dtype}, expected int8")
    elif k.dtype == jnp.int8:
        raise ValueError(f"{name}: an int8 cache needs k_scale and v_scale")
    return k, v, k_scale, v_scale


def bounds_from_lengths(lengths_B, sliding_window: Optional[int], seq_len: int):
    """(lo_B, hi_B) for the standalone kernel API: the last `sliding_window` of each row's keys."""
    hi_B = jnp.clip(lengths_B.astype(jnp.int32), 0, seq_len)
    lo_B = jnp.zeros_like(hi_B) if sliding_window is None else jnp.maximum(hi_B - sliding_window, 0)
    return lo_B, hi_B


def compute_dtype(q_dtype):
    if q_dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise ValueError(f"q: dtype must be float32, bfloat16 or float16, got {q_dtype}")
    return jnp.dtype(q_dtype)


def next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())
