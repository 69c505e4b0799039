"""The KV write as the model computes it (the kernel's twin and contract).

    k_TKH = x_k[:, k_head : k_head + K]         (this step's keys: K heads of a source such as the q|k|v output)
    k_TKH = rope(k_TKH, cos_TR, sin_TR)          (when the rotation is given; R = H / 2, rotate-half form, in
                                                  float32, cast back to the source's dtype: layers/rope.py)
    v_TKH = x_v[:, v_head : v_head + K]
    pool_LPKZH[layer, slot_T[t] // Z, :, slot_T[t] % Z, :] = k_TKH[t] (v_TKH[t])   for each t with slot_T[t] >= 0

A negative slot (padding) writes nothing, so a padded token never touches another sequence's page. Only the
written entries change: under jit with the pools donated the update is in place.

With q = (x_q, q_head, N) the write also returns this step's queries rotated the same way (the attention reads them
next; on a GPU the kernel rotates them in the same launch, so they cost no launch of their own):

    q_TNH = rope(x_q[:, q_head : q_head + N], cos_TR, sin_TR)                  -> (k pool, v pool, q_TNH)
"""
from typing import Optional, Tuple

import jax.numpy as jnp


def pages_and_offsets(slot_T, num_pages: int, page_size: int):
    """(page_T, off_T) of each slot; a padding slot (< 0) gets page num_pages, out of bounds, to be dropped."""
    valid = slot_T >= 0
    return jnp.where(valid, slot_T // page_size, num_pages), jnp.where(valid, slot_T % page_size, 0)


def rotate_half(x_TKH, cos_TR, sin_TR):
    """RoPE in rotate-half form: (x1 * cos - x2 * sin, x2 * cos + x1 * sin) over the halves of H, in float32,
    cast back to x's dtype (cos / sin [T, H/2] already scaled by the attention factor)."""
    xf = x_TKH.astype(jnp.float32)
    R = xf.shape[-1] // 2
    x1, x2 = xf[..., :R], xf[..., R:]
    c, s = cos_TR[:, None, :], sin_TR[:, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_TKH.dtype)


def write_pages_reference(k_LPKZH, v_LPKZH, layer, xk_TXH, k_head: int, xv_TXH, v_head: int, slot_T,
                          rope: Optional[Tuple] = None, q: Optional[Tuple] = None):
    """(k pool, v pool) with this step's keys and values stored at their slots of `layer` (a scatter); with
    q = (x_q, q_head, N), also the rotated queries [T, N, H] (rope required)."""
    P, K, Z = k_LPKZH.shape[1], k_LPKZH.shape[2], k_LPKZH.shape[3]
    k_TKH, v_TKH = xk_TXH[:, k_head:k_head + K], xv_TXH[:, v_head:v_head + K]
    if rope is not None:
        k_TKH = rotate_half(k_TKH, *rope)
    page_T, off_T = pages_and_offsets(slot_T, P, Z)
    pools = tuple(pool.at[layer, page_T, :, off_T, :].set(x.astype(pool.dtype), mode="drop")
                  for pool, x in ((k_LPKZH, k_TKH), (v_LPKZH, v_TKH)))
    return pools if q is None else pools + (rotated_queries(q, rope),)


def rotated_queries(q: Tuple, rope: Optional[Tuple]):
    """q = (x_q, q_head, N): x_q[:, q_head:q_head + N] rotated by rope = (cos, sin) [T, H/2]."""
    if rope is None:
        raise ValueError("write_pages: rotating the queries (q=...) needs the rotation (rope=(cos, sin))")
    xq_TXH, q_head, N = q
    return rotate_half(xq_TXH[:, q_head:q_head + N], *rope)
