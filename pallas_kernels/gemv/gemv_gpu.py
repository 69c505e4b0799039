"""Decode projections as one Triton kernel each, no split-K (contract: gemv_reference.py).

y[M, N] = x[M, K] @ W[K, N] for a few rows M <= 64 (decode tokens: a batch, a verify run) and a float weight.
XLA's untuned GEMM tiles split K for these shapes and sum the float32 partials in a separate reduction kernel: two launches
per projection, plus the add + RMSNorm kernel before q|k|v and gate|up and the SiLU * up fusion after. Here one
launch does each projection with its neighbours folded in:

    prologue (norm=(r, w_norm, eps), M <= NORM_MAX_ROWS = 16): h = x + r and xn = RMSNorm(h) * w_norm, computed
        by every program (the rows are at most 16 x K values: every program re-reads them from L2, a first pass for
        the sum of squares and a second as it feeds the dot); program 0 also stores h, the new residual stream, as
        a second output. More rows would make that re-reading cost as much as the weight itself: dispatch.py runs
        the add + RMSNorm kernel (pallas_kernels/norm/) first for them.
    epilogue (swiglu): W's columns are [gate (F) | up (F)]; program j streams gate's and up's column block j and
        stores silu(gate) * up [M, F].

Grid (N / bn,): program j owns output columns [j*bn, (j+1)*bn) and loops (fori_loop, pipelined over num_stages
by Triton) over K in bk-row chunks, reading each W tile once: the weight is read exactly once per call, and
nothing but y (and h) is written. Choices, for a memory-bound GEMV on an H100 (132 SMs):

- the dot: rows padded to a tile of Mp = 16, 32 or 64 inside the kernel (masked loads and stores: no pad op
  outside) and a tensor-core tl.dot. An elementwise multiply + sum would skip 15 wasted rows of MMA work at M = 1, but the MMA work is
  free here (~1 us of tensor-core time per 8B projection) while the dot is what Triton's software pipeliner
  streams (cp.async stages into shared memory), and one path serves M = 1..64 (engine and verify steps). Every
  program reads all of x (M x K) from L2 against its bn columns of W, so at M = 64 x traffic is Mp / bn times the
  weight's: a K split would not change that (it cuts x and W alike), only a wider bn would, at fewer programs
  than SMs; bn stays the per-SM choice below and the GPU run decides (`make gpu-check` profiles both paths).
- bn: the largest of 64, 32, 16 that still gives >= GPU_PROGRAMS programs (one per SM) over the output
  columns: 32 for N = 6144 (192 programs), 16 for N = 4096 (256; 32 would leave 128 programs for 132 SMs),
  64 for SwiGLU's F = 14336 (224). No K split: that would need the reduction this kernel removes.
- bk: a power of two dividing K sized so each pipeline stage moves STAGE_BYTES of weight (16 KB: bk = 256 at
  bn = 32, 512 at bn = 16, 64 per stream for SwiGLU at bn = 64), and at most STAGE_BYTES of x for row tiles
  past 16 (bk = 128 at Mp = 64 in bfloat16: 8 KB of W + 16 KB of x per stage, 72 KB for three). With num_stages = 3 a program then holds 42-73 KB
  of shared memory (the x and r chunks included; compiled for sm_90a), so three or more fit an SM and a whole
  grid of 192-256 programs is resident at once (one wave; at 32 KB per stage the programs took 128-146 KB, one per
  SM, and 256 programs ran in two waves, the second half empty). Each program keeps ~2 stages (~32 KB) of loads
  in flight: ~50 KB per SM, where Little's law asks ~15 KB (3.35 TB/s x ~600 ns / 132 SMs).

Columns past N (an N that is no multiple of bn) are masked: their loads read a clamped column, their stores
are dropped. K must be a multiple of 16 (tl.dot's smallest tile); dispatch.py sends other shapes to XLA.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MAX_ROWS = 64  # rows are padded to a tl.dot tile of 16, 32 or 64; more rows are a GEMM (XLA's)
NORM_MAX_ROWS = 16  # the add + RMSNorm prologue's limit (module docstring)
MIN_TILE = 16
GPU_PROGRAMS = 132  # an H100's SMs: bn shrinks until there is about one program per SM
BLOCK_N_CHOICES = (64, 32, 16)
STAGE_BYTES = 16 * 1024  # weight bytes per pipeline stage (all streams together)
MAX_BLOCK_K = 1024


def _pow2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def supported(M: int, K: int) -> bool:
    """Whether rows M and contraction K fit the kernel (M <= 64 rows, K a multiple of 16)."""
    return 0 < M <= MAX_ROWS and K >= MIN_TILE and K % MIN_TILE == 0


def row_tile(M: int) -> int:
    """Mp: the rows' tl.dot tile, 16, 32 or 64."""
    return max(MIN_TILE, 1 << (M - 1).bit_length())


def choose_block_n(n_cols: int, block_n: Optional[int] = None) -> int:
    """Output columns per program (per stream): see the module docstring."""
    if block_n is not None:
        if not _pow2(block_n) or block_n < MIN_TILE:
            raise ValueError(f"block_n: Triton tiles need a power of two >= {MIN_TILE}, got {block_n}")
        return block_n
    for bn in BLOCK_N_CHOICES:
        if -(-n_cols // bn) >= GPU_PROGRAMS:
            return bn
    return BLOCK_N_CHOICES[-1]


def choose_block_k(K: int, bn: int, streams: int, itemsize: int, block_k: Optional[int] = None,
                   rows: int = MIN_TILE) -> int:
    """Rows of W per loop step: a power of two dividing K, STAGE_BYTES of weight per step at most (and of x, for
    a row tile `rows` past 16)."""
    if block_k is not None:
        if not _pow2(block_k) or block_k < MIN_TILE or K % block_k:
            raise ValueError(f"block_k: a power of two >= {MIN_TILE} dividing K={K}, got {block_k}")
        return block_k
    bk = MAX_BLOCK_K
    x_rows = rows if rows > MIN_TILE else 0
    while bk > MIN_TILE and (K % bk or bk * bn * streams * itemsize > STAGE_BYTES or bk * x_rows * itemsize >
                             STAGE_BYTES):
        bk //= 2
    return bk


def tile_dot(x, w):
    """x [Mp, bk] @ w [bk, bn] in float32 (x cast to w's dtype; full float32 precision for float32 weights)."""
    prec = jax.lax.Precision.HIGHEST if w.dtype == jnp.float32 else None
    return jax.lax.dot_general(x.astype(w.dtype), w, (((1,), (0,)), ((), ())), precision=prec,
                               preferred_element_type=jnp.float32)


def swiglu_tile(gate_acc, up_acc, dtype):
    """silu(gate) * up of two float32 accumulators, each rounded to dtype first as the model's projections return
    them, the product in dtype."""
    g = gate_acc.astype(dtype).astype(jnp.float32)
    u = up_acc.astype(dtype).astype(jnp.float32)
    return (g * jax.nn.sigmoid(g) * u).astype(dtype)


def _kernel(*refs, M, Mp, K, n_cols, bk, bn, has_norm, swiglu, up_col, eps):
    if has_norm:
        x_ref, r_ref, wn_ref, w_ref, y_ref, h_ref = refs
    else:
        (x_ref, w_ref, y_ref), r_ref, wn_ref, h_ref = refs, None, None, None
    j = pl.program_id(0)
    rows = jnp.arange(Mp, dtype=jnp.int32)
    row_ok = (rows < M)[:, None]  # [Mp, 1]
    rows_in = jnp.minimum(rows, M - 1)[:, None]  # loads: padding rows read row M-1 (masked off anyway)
    cols = j * bn + jnp.arange(bn, dtype=jnp.int32)
    col_ok = (cols < n_cols)[None, :]  # [1, bn]
    ragged = n_cols % bn != 0
    nk = K // bk

    def row_chunk(ref, k0):  # [Mp, bk] of x or r; padding rows load nothing (zeros)
        ks = (k0 + jnp.arange(bk, dtype=jnp.int32))[None, :]
        return plgpu.load(ref.at[rows_in, ks], mask=row_ok, other=0)

    def w_tile(k0, col0):  # W [bk, bn] from column col0 + j * bn
        if not ragged:
            return w_ref[pl.ds(k0, bk), pl.ds(pl.multiple_of(col0 + j * bn, bn), bn)]
        ks = (k0 + jnp.arange(bk, dtype=jnp.int32))[:, None]
        return w_ref[ks, col0 + jnp.minimum(cols, n_cols - 1)[None, :]]  # past-the-end columns: clamped

    rstd = None
    if has_norm:  # pass 1: the sum of squares of h = x + r, per row, in float32
        def sumsq(i, acc):
            k0 = pl.multiple_of(i * bk, bk)
            hf = (row_chunk(x_ref, k0) + row_chunk(r_ref, k0)).astype(jnp.float32)
            return acc + jnp.sum(hf * hf, axis=1, keepdims=True)
        ss = jax.lax.fori_loop(0, nk, sumsq, jnp.zeros((Mp, 1), jnp.float32))
        rstd = jax.lax.rsqrt(ss / K + eps)

    def body(i, accs):
        k0 = pl.multiple_of(i * bk, bk)
        x = row_chunk(x_ref, k0)
        if has_norm:  # the model's order: h in x's dtype, normalized in float32, cast, then scaled
            ks = (k0 + jnp.arange(bk, dtype=jnp.int32))[None, :]
            h = x + row_chunk(r_ref, k0)
            plgpu.store(h_ref.at[rows[:, None], ks], h, mask=row_ok & (j == 0))  # program 0 writes the stream
            x = wn_ref[pl.ds(k0, bk)][None, :] * (h.astype(jnp.float32) * rstd).astype(h.dtype)
        out = (accs[0] + tile_dot(x, w_tile(k0, 0)),)
        if swiglu:
            out += (accs[1] + tile_dot(x, w_tile(k0, up_col)),)
        return out

    zero = jnp.zeros((Mp, bn), jnp.float32)
    accs = jax.lax.fori_loop(0, nk, body, (zero, zero) if swiglu else (zero,))
    y = swiglu_tile(accs[0], accs[1], y_ref.dtype) if swiglu else accs[0].astype(y_ref.dtype)
    # stores: padding rows and past-the-end columns point past the array (never written; see ragged_gpu.py)
    plgpu.store(y_ref.at[rows[:, None], cols[None, :]], y, mask=row_ok & col_ok if ragged else row_ok)


@functools.partial(jax.jit, static_argnames=("eps", "swiglu", "out_dtype", "block_n", "block_k", "num_warps",
                                             "num_stages", "interpret"))
def gemv_gpu(x_MK, w_KN, r_MK=None, wn_K=None, eps: float = 1e-6, swiglu: bool = False, out_dtype=None,
             block_n: Optional[int] = None, block_k: Optional[int] = None, num_warps: int = 4,
             num_stages: int = 3, interpret: bool = False):
    """x [M, K] @ W [K, N] -> y [M, N] in out_dtype (default W's), float32 accumulation, M <= 64.

    r_MK and wn_K given: the add + RMSNorm prologue (x, r, wn of x's dtype): returns (h = x + r, y), y computed
    from RMSNorm(h) * wn. swiglu: W's columns are [gate | up]; y = silu(gate) * up [M, N / 2].
    """
    M, K = x_MK.shape
    N = w_KN.shape[1]
    has_norm = r_MK is not None
    if not supported(M, K) or w_KN.shape[0] != K:
        raise ValueError(f"gemv_gpu: x {x_MK.shape} @ W {w_KN.shape}: need M <= {MAX_ROWS} rows and a K that is a "
                         f"multiple of {MIN_TILE}")
    if has_norm and M > NORM_MAX_ROWS:
        raise ValueError(f"gemv_gpu: the add + RMSNorm prologue takes at most {NORM_MAX_ROWS} rows, got x "
                         f"{x_MK.shape} (dispatch.gemv runs the norm kernel first for more)")
    if has_norm and (r_MK.shape != (M, K) or wn_K is None or wn_K.shape != (K,)):
        raise ValueError(f"gemv_gpu: the norm's residual {r_MK.shape} and weight "
                         f"{None if wn_K is None else wn_K.shape} do not match x {x_MK.shape}")
    if swiglu and N % 2:
        raise ValueError(f"gemv_gpu: swiglu needs W's columns as [gate | up], got an odd N={N}")
    n_cols = N // 2 if swiglu else N
    bn = choose_block_n(n_cols, block_n)
    Mp = row_tile(M)
    bk = choose_block_k(K, bn, 2 if swiglu else 1, w_KN.dtype.itemsize, block_k, rows=Mp)
    out_dtype = jnp.dtype(out_dtype or w_KN.dtype)
    kernel = functools.partial(_kernel, M=M, Mp=Mp, K=K, n_cols=n_cols, bk=bk, bn=bn, has_norm=has_norm, swiglu=swiglu,
                               up_col=n_cols, eps=eps)
    whole = pl.BlockSpec()  # the kernel indexes everything itself (masked rows and columns)
    ins = (x_MK, r_MK.astype(x_MK.dtype), wn_K.astype(x_MK.dtype), w_KN) if has_norm else (x_MK, w_KN)
    outs = [jax.ShapeDtypeStruct((M, n_cols), out_dtype)] + ([jax.ShapeDtypeStruct((M, K), x_MK.dtype)]
                                                              if has_norm else [])
    name = f"gemv{'_norm' if has_norm else ''}{'_swiglu' if swiglu else ''}_K{K}_N{N}_m{Mp}_n{bn}_k{bk}"
    res = pl.pallas_call(
        kernel, grid=(-(-n_cols // bn),), in_specs=[whole] * len(ins), out_specs=[whole] * len(outs),
        out_shape=outs, compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret, name=name)(*ins)
    return (res[1], res[0]) if has_norm else res[0]
