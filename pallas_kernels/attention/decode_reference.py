"""Pure-JAX decode attention: the twin every Pallas kernel is tested against.

One query token per row attends over that row's cached keys. Shapes:

- q_BNH: [B, N, H] queries (N = K * G query heads, head n reads KV head n // G).
- Contiguous cache: k/v [L, B, K, S, H] (or [B, K, S, H], read as L = 1) and
  `layer` picks one of the L layers.
- Paged cache: k/v pools [L, P, K, Z, H] (or [P, K, Z, H]) of P pages of Z
  tokens; block_tables_BM [B, M] lists each row's pages in order, so logical
  position s of row b lives at page block_tables[b, s // Z], slot s % Z.
- int8 cache: k/v int8 plus k_scale/v_scale float32 with the cache's shape
  minus H (per token, per head); the value is int8 * scale.

Key s of row b is visible iff lo[b] <= s < hi[b] where hi = lengths[b] and
lo = max(0, lengths[b] - sliding_window) (0 without a window). Logits are
q.k / sqrt(H), soft-capped as softcap * tanh(x / softcap) when asked. Math is
float32; the output has q's dtype. A row that sees no key returns zeros.

With return_stats=True the function also returns (m_BN, l_BN): the max logit
over visible keys (-inf for an empty row) and sum(exp(logit - m)) (0 for an
empty row); these are what two partial results need to be merged exactly.
"""
from typing import Optional

import jax.numpy as jnp


def as_layer_stacked(x, rank_without_layer: int):
    """Add a leading L = 1 axis to an un-stacked cache/pool array."""
    return x[None] if x.ndim == rank_without_layer else x


def visible_range(lengths_B, sliding_window: Optional[int] = None):
    """(lo_B, hi_B) int32: the visible key positions [lo, hi) of each row."""
    hi_B = jnp.maximum(lengths_B.astype(jnp.int32), 0)
    lo_B = jnp.zeros_like(hi_B) if sliding_window is None else jnp.maximum(hi_B - sliding_window, 0)
    return lo_B, hi_B


def gather_pages(pool_PKZ_, block_tables_BM):
    """Pool [P, K, Z, ...] + tables [B, M] -> contiguous [B, K, M * Z, ...] (reference only)."""
    x = pool_PKZ_[block_tables_BM]  # [B, M, K, Z, ...]
    B, M, K, Z = x.shape[:4]
    x = jnp.moveaxis(x, 2, 1)  # [B, K, M, Z, ...]
    return x.reshape(B, K, M * Z, *x.shape[4:])


def _attend_bounds(q_BNH, k_BKSH, v_BKSH, lo_B, hi_B, softcap, return_stats):
    B, N, H = q_BNH.shape
    K, S = k_BKSH.shape[1], k_BKSH.shape[2]
    if N % K:
        raise ValueError(f"q: N={N} query heads is not a multiple of the cache's K={K} kv heads")
    G = N // K
    q_BKGH = q_BNH.reshape(B, K, G, H).astype(jnp.float32)
    s_BKGS = jnp.einsum("bkgh,bksh->bkgs", q_BKGH, k_BKSH.astype(jnp.float32),
                        precision="highest") * (H ** -0.5)
    if softcap is not None:
        s_BKGS = softcap * jnp.tanh(s_BKGS / softcap)
    pos_S = jnp.arange(S, dtype=jnp.int32)
    vis_BS = (pos_S[None, :] >= lo_B[:, None]) & (pos_S[None, :] < hi_B[:, None])
    vis = vis_BS[:, None, None, :]
    s_BKGS = jnp.where(vis, s_BKGS, -jnp.inf)
    m_BKG = jnp.max(s_BKGS, axis=-1)
    m_safe = jnp.where(jnp.isfinite(m_BKG), m_BKG, 0.0)
    p_BKGS = jnp.where(vis, jnp.exp(s_BKGS - m_safe[..., None]), 0.0)
    l_BKG = jnp.sum(p_BKGS, axis=-1)
    v_f32 = jnp.where(vis_BS[:, None, :, None], v_BKSH.astype(jnp.float32), 0.0)  # stale slots may hold anything
    o_BKGH = jnp.einsum("bkgs,bksh->bkgh", p_BKGS, v_f32, precision="highest")
    o_BKGH = o_BKGH / jnp.where(l_BKG > 0, l_BKG, 1.0)[..., None]
    out_BNH = o_BKGH.reshape(B, N, H).astype(q_BNH.dtype)
    if return_stats:
        return out_BNH, (m_BKG.reshape(B, N), l_BKG.reshape(B, N))
    return out_BNH


def _dequant(x, scale):
    if scale is None:
        return x
    return x.astype(jnp.float32) * scale[..., None].astype(jnp.float32)


def decode_attention_reference(q_BNH, k, v, lengths_B, *, layer=0, k_scale=None, v_scale=None,
                               sliding_window: Optional[int] = None, softcap: Optional[float] = None,
                               return_stats: bool = False):
    """Decode attention over a contiguous cache k/v [L, B, K, S, H] (or [B, K, S, H])."""
    k, v = as_layer_stacked(k, 4), as_layer_stacked(v, 4)
    ks = None if k_scale is None else as_layer_stacked(k_scale, 3)[layer]
    vs = None if v_scale is None else as_layer_stacked(v_scale, 3)[layer]
    k_BKSH, v_BKSH = _dequant(k[layer], ks), _dequant(v[layer], vs)
    lo_B, hi_B = visible_range(lengths_B, sliding_window)
    hi_B = jnp.minimum(hi_B, k_BKSH.shape[2])
    return _attend_bounds(q_BNH, k_BKSH, v_BKSH, lo_B, hi_B, softcap, return_stats)


def paged_decode_attention_reference(q_BNH, k_pages, v_pages, block_tables_BM, lengths_B, *, layer=0,
                                     k_scale=None, v_scale=None, sliding_window: Optional[int] = None,
                                     softcap: Optional[float] = None, return_stats: bool = False):
    """Decode attention over paged pools k/v [L, P, K, Z, H] (or [P, K, Z, H]) and tables [B, M]."""
    kp, vp = as_layer_stacked(k_pages, 4)[layer], as_layer_stacked(v_pages, 4)[layer]
    if k_scale is not None:
        kp = _dequant(kp, as_layer_stacked(k_scale, 3)[layer])
        vp = _dequant(vp, as_layer_stacked(v_scale, 3)[layer])
    k_BKSH = gather_pages(kp, block_tables_BM)
    v_BKSH = gather_pages(vp, block_tables_BM)
    lo_B, hi_B = visible_range(lengths_B, sliding_window)
    hi_B = jnp.minimum(hi_B, k_BKSH.shape[2])
    return _attend_bounds(q_BNH, k_BKSH, v_BKSH, lo_B, hi_B, softcap, return_stats)
