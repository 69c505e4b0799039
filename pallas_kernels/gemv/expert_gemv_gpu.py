"""A mixture-of-experts decode step's expert projections as one Triton kernel each (contract:
expert_gemv_reference.py).

    y_AN[a] = x_MK[row_A[a]] @ W_EKN[ids_A[a]]                         (A = T·k assignments: token, picked expert)
    swiglu (W2 given): y_AN[a] = silu(x[row] @ W[e]) * (x[row] @ W2[e])  (gate and up, each rounded to the out dtype)

XLA runs the decode path of layers/moe.py as a gather of the picked experts' weights (a weight-sized copy of
k x D x F per layer and projection), a transpose and a GEMM. Here program (a, j) reads expert ids_A[a]'s column
block j straight out of the stacked [E, K, N] parameter, as the decode GEMV (gemv_gpu.py) reads its W: only the
picked experts' bytes are read, each once per assignment, and nothing is copied. One row per program, padded to
a tl.dot tile of 16 in registers (masked loads); block sizes from gemv_gpu's rules (about one program per SM over
A x N / bn, 16 KB of weight per pipeline stage).
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.gemv.gemv_gpu import GPU_PROGRAMS, MIN_TILE, choose_block_k, swiglu_tile, tile_dot

BLOCK_N_CHOICES = (64, 32, 16)


def choose_expert_block_n(assignments: int, n_cols: int) -> int:
    """Output columns per program: the largest of 64, 32, 16 dividing N that still gives >= GPU_PROGRAMS programs
    over the A x N / bn grid (else 16)."""
    for bn in BLOCK_N_CHOICES:
        if n_cols % bn == 0 and assignments * (n_cols // bn) >= GPU_PROGRAMS:
            return bn
    return BLOCK_N_CHOICES[-1]


def supported(K: int, N: int) -> bool:
    """Whether the contraction K and the output width N fit the kernel (both multiples of 16)."""
    return K >= MIN_TILE and K % MIN_TILE == 0 and N >= MIN_TILE and N % MIN_TILE == 0


def _kernel(*refs, K, bk, bn, swiglu):
    if swiglu:
        ids_ref, rows_ref, x_ref, w_ref, w2_ref, y_ref = refs
    else:
        (ids_ref, rows_ref, x_ref, w_ref, y_ref), w2_ref = refs, None
    a, j = pl.program_id(0), pl.program_id(1)
    e, row = ids_ref[a], rows_ref[a]
    Mp = MIN_TILE
    r_M = jnp.arange(Mp, dtype=jnp.int32)
    row_ok = (r_M == 0)[:, None]  # one real row in the tile
    cols = pl.ds(pl.multiple_of(j * bn, bn), bn)
    A = y_ref.shape[0]

    def body(i, accs):
        k0 = pl.multiple_of(i * bk, bk)
        ks = (k0 + jnp.arange(bk, dtype=jnp.int32))[None, :]
        x = plgpu.load(x_ref.at[jnp.full((Mp, 1), row, jnp.int32), ks], mask=row_ok, other=0)  # [Mp, bk]
        out = (accs[0] + tile_dot(x, w_ref[e, pl.ds(k0, bk), cols]),)
        if swiglu:
            out += (accs[1] + tile_dot(x, w2_ref[e, pl.ds(k0, bk), cols]),)
        return out

    zero = jnp.zeros((Mp, bn), jnp.float32)
    accs = jax.lax.fori_loop(0, K // bk, body, (zero, zero) if swiglu else (zero,))
    y = swiglu_tile(accs[0], accs[1], y_ref.dtype) if swiglu else accs[0].astype(y_ref.dtype)
    # the tile's padding rows point past the array (never written: see gemv_gpu.py)
    out_rows = jnp.where(r_M == 0, a, A)[:, None]
    plgpu.store(y_ref.at[out_rows, (j * bn + jnp.arange(bn, dtype=jnp.int32))[None, :]], y, mask=row_ok)


@functools.partial(jax.jit, static_argnames=("out_dtype", "block_n", "block_k", "num_warps", "num_stages",
                                             "interpret"))
def expert_gemv_gpu(x_MK, w_EKN, ids_A, rows_A, w2_EKN=None, out_dtype=None, block_n: Optional[int] = None,
                    block_k: Optional[int] = None, num_warps: int = 4, num_stages: int = 3,
                    interpret: bool = False):
    """y [A, N]: row rows_A[a] of x times expert ids_A[a]'s W [K, N] (float32 accumulation, out_dtype default W's);
    with w2_EKN, silu(x W) * (x W2) (the experts' gate and up)."""
    M, K = x_MK.shape
    E, Kw, N = w_EKN.shape
    A = ids_A.shape[0]
    if Kw != K or not supported(K, N) or rows_A.shape != (A,) or (w2_EKN is not None and w2_EKN.shape != w_EKN.shape):
        raise ValueError(f"expert_gemv_gpu: x {x_MK.shape}, W {w_EKN.shape}, W2 "
                         f"{None if w2_EKN is None else w2_EKN.shape}, ids {ids_A.shape}, rows {rows_A.shape}: need "
                         f"W [E, K, N] with K and N multiples of {MIN_TILE}, one id and one row per assignment")
    swiglu = w2_EKN is not None
    bn = block_n or choose_expert_block_n(A, N)
    if bn & (bn - 1) or bn < MIN_TILE or N % bn:
        raise ValueError(f"block_n: a power of two >= {MIN_TILE} dividing N={N}, got {bn}")
    bk = choose_block_k(K, bn, 2 if swiglu else 1, w_EKN.dtype.itemsize, block_k)
    out_dtype = jnp.dtype(out_dtype or w_EKN.dtype)
    whole = pl.BlockSpec()
    ins = (ids_A.astype(jnp.int32), rows_A.astype(jnp.int32), x_MK, w_EKN) + ((w2_EKN,) if swiglu else ())
    return pl.pallas_call(
        functools.partial(_kernel, K=K, bk=bk, bn=bn, swiglu=swiglu), grid=(A, N // bn),
        in_specs=[whole] * len(ins), out_specs=whole, out_shape=jax.ShapeDtypeStruct((A, N), out_dtype),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages), interpret=interpret,
        name=f"expert_gemv{'_swiglu' if swiglu else ''}_E{E}_K{K}_N{N}_n{bn}_k{bk}")(*ins)
