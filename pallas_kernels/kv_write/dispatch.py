"""Which KV write runs where: the Triton kernel for a GPU target (head widths it supports, no device mesh), the
pure-JAX twin elsewhere (XLA's CPU and TPU scatters; a mesh's partitioner cannot split a Pallas call)."""
from typing import Optional, Tuple

import jax

from pallas_kernels.kv_write.write_reference import write_pages_reference
from pallas_kernels.platform import family


def write_pages(k_LPKZH, v_LPKZH, layer, xk_TXH, k_head: int, xv_TXH, v_head: int, slot_T,
                rope: Optional[Tuple] = None, q: Optional[Tuple] = None, platform: Optional[str] = None):
    """(k pool, v pool) with keys xk[:, k_head:k_head+K] (RoPE-rotated by rope = (cos, sin) [T, H/2] if given)
    and values xv[:, v_head:v_head+K] stored at slot_T (page * Z + offset; < 0 drops) of `layer`; with
    q = (x_q, q_head, N) also the queries x_q[:, q_head:q_head+N] rotated alike, [T, N, H]."""
    from pallas_kernels.kv_write.write_gpu import supported, write_pages_gpu
    args = (k_LPKZH, v_LPKZH, layer, xk_TXH, k_head, xv_TXH, v_head, slot_T, rope, q)
    if family(platform) != "gpu" or not supported(k_LPKZH.shape[-1]) or not jax.sharding.get_abstract_mesh().empty:
        return write_pages_reference(*args)
    return write_pages_gpu(*args)
