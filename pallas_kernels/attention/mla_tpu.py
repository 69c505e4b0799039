"""TPU absorbed-MLA paged decode attention: Pallas Mosaic TPU (tested under TPU interpret mode on CPU).

Contract: `mla_reference.py` restricted to one query token per sequence (the same
as mla_gpu.mla_paged_decode_attention_gpu): q_c [R, N, C], q_r [R, N, E] of
sequence r see its latent keys [0, lengths_R[r]); a row of length 0 is zeros.

Grid (R, J, I): sequence, split, key block within the split.

- Heads. All N heads of a sequence share its latent (multi-query), so they are
  the rows of one [Np, C] query tile (Np = N rounded up to the dtype's sublane
  tile): one pass over the pages serves every head. At DeepSeek-V3 shapes
  (N = 128, C = 512) the tile is one MXU-height block and the float32
  accumulator is 256 KiB of VMEM scratch, so no head blocking is needed.
- Key blocks. A block is ppb pages (S_blk = ppb * Z keys). The pools go in ppb
  times each (ppb operands, the same buffer): operand p of block i is page
  page_table[r, i * ppb + p] of `layer`, a (Z, C) block of c_pages [L, P, Z, C]
  and a (Z, E) block of kr_pages [L, P, Z, E] (each equal to the pool's last two
  dims, so any Z, C, E are legal blocks). The Pallas pipeline double-buffers the
  page DMAs. Each page's c arrives once and is used as the key part and the
  value. With ppb > 1 the pages are stacked along the key axis in VMEM, which
  needs Z to be a multiple of the dtype's sublane tile (8 float32, 16 bfloat16);
  otherwise ppb = 1.
- Index maps. The layer, the flattened page table and the lengths are scalar-
  prefetched into SMEM. The page number is clamped to the row's last page and
  the pool index into [0, P), so steps past a row's length re-use the resident
  block (the pipeline issues no copy when the index does not change) and
  `pl.when` skips their compute; table entries past the row's pages (-1,
  garbage) are never dereferenced. The layer-stacked pools are addressed in
  place: no slice or copy of them in XLA.
- Math. mla_block_math.latent_softmax_step (shared with the GPU kernel):
  logits scale * (q_c . c + q_r . k_r), float32 online softmax; keys at or past
  the length are masked and their c zeroed, so stale or NaN slots never leak.
  Running (m, l, acc) live in VMEM scratch across the sequential I axis.
- Split-K. J splits (default 1: a TensorCore walks one sequence; ask for 2 on a
  two-core chip running a single long sequence) write partial (acc, m, l) that
  `splits.merge_splits` combines exactly.

VMEM at DeepSeek-V3 shapes (N = 128, C = 512, E = 64, Z = 16, bf16, ppb = 16):
q tiles 2 x 160 KiB, c pages 2 x 16 x 16 KiB, k_r pages 2 x 16 x 4 KiB (lane-
padded), partial outputs 2 x 384 KiB, scratch 384 KiB: about 2.2 MiB.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.attention import mla_block_math
from pallas_kernels.attention.decode_tpu import interpret_params
from pallas_kernels.attention.splits import merge_splits, plan_splits

DEFAULT_BLOCK_KEYS = 256  # S_blk = ppb * Z keys per grid step: c [256, 512] bf16 = 256 KiB
SUBLANES = {4: 8, 2: 16}  # rows per native VMEM tile of a float dtype, by itemsize


def _choose_pages_per_block(Z: int, M: int, itemsize: int, pages_per_block: Optional[int]) -> int:
    """ppb pages per key block: about DEFAULT_BLOCK_KEYS keys, at most M; ppb > 1 needs tile-aligned pages."""
    sub = SUBLANES[itemsize]
    if pages_per_block is None:
        return max(1, min(M, DEFAULT_BLOCK_KEYS // Z)) if Z % sub == 0 else 1
    ppb = int(pages_per_block)
    if ppb < 1:
        raise ValueError(f"pages_per_block: must be >= 1, got {pages_per_block}")
    if ppb > 1 and Z % sub:
        raise ValueError(f"pages_per_block: {ppb} pages of Z={Z} keys cannot be stacked in a VMEM buffer "
                         f"(Z must be a multiple of {sub} for this dtype); use pages_per_block=1")
    return min(ppb, M)


# ---------------------------------------------------------------- the kernel
def _mla_decode_kernel(layer_ref, table_ref, len_ref, q_c_ref, q_r_ref, *refs, ppb, Z, blocks_per_split, scale,
                       cdt):
    c_refs, kr_refs = refs[:ppb], refs[ppb:2 * ppb]
    acc_out, m_out, l_out, m_sc, l_sc, acc_sc = refs[2 * ppb:]
    del layer_ref, table_ref  # only the index maps read them

    r, j, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    S_blk = ppb * Z
    hi = len_ref[r]
    start = (j * blocks_per_split + i) * S_blk

    @pl.when(i == 0)
    def _init():
        m, l, acc = mla_block_math.init_state(*acc_sc.shape)
        m_sc[...], l_sc[...], acc_sc[...] = m, l, acc

    @pl.when(start < hi)
    def _step():
        stack = lambda refs_p: (refs_p[0][...].astype(cdt) if ppb == 1
                                else jnp.concatenate([x[...].astype(cdt) for x in refs_p], axis=0))
        c_SC, kr_SE = stack(c_refs), stack(kr_refs)  # each page's c read once: key part and value
        valid_1S = start + jax.lax.broadcasted_iota(jnp.int32, (1, S_blk), 1) < hi
        valid_S1 = start + jax.lax.broadcasted_iota(jnp.int32, (S_blk, 1), 0) < hi
        m, l, acc = mla_block_math.latent_softmax_step(
            q_c_ref[...].astype(cdt), q_r_ref[...].astype(cdt), c_SC, kr_SE, valid_1S, valid_S1,
            (m_sc[...], l_sc[...], acc_sc[...]), scale=scale)
        m_sc[...], l_sc[...], acc_sc[...] = m, l, acc

    @pl.when(i == blocks_per_split - 1)
    def _finish():
        acc_out[...] = acc_sc[...]
        m_out[...] = m_sc[...]
        l_out[...] = l_sc[...]


# ---------------------------------------------------------------- wrappers
@functools.partial(jax.jit, static_argnames=("scale", "pages_per_block", "num_splits", "interpret"))
def _run(q_c_RNC, q_r_RNE, c, kr, table_RM, len_R, layer, *, scale, pages_per_block, num_splits, interpret):
    R, N, C = q_c_RNC.shape
    E = q_r_RNE.shape[2]
    L, P, Z, _ = c.shape
    M = table_RM.shape[1]
    cdt = mla_block_math.compute_dtype(q_c_RNC.dtype, c.dtype)
    ppb = pages_per_block
    S_blk = ppb * Z
    sub = SUBLANES[jnp.dtype(q_c_RNC.dtype).itemsize]  # of the q tiles' dtype
    Np = -(-N // sub) * sub
    pad = ((0, 0), (0, Np - N), (0, 0))
    q_c = jnp.pad(q_c_RNC, pad)
    q_r = jnp.pad(q_r_RNE.astype(q_c_RNC.dtype), pad)
    plan = plan_splits(M * Z, S_blk, R, num_splits if num_splits is not None else 1)
    J, I = plan.num_splits, plan.blocks_per_split

    def page_map(p):
        """Index map of operand p: (layer, pool page, 0, 0) of page p of the step's key block."""
        def index_map(r, j, i, layer_ref, table_ref, len_ref):
            last_page = jnp.clip(jax.lax.div(len_ref[r] - 1, Z), 0, M - 1)  # a row of length 0: slot 0
            page_no = jnp.minimum((j * I + i) * ppb + p, last_page)
            page = jnp.clip(table_ref[r * M + page_no], 0, P - 1)
            return layer_ref[0], page, 0, 0
        return index_map

    q_map = lambda r, j, i, *_: (r, 0, 0)
    part_map = lambda r, j, i, *_: (r, j, 0, 0)
    in_arrays = [q_c, q_r] + [c] * ppb + [kr] * ppb
    in_specs = ([pl.BlockSpec((None, Np, C), q_map), pl.BlockSpec((None, Np, E), q_map)]
                + [pl.BlockSpec((None, None, Z, C), page_map(p)) for p in range(ppb)]
                + [pl.BlockSpec((None, None, Z, E), page_map(p)) for p in range(ppb)])
    prefetch = [jnp.reshape(layer, (1,)).astype(jnp.int32), table_RM.reshape(-1).astype(jnp.int32), len_R]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(prefetch), grid=(R, J, I), in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, None, Np, C), part_map), pl.BlockSpec((None, None, Np, 1), part_map),
                   pl.BlockSpec((None, None, Np, 1), part_map)],
        scratch_shapes=[pltpu.VMEM((Np, 1), jnp.float32), pltpu.VMEM((Np, 1), jnp.float32),
                        pltpu.VMEM((Np, C), jnp.float32)])
    kernel = functools.partial(_mla_decode_kernel, ppb=ppb, Z=Z, blocks_per_split=I, scale=scale, cdt=cdt)
    acc, m, l = pl.pallas_call(
        kernel, grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((R, J, Np, C), jnp.float32),
                   jax.ShapeDtypeStruct((R, J, Np, 1), jnp.float32),
                   jax.ShapeDtypeStruct((R, J, Np, 1), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret, name=f"mla_decode_attn_tpu_paged_N{Np}_Z{Z}_P{ppb}_J{J}",
    )(*prefetch, *in_arrays)
    out, _, _ = merge_splits(acc, m[..., 0], l[..., 0])  # [R, Np, C]
    return out[:, :N].astype(q_c_RNC.dtype)


def mla_paged_decode_attention_tpu(q_c_RNC, q_r_RNE, c_pages, kr_pages, page_table_RM, lengths_R, *, scale: float,
                                   layer=0, interpret=False, block_k: Optional[int] = None,
                                   pages_per_block: Optional[int] = None, num_splits: Optional[int] = None):
    """Absorbed-MLA decode over latent pools, same contract and output as mla_gpu.mla_paged_decode_attention_gpu.

    block_k: keys per grid step, a multiple of Z (or give pages_per_block = block_k / Z instead; default
    about 256 keys, one page when Z is not sublane-aligned); num_splits: split-K pieces per sequence
    (default 1). interpret=True runs the strict TPU interpreter (decode_tpu.interpret_params). Raises
    ValueError for shapes the kernel does not support.
    """
    c, kr = mla_block_math.stack_latent_pools(q_c_RNC, q_r_RNE, c_pages, kr_pages, page_table_RM, lengths_R,
                                              "mla_paged_decode_attention_tpu")
    cdt = mla_block_math.compute_dtype(q_c_RNC.dtype, c.dtype)
    if q_c_RNC.dtype not in (jnp.float32, jnp.bfloat16) or cdt not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"q_c / c_pages: dtypes must be float32 or bfloat16, got {q_c_RNC.dtype} / {c.dtype}")
    Z, M = c.shape[2], page_table_RM.shape[1]
    if block_k is not None:
        if pages_per_block is not None or block_k % Z:
            raise ValueError(f"block_k: must be a multiple of the page size Z={Z} and not given together with "
                             f"pages_per_block, got block_k={block_k}, pages_per_block={pages_per_block}")
        pages_per_block = block_k // Z
    ppb = _choose_pages_per_block(Z, M, jnp.dtype(cdt).itemsize, pages_per_block)
    len_R = jnp.clip(lengths_R.astype(jnp.int32), 0, M * Z)
    return _run(q_c_RNC, q_r_RNE, c, kr, page_table_RM, len_R, jnp.asarray(layer, jnp.int32), scale=float(scale),
                pages_per_block=ppb, num_splits=num_splits, interpret=interpret_params(interpret))
