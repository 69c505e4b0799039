"""Which decode GEMV runs where: the Triton kernel for a GPU target (rows and K it supports, no device mesh), the
pure-JAX twin elsewhere (XLA's dots and fusions; a mesh's partitioner cannot split a Pallas call)."""
from typing import Optional, Tuple

import jax

from pallas_kernels.gemv.expert_gemv_reference import expert_gemv_reference
from pallas_kernels.gemv.gemv_reference import fused_gemv_reference
from pallas_kernels.norm.dispatch import add_rms_norm
from pallas_kernels.platform import family


def gemv_applies(M: int, K: int, platform: Optional[str] = None) -> bool:
    """Whether x [M, K] @ W runs as the kernel: a GPU target, no device mesh, M <= 64 rows, K a multiple of 16."""
    from pallas_kernels.gemv.gemv_gpu import supported
    return family(platform) == "gpu" and supported(M, K) and jax.sharding.get_abstract_mesh().empty


def gemv(x, w_KN, norm: Optional[Tuple] = None, swiglu: bool = False, out_dtype=None,
         platform: Optional[str] = None):
    """x [..., K] @ W [K, N] (contract: gemv_reference.fused_gemv_reference); norm = (r [..., K], w [K], eps)
    adds the add + RMSNorm prologue and returns (h, y) (in the kernel up to its NORM_MAX_ROWS rows, else the norm
    kernel runs first); swiglu reads W's columns as [gate | up]."""
    K = x.shape[-1]
    lead = x.shape[:-1]
    x_MK = x.reshape(-1, K)
    if not gemv_applies(x_MK.shape[0], K, platform):
        flat = None if norm is None else (norm[0].reshape(-1, K),) + tuple(norm[1:])
        out = fused_gemv_reference(x_MK, w_KN, flat, swiglu, out_dtype)
    else:
        from pallas_kernels.gemv.gemv_gpu import NORM_MAX_ROWS, gemv_gpu
        if norm is not None and x_MK.shape[0] > NORM_MAX_ROWS:  # the norm kernel first, then the plain GEMV
            h_MK, xn_MK = add_rms_norm(x_MK, norm[0].reshape(-1, K), norm[1], norm[2], platform)
            out = (h_MK, gemv_gpu(xn_MK, w_KN, swiglu=swiglu, out_dtype=out_dtype))
        else:
            r, wn, eps = norm if norm is not None else (None, None, 1e-6)
            out = gemv_gpu(x_MK, w_KN, None if r is None else r.reshape(-1, K), wn, eps=eps, swiglu=swiglu,
                           out_dtype=out_dtype)
    if norm is None:
        return out.reshape(lead + out.shape[-1:])
    h, y = out
    return h.reshape(lead + (K,)), y.reshape(lead + y.shape[-1:])


def expert_gemv(x_MK, w_EKN, ids_A, rows_A, w2_EKN=None, out_dtype=None, platform: Optional[str] = None):
    """y [A, N] = x[rows_A[a]] @ W[ids_A[a]] (silu(x W) * (x W2) with w2_EKN; contract: expert_gemv_reference):
    the Triton kernel on a GPU target (no device mesh, K and N multiples of 16), the twin elsewhere."""
    from pallas_kernels.gemv.expert_gemv_gpu import expert_gemv_gpu, supported
    E, K, N = w_EKN.shape
    if family(platform) != "gpu" or not supported(K, N) or not jax.sharding.get_abstract_mesh().empty:
        return expert_gemv_reference(x_MK, w_EKN, ids_A, rows_A, w2_EKN, out_dtype)
    return expert_gemv_gpu(x_MK, w_EKN, ids_A, rows_A, w2_EKN, out_dtype=out_dtype)
