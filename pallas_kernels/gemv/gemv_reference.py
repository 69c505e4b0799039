"""The decode projections as the model computes them (the GEMV kernel's twin and contract).

M rows (decode tokens) times a float weight W [K, N], float32 accumulation, rounded once to the output dtype:

    y_MN = (x_MK.astype(W.dtype) @ W_KN).astype(out_dtype)                     gemv_reference

With the add + RMSNorm prologue (the block's norm before its q|k|v or gate|up projection; the norm's own twin,
pallas_kernels/norm/add_rms_norm_reference.py):

    h_MK, xn_MK = add_rms_norm_reference(x_MK, r_MK, w_K, eps)                 (h: the new residual stream)
    y_MN = gemv_reference(xn_MK, W_KN)                                         -> (h_MK, y_MN)

With the SwiGLU epilogue (W's columns are [gate (F) | up (F)], layers/mlp.py's fused gate_up):

    gate_MF, up_MF = split(y_M2F)      (each rounded to out_dtype, as the model's Linear returns them)
    y_MF = silu(gate_MF) * up_MF                                               (in out_dtype)
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from pallas_kernels.norm.add_rms_norm_reference import add_rms_norm_reference


def gemv_reference(x_MK, w_KN, out_dtype=None):
    """x [M, K] @ W [K, N] -> [M, N] in out_dtype (default W's), accumulated in float32."""
    prec = jax.lax.Precision.HIGHEST if w_KN.dtype == jnp.float32 else None
    y = jnp.dot(x_MK.astype(w_KN.dtype), w_KN, precision=prec, preferred_element_type=jnp.float32)
    return y.astype(out_dtype or w_KN.dtype)


def swiglu_reference(y_M2F):
    """silu(gate) * up for y = [gate | up] on its last axis, in y's dtype (layers/mlp.py's order)."""
    gate_MF, up_MF = jnp.split(y_M2F, 2, axis=-1)
    return jax.nn.silu(gate_MF) * up_MF


def fused_gemv_reference(x_MK, w_KN, norm: Optional[Tuple] = None, swiglu: bool = False, out_dtype=None):
    """The kernel's contract: norm = (r_MK, w_K, eps) adds the add + RMSNorm prologue and returns (h, y);
    swiglu reads W's columns as [gate | up] and returns silu(gate) * up [M, N / 2]."""
    h_MK = None
    if norm is not None:
        r_MK, wn_K, eps = norm
        h_MK, x_MK = add_rms_norm_reference(x_MK, r_MK.astype(x_MK.dtype), wn_K.astype(x_MK.dtype), eps)
    y = gemv_reference(x_MK, w_KN, out_dtype)
    if swiglu:
        y = swiglu_reference(y)
    return y if norm is None else (h_MK, y)
