"""Residual add + RMSNorm in one Triton kernel (contract: add_rms_norm_reference.py).

XLA runs `h = x + delta` and the RMSNorm after it as three kernels (the add, the sum of squares, the scaling):
each a launch and a pass over h. Here one program per row loads x and delta once, writes h and y. A row is one
block of D values, so D must be a power of two (Triton's tiles; Llama's 4096 and 8192 are); dispatch.py sends
other widths to the twin.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.attention.triton_glue import triton_call


def _kernel(x_ref, d_ref, w_ref, h_ref, y_ref, *, eps):
    h = x_ref[...] + d_ref[...]
    h_ref[...] = h
    hf = h.astype(jnp.float32)
    hf = hf * jax.lax.rsqrt(jnp.mean(hf * hf, axis=-1, keepdims=True) + eps)
    y_ref[...] = w_ref[...] * hf.astype(y_ref.dtype)


def supported(D: int) -> bool:
    """Whether a row of D values is one Triton block (a power of two, at least 16)."""
    return D >= 16 and D & (D - 1) == 0


@functools.partial(jax.jit, static_argnames=("eps", "interpret"))
def add_rms_norm_gpu(x_MD, delta_MD, w_D, eps: float, interpret: bool = False):
    """(h = x + delta, RMSNorm(h) * w) for x, delta [M, D] and w [D] of one dtype; one program per row."""
    M, D = x_MD.shape
    if not supported(D):
        raise ValueError(f"add_rms_norm_gpu: D={D} must be a power of two >= 16 (one Triton block per row)")
    if delta_MD.shape != (M, D) or w_D.shape != (D,):
        raise ValueError(f"add_rms_norm_gpu: x {x_MD.shape}, delta {delta_MD.shape}, w {w_D.shape} do not match")
    row = pl.BlockSpec((1, D), lambda m: (m, 0))
    out = jax.ShapeDtypeStruct((M, D), x_MD.dtype)
    return tuple(triton_call(functools.partial(_kernel, eps=eps), (M,), (x_MD, delta_MD, w_D.reshape(1, D)),
                             [row, row, pl.BlockSpec((1, D), lambda m: (0, 0))], (out, out), (row, row),
                             num_warps=4, num_stages=1, interpret=interpret, name=f"add_rms_norm_D{D}"))
