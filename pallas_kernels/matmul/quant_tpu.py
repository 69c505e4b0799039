"""TPU quantized matmul for decode shapes: Pallas Mosaic TPU (tested under TPU interpret mode on CPU).

Same contract and block math as quant_gpu (quant_block_math); what the TPU version does differently:

- The I loop is a grid axis, not a fori_loop: grid (M blocks, O blocks, S splits, I blocks per split),
  the last axis "arbitrary" (sequential), the others "parallel" (megacore). Each step's block specs copy
  x's columns [bm, R], the stored bytes q [R, bn] and the block's scale/min rows from HBM to VMEM, and the
  Pallas pipeline double-buffers those copies (block k + 1 is in flight while block k is decoded). The
  float32 output tile [bm, bn] stays resident in VMEM across the I axis and is the accumulator.
- Block shapes follow the TPU rule (last two dims multiples of (8, 128) or the full dims): bn is a
  multiple of 128; x's column block R = bk / P is a multiple of 128, so a 4-bit block holds >= 256
  inputs (R = 128 byte rows is also a multiple of the 32-row native tile of (u)int8 data, so the q block
  is tile aligned); rows are padded to bm, a multiple of 8. The scale/min arrays are viewed as
  [nS, Gs, 1, O] (quant_layout.scale_blocks) so the Gs rows of one block are a full-dim (Gs, 1, bn) block
  even when Gs is 1, 2 or 4 -- a (Gs, bn) window of [I/g, O] would violate the 8-row rule -- and arrive
  with the unit axis the per-row repeat broadcasts over (no in-kernel reshape inserts a unit sublane dim).
- Splits must divide the I blocks evenly (the index maps are affine in the grid indices); S defaults to 1
  since the O blocks alone give both TensorCores of a megacore chip work.
- In the kernel, uint8 bytes are widened to int32 before the nibble and/shift (Mosaic's vector bitwise
  ops and float converts are 32-bit), float16 scales are widened to float32 and the per-group rows are
  repeated with a sublane broadcast + leading-dim reshape whose row count (g/2 or g) is a multiple of 8.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.matmul import quant_block_math, quant_layout
from pallas_kernels.matmul.formats import get_format

LANES, SUBLANES = 128, 8
DEFAULT_ROWS = 512  # stored q rows per I block (multiple of 128): [512, 512] bytes = 256 KiB per q buffer
DEFAULT_BLOCK_N = 512
MAX_BLOCK_M = 256


def interpret_params(interpret):
    """True -> TPU interpret mode that raises on out-of-bounds reads and fills uninitialised memory with NaN."""
    if interpret is True:
        return pltpu.InterpretParams(out_of_bounds_reads="raise", uninitialized_memory="nan")
    return interpret or False


def choose_block_k(I: int, g: int, parts: int, block_k: Optional[int] = None) -> int:
    """An I block of whole groups (or a slice of a per-channel group) whose R = bk / P is a multiple of 128."""
    if block_k is not None:
        R = block_k // parts
        if block_k % parts or (R % LANES and block_k != I):
            raise ValueError(f"block_k: TPU blocks need block_k / {parts} stored rows to be a multiple of {LANES} "
                             f"(or block_k = I = {I}), got {block_k}")
        return block_k
    bk = DEFAULT_ROWS * parts
    while bk >= LANES * parts:
        if I % bk == 0 and (bk % g == 0 or g % bk == 0):
            return bk
        bk -= LANES * parts
    if I <= DEFAULT_ROWS * parts * 4:
        return I  # the full dimension is always a legal block (one I block)
    raise ValueError(f"quant_matmul_tpu: the input dimension I={I} has no block of whole groups (g={g}) that is a "
                     f"multiple of {LANES * parts} inputs; use an I that is a multiple of {LANES * parts}")


def choose_block_n(O: int, block_n: Optional[int] = None) -> int:
    if block_n is not None:
        if block_n % LANES and block_n != O:
            raise ValueError(f"block_n: TPU blocks need a multiple of {LANES} (or block_n = O = {O}), got {block_n}")
        return block_n
    bn = DEFAULT_BLOCK_N
    while bn >= LANES:
        if O % bn == 0:
            return bn
        bn -= LANES
    if O <= 4 * DEFAULT_BLOCK_N:
        return O
    raise ValueError(f"quant_matmul_tpu: the output dimension O={O} is not a multiple of {LANES}; pad the "
                     f"weight's O to a multiple of {LANES}")


def _quant_matmul_kernel(*refs, plan: quant_layout.Plan, compute_dtype):
    P = plan.parts
    x_refs, q_ref, s_ref = refs[:P], refs[P], refs[P + 1]
    m_ref = refs[P + 2] if plan.has_min else None
    o_ref = refs[-1]
    k = pl.program_id(3)

    @pl.when(k == 0)
    def _init():
        o_ref[...] = jnp.zeros(o_ref.shape, jnp.float32)

    o_ref[...] = quant_block_math.block_update(
        o_ref[...], [xr[...] for xr in x_refs], q_ref[...], s_ref[...], None if m_ref is None else m_ref[...],
        bits=plan.bits, zero=plan.zero, compute_dtype=compute_dtype)


@functools.partial(jax.jit, static_argnames=("plan", "block_m", "num_splits", "compute_dtype", "interpret"))
def _run(x_parts, q, scale, mn, *, plan, block_m, num_splits, compute_dtype, interpret):
    Mp = x_parts[0].shape[0]
    R, bn, Gs = plan.rows, plan.block_n, plan.scale_rows
    kpb = plan.num_k_blocks // num_splits  # I blocks per split
    kps = plan.k_blocks_per_scale_block

    def x_map(m, j, s, k):
        return m, s * kpb + k

    def q_map(m, j, s, k):
        return s * kpb + k, j

    def s_map(m, j, s, k):
        kk = s * kpb + k
        return (kk if kps == 1 else jax.lax.div(kk, kps)), 0, 0, j  # non-negative: lax.div is floor

    in_arrays = [*x_parts, q, scale] + ([mn] if plan.has_min else [])
    s_spec = pl.BlockSpec((None, Gs, 1, bn), s_map)
    in_specs = ([pl.BlockSpec((block_m, R), x_map)] * plan.parts + [pl.BlockSpec((R, bn), q_map), s_spec]
                + ([s_spec] if plan.has_min else []))
    kernel = functools.partial(_quant_matmul_kernel, plan=plan, compute_dtype=compute_dtype)
    out = pl.pallas_call(
        kernel, grid=(Mp // block_m, plan.num_n_blocks, num_splits, kpb), in_specs=in_specs,
        out_specs=pl.BlockSpec((None, block_m, bn), lambda m, j, s, k: (s, m, j)),
        out_shape=jax.ShapeDtypeStruct((num_splits, Mp, plan.O), jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret, name=f"quant_matmul_tpu_b{plan.bits}_g{plan.g}_k{plan.block_k}_n{bn}_s{num_splits}",
    )(*in_arrays)
    return out[0] if num_splits == 1 else jnp.sum(out, axis=0)


def quant_matmul_tpu(x_MI, qw: dict, fmt, *, block_k=None, block_n=None, num_splits=1, compute_dtype=jnp.float32,
                     interpret=False):
    """x [M, I] @ the quantized weight qw (format fmt) -> float32 [M, O] (contract: quant_reference).

    compute_dtype float32 (default) multiplies at full float32 precision, like the reference; bfloat16
    rounds x and the decoded weights to feed the MXU at its native rate (float32 accumulation either way).
    """
    fmt = get_format(fmt)
    x_MI = jnp.asarray(x_MI)
    I, O = quant_layout.check_weight(qw, fmt)
    g = fmt.group_size(I)
    parts = 2 if fmt.bits == 4 else 1
    plan = quant_layout.make_plan(x_MI, qw, fmt, choose_block_k(I, g, parts, block_k), choose_block_n(O, block_n),
                                  name="quant_matmul_tpu")
    if num_splits <= 0 or plan.num_k_blocks % num_splits:
        raise ValueError(f"quant_matmul_tpu: num_splits={num_splits} must divide the {plan.num_k_blocks} I blocks "
                         f"(I={I}, block_k={plan.block_k})")
    M = x_MI.shape[0]
    Mp8 = -(-M // SUBLANES) * SUBLANES
    block_m = min(MAX_BLOCK_M, Mp8)
    Mp = -(-M // block_m) * block_m
    cdt = jnp.dtype(compute_dtype)
    x_parts, q, scale, mn = quant_layout.kernel_operands(x_MI, qw, plan, Mp, cdt)
    # Mosaic has no float16 vector loads ("Invalid vector type for load", found by compiling for a TPU v5p
    # deviceless: tests/test_lowering_tpu.py): GGUF's float16 scales and mins go in as float32 (exact), a
    # conversion of I/g x O values per call; storing them as float32 at load time would spare it.
    widen = lambda a: a if a is None or a.dtype != jnp.float16 else a.astype(jnp.float32)
    out = _run(x_parts, q, widen(scale), widen(mn), plan=plan, block_m=block_m, num_splits=num_splits,
               compute_dtype=cdt.name, interpret=interpret_params(interpret))
    return out[:M]
