"""GPU quantized matmul for decode shapes: Pallas with the Triton lowering (CPU: interpret mode).

y[M, O] = x[M, I] @ W[I, O], W stored in a pallas_kernels/matmul/formats.py format, for a few rows M (decode:
M <= 16-ish) times a large weight. The packed bytes are read once and decoded in registers; nothing is
ever materialised as a float [I, O] weight.

Grid (M blocks, O blocks, S splits). Program (m, j, s) owns the output tile y[bm, bn] (rows padded to
bm >= 16, the smallest tl.dot tile) of split s: it loops (fori_loop, which Triton pipelines with
num_stages) over its share of the I blocks -- bk inputs = whole groups each -- loading per block the
x columns [bm, R] (two halves for 4-bit: see quant_block_math), the stored bytes q [R, bn] and the
block's Gs scale (and min) rows, dequantizing in registers and accumulating x @ W in float32. With
S > 1 ("split-K") each split writes its float32 partial [bm, bn] and the S partials are summed after the
call: a decode GEMV has only O / bn output tiles (32 for O = 4096), too few to fill 132 SMs, so I is cut
into S pieces until there are about GPU_TARGET_PROGRAMS programs.

The weight refs span all of I (BlockSpec over O only) and the kernel indexes its I block with pl.ds, so
a split's loop bounds are plain scalars. Triton tiles must be powers of two: bk, bn, bm are.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.matmul import quant_block_math, quant_layout
from pallas_kernels.matmul.formats import get_format

MIN_TILE = 16  # tl.dot needs every dimension >= 16
DEFAULT_ROWS = 128  # stored q rows per I block: bk = 128 (8-bit) or 256 (4-bit) inputs, 16 KiB per [128, 128] tile
DEFAULT_BLOCK_N = 128
MAX_BLOCK_M = 64
GPU_TARGET_PROGRAMS = 2 * 132  # two programs per H100 SM
MIN_BLOCKS_PER_SPLIT = 2


def _is_pow2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def choose_block_k(I: int, g: int, parts: int, block_k: Optional[int] = None) -> int:
    """A power-of-two I block of whole groups (or a slice of a per-channel group) with >= 16 stored rows."""
    if block_k is not None:
        if not _is_pow2(block_k) or block_k // parts < MIN_TILE:
            raise ValueError(f"block_k: Triton tiles need a power of two with block_k / {parts} >= {MIN_TILE} "
                             f"stored rows, got {block_k}")
        return block_k
    bk = DEFAULT_ROWS * parts
    while bk // parts >= MIN_TILE:
        if I % bk == 0 and (bk % g == 0 or g % bk == 0):
            return bk
        bk //= 2
    raise ValueError(f"quant_matmul_gpu: the input dimension I={I} has no power-of-two block of whole groups "
                     f"(g={g}) with >= {MIN_TILE * parts} inputs; use an I that is a multiple of {MIN_TILE * parts}")


def choose_block_n(O: int, block_n: Optional[int] = None) -> int:
    if block_n is not None:
        if not _is_pow2(block_n) or block_n < MIN_TILE:
            raise ValueError(f"block_n: Triton tiles need a power of two >= {MIN_TILE}, got {block_n}")
        return block_n
    bn = DEFAULT_BLOCK_N
    while bn >= MIN_TILE:
        if O % bn == 0:
            return bn
        bn //= 2
    raise ValueError(f"quant_matmul_gpu: the output dimension O={O} is not a multiple of {MIN_TILE}; "
                     f"pad the weight's O to a multiple of {MIN_TILE}")


def choose_num_splits(programs: int, num_k_blocks: int, num_splits: Optional[int] = None) -> int:
    """S: enough (M, O, split) programs to fill the GPU, at least MIN_BLOCKS_PER_SPLIT I blocks each, none empty."""
    if num_splits is None:
        want = -(-GPU_TARGET_PROGRAMS // programs)
        num_splits = max(1, min(want, num_k_blocks // MIN_BLOCKS_PER_SPLIT))
    if num_splits <= 0:
        raise ValueError(f"num_splits: must be > 0, got {num_splits}")
    per = -(-num_k_blocks // num_splits)
    return -(-num_k_blocks // per)


def _quant_matmul_kernel(*refs, plan: quant_layout.Plan, blocks_per_split: int, compute_dtype):
    P = plan.parts
    x_refs, q_ref, s_ref = refs[:P], refs[P], refs[P + 1]
    m_ref = refs[P + 2] if plan.has_min else None
    o_ref = refs[-1]
    R, kps = plan.rows, plan.k_blocks_per_scale_block
    s = pl.program_id(2)
    k0 = s * blocks_per_split
    n = jnp.minimum(plan.num_k_blocks - k0, blocks_per_split)

    def body(i, acc):
        k = k0 + i
        rows = pl.ds(pl.multiple_of(k * R, R), R)
        xs = [xr[:, rows] for xr in x_refs]
        si = k if kps == 1 else jax.lax.div(k, kps)
        return quant_block_math.block_update(
            acc, xs, q_ref[rows, :], s_ref[si], None if m_ref is None else m_ref[si], bits=plan.bits,
            zero=plan.zero, compute_dtype=compute_dtype)

    o_ref[...] = jax.lax.fori_loop(0, n, body, jnp.zeros(o_ref.shape, jnp.float32))


@functools.partial(jax.jit, static_argnames=("plan", "block_m", "num_splits", "compute_dtype", "num_warps",
                                             "num_stages", "interpret"))
def _run(x_parts, q, scale, mn, *, plan, block_m, num_splits, compute_dtype, num_warps, num_stages, interpret):
    Mp = x_parts[0].shape[0]
    nm, nn_ = Mp // block_m, plan.num_n_blocks
    per = -(-plan.num_k_blocks // num_splits)
    bn = plan.block_n
    xw = x_parts[0].shape[1]
    nS, Gs = scale.shape[0], scale.shape[1]  # scale / min: [nS, Gs, 1, O]
    in_arrays = [*x_parts, q, scale] + ([mn] if plan.has_min else [])
    in_specs = ([pl.BlockSpec((block_m, xw), lambda m, j, s: (m, 0))] * plan.parts
                + [pl.BlockSpec((q.shape[0], bn), lambda m, j, s: (0, j)),
                   pl.BlockSpec((nS, Gs, 1, bn), lambda m, j, s: (0, 0, 0, j))]
                + ([pl.BlockSpec((nS, Gs, 1, bn), lambda m, j, s: (0, 0, 0, j))] if plan.has_min else []))
    kernel = functools.partial(_quant_matmul_kernel, plan=plan, blocks_per_split=per, compute_dtype=compute_dtype)
    out = pl.pallas_call(
        kernel, grid=(nm, nn_, num_splits), in_specs=in_specs,
        out_specs=pl.BlockSpec((None, block_m, bn), lambda m, j, s: (s, m, j)),
        out_shape=jax.ShapeDtypeStruct((num_splits, Mp, plan.O), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret, name=f"quant_matmul_b{plan.bits}_g{plan.g}_k{plan.block_k}_n{bn}_s{num_splits}",
    )(*in_arrays)
    return out[0] if num_splits == 1 else jnp.sum(out, axis=0)


def quant_matmul_gpu(x_MI, qw: dict, fmt, *, block_k=None, block_n=None, num_splits=None,
                     compute_dtype=jnp.float32, num_warps=4, num_stages=3, interpret=False):
    """x [M, I] @ the quantized weight qw (format fmt) -> float32 [M, O] (contract: quant_reference).

    compute_dtype float32 (default) multiplies at full float32 precision, like the reference; bfloat16 /
    float16 rounds x and the decoded weights before a tensor-core dot (float32 accumulation either way).
    """
    fmt = get_format(fmt)
    x_MI = jnp.asarray(x_MI)
    I, O = quant_layout.check_weight(qw, fmt)
    g = fmt.group_size(I)
    parts = 2 if fmt.bits == 4 else 1
    plan = quant_layout.make_plan(x_MI, qw, fmt, choose_block_k(I, g, parts, block_k), choose_block_n(O, block_n),
                                  name="quant_matmul_gpu")
    M = x_MI.shape[0]
    block_m = min(MAX_BLOCK_M, max(MIN_TILE, quant_layout.next_pow2(M)))
    Mp = -(-M // block_m) * block_m
    S = choose_num_splits((Mp // block_m) * plan.num_n_blocks, plan.num_k_blocks, num_splits)
    cdt = jnp.dtype(compute_dtype)
    out = _run(*quant_layout.kernel_operands(x_MI, qw, plan, Mp, cdt),
               plan=plan, block_m=block_m, num_splits=S, compute_dtype=cdt.name,
               num_warps=num_warps, num_stages=num_stages, interpret=interpret)
    return out[:M]

