"""Which decode kernel runs where, and the "pallas" implementation of the model's attention seam.

- GPU backend: the Triton kernel (decode_gpu), compiled.
- TPU backend: the Mosaic kernel (decode_tpu), compiled.
- CPU: the Triton kernel in Pallas interpret mode (the faster of the two
  interpreters; tests run the TPU kernel under TPU interpret mode directly).

The seam (`pallas_impl`) handles T == 1 (decode) with the kernel, reading the
whole layer-stacked cache at `layer`. For T > 1 (prefill, speculative verify)
it falls back to layers.attention_impl.reference_impl: those steps are
compute-bound over many queries and need a prefill kernel, not a decode one.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from layers import attention_impl
from pallas_kernels import decode_gpu, decode_tpu


def pick_backend(platform: Optional[str] = None):
    """(kernel family "gpu" | "tpu", interpret) for a JAX platform name (default: jax.default_backend())."""
    platform = platform or jax.default_backend()
    if platform in ("gpu", "cuda", "rocm"):
        return "gpu", False
    if platform == "tpu":
        return "tpu", False
    return "gpu", True


def decode_attention(q_BNH, k, v, lengths_B, *, platform=None, **kw):
    """Contiguous-cache decode attention on the kernel for this backend (see reference for the contract)."""
    family, interpret = pick_backend(platform)
    fn = decode_tpu.decode_attention_tpu if family == "tpu" else decode_gpu.decode_attention_gpu
    return fn(q_BNH, k, v, lengths_B, interpret=kw.pop("interpret", interpret), **kw)


def paged_decode_attention(q_BNH, k_pages, v_pages, block_tables_BM, lengths_B, *, platform=None, **kw):
    """Paged decode attention on the kernel for this backend."""
    family, interpret = pick_backend(platform)
    fn = decode_tpu.paged_decode_attention_tpu if family == "tpu" else decode_gpu.paged_decode_attention_gpu
    return fn(q_BNH, k_pages, v_pages, block_tables_BM, lengths_B, interpret=kw.pop("interpret", interpret), **kw)


@attention_impl.register("pallas")
def pallas_impl(q_BTNH, kv, layer, q_pos_BT, kv_len_B, *, sliding_window=None, softcap=None):
    B, T, N, H = q_BTNH.shape
    if T != 1:
        return attention_impl.reference_impl(q_BTNH, kv, layer, q_pos_BT, kv_len_B,
                                             sliding_window=sliding_window, softcap=softcap)
    S = kv["k"].shape[3]
    q_pos_B = q_pos_BT[:, 0].astype(jnp.int32)
    # the seam's visibility rule (s < kv_len, s <= q_pos, s > q_pos - W) as one range [lo, hi)
    hi_B = jnp.clip(jnp.minimum(kv_len_B.astype(jnp.int32), q_pos_B + 1), 0, S)
    lo_B = jnp.zeros_like(hi_B) if sliding_window is None else jnp.clip(q_pos_B - sliding_window + 1, 0, S)
    family, interpret = pick_backend()
    fn = decode_tpu.decode_attention_tpu_bounds if family == "tpu" else decode_gpu.decode_attention_gpu_bounds
    out_BNH = fn(q_BTNH[:, 0], kv["k"], kv["v"], lo_B, hi_B, layer=layer, k_scale=kv.get("k_scale"),
                 v_scale=kv.get("v_scale"), softcap=softcap, interpret=interpret)
    return out_BNH[:, None]
