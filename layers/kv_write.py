"""Writing this step's keys and values into the layer-stacked cache."""
import jax.numpy as jnp


def write_kv(kv, layer, k_BTKH, v_BTKH, write_pos_BT):
    """Scatter k/v [B, T, K, H] into kv["k"/"v"][layer, b, :, write_pos[b, t], :].

    Positions >= S (padding tokens are sent to S) are dropped, so the write
    never touches another row or position. Only the written entries change:
    under jit with the cache donated this is an in-place update.
    """
    B, T = write_pos_BT.shape
    b_BT = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None], (B, T))
    out = dict(kv)
    if "k_scale" in kv:  # int8 cache: symmetric per-token, per-head scales
        for name, x in (("k", k_BTKH), ("v", v_BTKH)):
            xf = x.astype(jnp.float32)
            scale_BTK = jnp.max(jnp.abs(xf), axis=-1) / 127.0
            scale_BTK = jnp.where(scale_BTK > 0, scale_BTK, 1.0)
            q = jnp.clip(jnp.round(xf / scale_BTK[..., None]), -127, 127).astype(jnp.int8)
            out[name] = kv[name].at[layer, b_BT, :, write_pos_BT, :].set(q, mode="drop")
            out[name + "_scale"] = kv[name + "_scale"].at[layer, b_BT, :, write_pos_BT].set(
                scale_BTK.astype(kv[name + "_scale"].dtype), mode="drop")
        return out
    out["k"] = kv["k"].at[layer, b_BT, :, write_pos_BT, :].set(k_BTKH.astype(kv["k"].dtype), mode="drop")
    out["v"] = kv["v"].at[layer, b_BT, :, write_pos_BT, :].set(v_BTKH.astype(kv["v"].dtype), mode="drop")
    return out
