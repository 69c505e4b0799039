"""Writing this step's keys and values into the layer-stacked page pools, by slot."""
import jax.numpy as jnp

from pallas_kernels.kv_write.dispatch import write_pages
from pallas_kernels.kv_write.write_reference import pages_and_offsets, rotate_half, rotated_queries


def write_kv(kv, layer, xk_TXH, k_head: int, xv_TXH, v_head: int, slot_T, rope=None, q=None):
    """Scatter this step's keys xk[:, k_head:k_head+K] (RoPE-rotated as they are written, with rope = (cos, sin)
    [T, H/2] from layers/rope.rope_cos_sin) and values xv[:, v_head:v_head+K] into
    kv["k"/"v"][layer, slot // Z, :, slot % Z, :].

    slot_T[t] = page * Z + offset for a real token; a negative slot (padding)
    is sent out of bounds and dropped, so the write never touches another
    sequence's page. Only the written entries change: under jit with the pools
    donated this is an in-place update (pallas_kernels/kv_write/: one kernel
    on a GPU). int8 pools store symmetric per-token, per-head scales.

    With q = (x_q, q_head, N) it returns (kv, q_TNH): the queries x_q[:, q_head:q_head+N] rotated by the same
    rope (on a GPU in the same kernel launch).
    """
    if "k_scale" not in kv:
        out = write_pages(kv["k"], kv["v"], layer, xk_TXH, k_head, xv_TXH, v_head, slot_T, rope, q)
        kv = {**kv, "k": out[0], "v": out[1]}
        return kv if q is None else (kv, out[2])
    if q is not None:
        return write_kv(kv, layer, xk_TXH, k_head, xv_TXH, v_head, slot_T, rope), rotated_queries(q, rope)
    K = kv["k"].shape[2]
    k_TKH, v_TKH = xk_TXH[:, k_head:k_head + K], xv_TXH[:, v_head:v_head + K]
    if rope is not None:
        k_TKH = rotate_half(k_TKH, *rope)
    page_T, off_T = pages_and_offsets(slot_T, kv["k"].shape[1], kv["k"].shape[3])
    out = dict(kv)
    for name, x in (("k", k_TKH), ("v", v_TKH)):
        if name + "_scale" in kv:
            xf = x.astype(jnp.float32)
            scale_TK = jnp.max(jnp.abs(xf), axis=-1) / 127.0
            scale_TK = jnp.where(scale_TK > 0, scale_TK, 1.0)
            x = jnp.clip(jnp.round(xf / scale_TK[..., None]), -127, 127)
            out[name + "_scale"] = kv[name + "_scale"].at[layer, page_T, :, off_T].set(
                scale_TK.astype(kv[name + "_scale"].dtype), mode="drop")
        out[name] = kv[name].at[layer, page_T, :, off_T, :].set(x.astype(kv[name].dtype), mode="drop")
    return out


def write_latent(kv, layer, c_TC, kr_TE, slot_T):
    """Scatter MLA's latent c [T, C] and RoPE key kr [T, E] into kv["c"/"kr"][layer, slot // Z, slot % Z, :]
    (padding slots dropped, as in write_kv)."""
    page_T, off_T = pages_and_offsets(slot_T, kv["c"].shape[1], kv["c"].shape[2])
    return {"c": kv["c"].at[layer, page_T, off_T, :].set(c_TC.astype(kv["c"].dtype), mode="drop"),
            "kr": kv["kr"].at[layer, page_T, off_T, :].set(kr_TE.astype(kv["kr"].dtype), mode="drop")}
