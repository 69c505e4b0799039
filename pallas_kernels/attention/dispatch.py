"""Which kernel runs where: the backend choice for every attention kernel in this package.

- GPU backend: the Triton kernels (decode_gpu, ragged_gpu), compiled.
- TPU backend: the Mosaic kernels (decode_tpu, ragged_tpu), compiled.
- CPU: the Triton kernel in Pallas interpret mode (the faster of the two
  interpreters; tests run the TPU kernel under TPU interpret mode directly).

"""
from typing import Optional

import jax
import jax.numpy as jnp

from pallas_kernels.attention import decode_gpu, decode_tpu, ragged_gpu, ragged_tpu


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


def ragged_paged_attention(q_TNH, k_pages, v_pages, page_table_RM, query_start_R, query_len_R, kv_len_R, *,
                           max_q_len: int, platform=None, **kw):
    """Ragged paged attention on the kernel for this backend (contract: ragged_reference.py).

    A decode-only step (max_q_len == 1, static) runs the split-K paged decode kernel, which
    spreads a long row over many programs; any other mix runs the ragged kernel, tiled over
    query blocks with the causal mask.
    """
    family, interpret = pick_backend(platform)
    interpret = kw.pop("interpret", interpret)
    if max_q_len == 1:
        T = q_TNH.shape[0]
        rows_R = jnp.clip(query_start_R, 0, T - 1)
        fn = decode_tpu.paged_decode_attention_tpu if family == "tpu" else decode_gpu.paged_decode_attention_gpu
        out_RNH = fn(q_TNH[rows_R], k_pages, v_pages, page_table_RM, jnp.where(query_len_R > 0, kv_len_R, 0),
                     interpret=interpret, **kw)
        dest_R = jnp.where(query_len_R > 0, query_start_R, T)  # padding sequences write nothing
        return jnp.zeros_like(q_TNH).at[dest_R].set(out_RNH.astype(q_TNH.dtype), mode="drop")
    fn = ragged_tpu.ragged_paged_attention_tpu if family == "tpu" else ragged_gpu.ragged_paged_attention_gpu
    return fn(q_TNH, k_pages, v_pages, page_table_RM, query_start_R, query_len_R, kv_len_R, max_q_len=max_q_len,
              interpret=interpret, **kw)
