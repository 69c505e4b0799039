"""Writing this step's keys and values into the layer-stacked page pools, by slot."""
import jax.numpy as jnp


def write_kv(kv, layer, k_TKH, v_TKH, slot_T):
    """Scatter k/v [T, K, H] into kv["k"/"v"][layer, slot // Z, :, slot % Z, :].

    slot_T[t] = page * Z + offset for a real token; a negative slot (padding)
    is sent out of bounds and dropped, so the write never touches another
    sequence's page. Only the written entries change: under jit with the pools
    donated this is an in-place update. int8 pools store symmetric per-token,
    per-head scales.
    """
    P, Z = kv["k"].shape[1], kv["k"].shape[3]
    page_T = jnp.where(slot_T >= 0, slot_T // Z, P)
    off_T = jnp.where(slot_T >= 0, slot_T % Z, 0)
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
    P, Z = kv["c"].shape[1], kv["c"].shape[2]
    page_T = jnp.where(slot_T >= 0, slot_T // Z, P)
    off_T = jnp.where(slot_T >= 0, slot_T % Z, 0)
    return {"c": kv["c"].at[layer, page_T, off_T, :].set(c_TC.astype(kv["c"].dtype), mode="drop"),
            "kr": kv["kr"].at[layer, page_T, off_T, :].set(kr_TE.astype(kv["kr"].dtype), mode="drop")}
