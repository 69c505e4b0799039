"""Dense causal attention over the tokens of one pass: the uncached `forward` reference path.

    attend(q_BTNH, k_BKSH, v_BKSH, q_pos_BT, kv_len_B, sliding_window=, softcap=) -> out_BTNH

Key s is visible to query (b, t) iff s < kv_len[b], s <= q_pos[b, t] and, with a
sliding window W, s > q_pos[b, t] - W. A query that sees no key returns zeros.
Softmax in float32.
"""
from typing import Optional

import jax.numpy as jnp


def visibility_mask(q_pos_BT, kv_len_B, S: int, sliding_window: Optional[int] = None):
    """Boolean [B, T, S]: which keys each query may attend to."""
    key_pos_S = jnp.arange(S, dtype=jnp.int32)
    q_pos = q_pos_BT[:, :, None]
    mask = (key_pos_S[None, None, :] < kv_len_B[:, None, None]) & (key_pos_S[None, None, :] <= q_pos)
    if sliding_window is not None:
        mask &= key_pos_S[None, None, :] > q_pos - sliding_window
    return mask


def attend(q_BTNH, k_BKSH, v_BKSH, q_pos_BT, kv_len_B, *, sliding_window=None, softcap=None, scale=None):
    """Masked multi-/grouped-query attention over one layer's keys and values (pure JAX, float32 math).

    Values may be narrower or wider than keys (MLA: v [B, K, S, Hv]); the output is [B, T, N, Hv].
    scale: the logit scale (default 1 / sqrt(H))."""
    B, T, N, H = q_BTNH.shape
    K, S = k_BKSH.shape[1], k_BKSH.shape[2]
    Hv = v_BKSH.shape[-1]
    G = N // K
    scale = H ** -0.5 if scale is None else scale
    q_BTKGH = q_BTNH.reshape(B, T, K, G, H).astype(jnp.float32)
    s_BKGTS = jnp.einsum("btkgh,bksh->bkgts", q_BTKGH, k_BKSH.astype(jnp.float32)) * scale
    if softcap is not None:
        s_BKGTS = softcap * jnp.tanh(s_BKGTS / softcap)
    mask = visibility_mask(q_pos_BT, kv_len_B, S, sliding_window)[:, None, None, :, :]
    s_BKGTS = jnp.where(mask, s_BKGTS, -jnp.inf)
    m = jnp.max(s_BKGTS, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(mask, jnp.exp(s_BKGTS - m), 0.0)
    l = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(l > 0, l, 1.0)
    o_BTKGH = jnp.einsum("bkgts,bksh->btkgh", p, v_BKSH.astype(jnp.float32))
    return o_BTKGH.reshape(B, T, N, Hv).astype(q_BTNH.dtype)
