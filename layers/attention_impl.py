"""The attention-implementation seam.

Every implementation has one signature::

    impl(q_BTNH, kv, layer, q_pos_BT, kv_len_B, *, sliding_window, softcap) -> out_BTNH

- q_BTNH: queries after RoPE, in the model dtype.
- kv: the cache dict of layer-stacked arrays, at least "k" and "v" of shape
  [L, B, K, S, H] (an int8 cache adds "k_scale"/"v_scale" [L, B, K, S]).
  The new tokens of this step are already written.
- layer: int32 scalar (may be traced under scan) selecting the layer; kernels
  index the stacked cache with it so no per-layer copy of the cache is made.
- q_pos_BT: absolute position of each query token.
- kv_len_B: number of valid cache positions per row after this step's write.

Key s is visible to query (b, t) iff s < kv_len[b], s <= q_pos[b, t] and, with a
sliding window W, s > q_pos[b, t] - W. A query that sees no key (an empty row)
returns zeros, never NaN. Softmax is computed in float32.

Registered names: "reference" (pure JAX, the twin every kernel is tested
against), "xla" (jax.nn.dot_product_attention) and "pallas" (registered by
pallas_kernels when imported).
"""
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp

_IMPLS: Dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        _IMPLS[name] = fn
        return fn
    return deco


def get(name: str) -> Callable:
    if name not in _IMPLS and name == "pallas":
        import pallas_kernels  # noqa: F401  (registers "pallas")
    if name not in _IMPLS:
        raise ValueError(f"attention_impl: unknown implementation {name!r}; registered: {sorted(_IMPLS)}")
    return _IMPLS[name]


def visibility_mask(q_pos_BT, kv_len_B, S: int, sliding_window: Optional[int] = None):
    """Boolean [B, T, S]: which keys each query may attend to."""
    key_pos_S = jnp.arange(S, dtype=jnp.int32)
    q_pos = q_pos_BT[:, :, None]
    mask = (key_pos_S[None, None, :] < kv_len_B[:, None, None]) & (key_pos_S[None, None, :] <= q_pos)
    if sliding_window is not None:
        mask &= key_pos_S[None, None, :] > q_pos - sliding_window
    return mask


def attend(q_BTNH, k_BKSH, v_BKSH, q_pos_BT, kv_len_B, *, sliding_window=None, softcap=None):
    """Masked multi-/grouped-query attention over one layer's keys and values (pure JAX)."""
    B, T, N, H = q_BTNH.shape
    K, S = k_BKSH.shape[1], k_BKSH.shape[2]
    G = N // K
    q_BTKGH = q_BTNH.reshape(B, T, K, G, H).astype(jnp.float32)
    s_BKGTS = jnp.einsum("btkgh,bksh->bkgts", q_BTKGH, k_BKSH.astype(jnp.float32)) * (H ** -0.5)
    if softcap is not None:
        s_BKGTS = softcap * jnp.tanh(s_BKGTS / softcap)
    mask_BTS = visibility_mask(q_pos_BT, kv_len_B, S, sliding_window)
    mask = mask_BTS[:, None, None, :, :]
    s_BKGTS = jnp.where(mask, s_BKGTS, -jnp.inf)
    m = jnp.max(s_BKGTS, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(mask, jnp.exp(s_BKGTS - m), 0.0)
    l = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(l > 0, l, 1.0)
    o_BTKGH = jnp.einsum("bkgts,bksh->btkgh", p, v_BKSH.astype(jnp.float32))
    return o_BTKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)


def layer_kv(kv, layer):
    """This layer's keys and values [B, K, S, H], dequantized if the cache is int8."""
    k, v = kv["k"][layer], kv["v"][layer]
    if "k_scale" in kv:
        k = k.astype(jnp.float32) * kv["k_scale"][layer][..., None]
        v = v.astype(jnp.float32) * kv["v_scale"][layer][..., None]
    return k, v


@register("reference")
def reference_impl(q_BTNH, kv, layer, q_pos_BT, kv_len_B, *, sliding_window=None, softcap=None):
    k, v = layer_kv(kv, layer)
    return attend(q_BTNH, k, v, q_pos_BT, kv_len_B, sliding_window=sliding_window, softcap=softcap)


@register("xla")
def xla_impl(q_BTNH, kv, layer, q_pos_BT, kv_len_B, *, sliding_window=None, softcap=None):
    """jax.nn.dot_product_attention (XLA; cuDNN where JAX picks it). Needs [B, S, K, H]."""
    if softcap is not None:
        return reference_impl(q_BTNH, kv, layer, q_pos_BT, kv_len_B, sliding_window=sliding_window, softcap=softcap)
    k, v = layer_kv(kv, layer)
    S = k.shape[2]
    mask_BTS = visibility_mask(q_pos_BT, kv_len_B, S, sliding_window)
    out = jax.nn.dot_product_attention(
        q_BTNH, jnp.swapaxes(k, 1, 2).astype(q_BTNH.dtype), jnp.swapaxes(v, 1, 2).astype(q_BTNH.dtype),
        mask=mask_BTS[:, None, :, :])
    any_visible_BT = jnp.any(mask_BTS, axis=-1)
    return jnp.where(any_visible_BT[:, :, None, None], out, 0).astype(q_BTNH.dtype)
