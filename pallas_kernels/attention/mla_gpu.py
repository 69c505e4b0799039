"""GPU absorbed-MLA paged decode attention: Pallas with the Triton lowering (and CPU interpret mode).

Contract: `mla_reference.py` restricted to one query token per sequence: q_c [R, N, C]
and q_r [R, N, E] of sequence r see its latent keys [0, lengths_R[r]); a row of
length 0 comes out as zeros. Output o [R, N, C] in q_c's dtype.

Grid (R, NB, J): one program per (sequence, head block, split).

- Head block. Every head attends over the same latent (multi-query), so the
  heads are the rows of the tile: Hb = block_h heads per program ([Hb, C] query
  tile and float32 accumulator), Hb a power of two >= 16 so tl.dot is legal;
  N is zero-padded up to NB * Hb. The default Hb = 16 keeps the [16, 512]
  float32 accumulator at 64 registers per thread with 4 warps (DeepSeek-V3's
  N = 128 heads -> NB = 8 programs per sequence and split, which re-read the
  same pages through L2 rather than HBM).
- Key blocks. A program walks its split's keys in blocks of block_k = ppb * Z
  positions (ppb whole pages, both powers of two). For each block it gathers
  the ppb page ids from page_table_RM (entries past the row's visible pages,
  e.g. -1 or garbage, are replaced by page 0 and never weighted), then loads
  the block's c [block_k, C] and k_r [block_k, E] tiles ONCE: c is both the
  no-RoPE part of the key and the value. C and E are powers of two
  (DeepSeek: 512 and 64), so c and k_r are two tiles and the logits are the
  sum of two dots (mla_block_math.latent_softmax_step, float32 online softmax).
- Split-K ("flash decoding"). Batch 1 gives R * NB = 8 programs on 132 SMs, so
  the sequence is cut into J splits of whole blocks (splits.plan_splits picks
  J for R * NB programs); each program writes an un-normalised partial
  (acc, m, l) and `splits.merge_splits` combines them exactly. A program whose
  split starts past its row's length does no work.

The pools c_pages [L, P, Z, C] and kr_pages [L, P, Z, E] are whole-array refs
and the kernel computes (layer, page, slot) addresses itself: no slice, gather
or copy of a layer-stacked pool is made in XLA.

Layout of this file: `_mla_decode_kernel` is the kernel (backend-neutral ref
indexing plus mla_block_math); `triton_glue.load_rows` and `triton_glue.triton_call` are
the only Triton-specific pieces, so a Mosaic GPU port replaces those two.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.attention import layout, mla_block_math
from pallas_kernels.attention.splits import merge_splits, plan_splits
from pallas_kernels.attention.triton_glue import MIN_TILE, load_rows, triton_call

DEFAULT_BLOCK_K = 32  # keys per block: c [32, 512] bf16 = 32 KiB, k_r [32, 64] = 4 KiB per stage
DEFAULT_BLOCK_H = 16  # heads per program: a [16, 512] float32 accumulator


# ---------------------------------------------------------------- the kernel
def _mla_decode_kernel(len_ref, layer_ref, q_c_ref, q_r_ref, c_ref, kr_ref, table_ref, o_ref, m_ref, l_ref, *,
                       block_k, page_size, split_len, table_len, scale, cdt):
    r, j = pl.program_id(0), pl.program_id(2)
    layer = layer_ref[0]
    s_begin = j * split_len  # a multiple of block_k
    s_end = jnp.minimum(len_ref[r], s_begin + split_len)
    n_blocks = jnp.where(s_end > s_begin, jax.lax.div(s_end - s_begin + block_k - 1, block_k), 0)
    q_c_NC = q_c_ref[...].astype(cdt)
    q_r_NE = q_r_ref[...].astype(cdt)
    Hb, C = q_c_NC.shape
    E = q_r_NE.shape[1]
    ppb = block_k // page_size

    def body(i, state):
        start = s_begin + i * block_k
        slot0 = jax.lax.div(start, page_size)
        slots_M = slot0 + jnp.arange(ppb)
        in_table = (slots_M < table_len) if table_len % ppb else None
        ids_M = load_rows(table_ref.at[r, pl.ds(slot0, ppb)], in_table)
        # table entries past the row's visible pages may be anything (-1, freed, garbage): read page 0 there
        ids_M = jnp.where(slots_M * page_size < s_end, ids_M, 0)
        c_TC = c_ref[layer, ids_M, :, :].reshape(block_k, C).astype(cdt)  # read once: key part and value
        kr_TE = kr_ref[layer, ids_M, :, :].reshape(block_k, E).astype(cdt)
        pos_T = start + jnp.arange(block_k)
        valid_T = pos_T < s_end
        return mla_block_math.latent_softmax_step(q_c_NC, q_r_NE, c_TC, kr_TE, valid_T[None, :], valid_T[:, None],
                                                  state, scale=scale)

    m, l, acc = jax.lax.fori_loop(0, n_blocks, body, mla_block_math.init_state(Hb, C))
    o_ref[...] = acc
    m_ref[...] = m
    l_ref[...] = l


# ---------------------------------------------------------------- wrappers
@functools.partial(jax.jit, static_argnames=("scale", "block_k", "block_h", "num_splits", "num_warps",
                                             "num_stages", "interpret"))
def _run(q_c_RNC, q_r_RNE, c, kr, table_RM, len_R, layer, *, scale, block_k, block_h, num_splits, num_warps,
         num_stages, interpret):
    R, N, C = q_c_RNC.shape
    E = q_r_RNE.shape[2]
    L, P, Z, _ = c.shape
    M = table_RM.shape[1]
    cdt = mla_block_math.compute_dtype(q_c_RNC.dtype, c.dtype)
    NB = -(-N // block_h)
    Np = NB * block_h
    pad = ((0, 0), (0, Np - N), (0, 0))
    q_c = jnp.pad(q_c_RNC, pad).reshape(R, NB, block_h, C)
    q_r = jnp.pad(q_r_RNE.astype(q_c_RNC.dtype), pad).reshape(R, NB, block_h, E)
    plan = plan_splits(M * Z, block_k, R * NB, num_splits)
    J = plan.num_splits

    whole = pl.BlockSpec()  # the kernel indexes these itself
    tile = lambda w: pl.BlockSpec((None, None, block_h, w), lambda r, h, j: (r, h, 0, 0))
    part = lambda w: pl.BlockSpec((None, None, None, block_h, w), lambda r, h, j: (r, h, j, 0, 0))
    in_arrays = [len_R, jnp.reshape(layer, (1,)).astype(jnp.int32), q_c, q_r, c, kr, table_RM.astype(jnp.int32)]
    in_specs = [whole, whole, tile(C), tile(E), whole, whole, whole]
    out_shapes = [jax.ShapeDtypeStruct((R, NB, J, block_h, C), jnp.float32),
                  jax.ShapeDtypeStruct((R, NB, J, block_h, 1), jnp.float32),
                  jax.ShapeDtypeStruct((R, NB, J, block_h, 1), jnp.float32)]
    kernel = functools.partial(_mla_decode_kernel, block_k=block_k, page_size=Z, split_len=plan.split_len,
                               table_len=M, scale=scale, cdt=cdt)
    acc, m, l = triton_call(kernel, (R, NB, J), in_arrays, in_specs, out_shapes, [part(C), part(1), part(1)],
                             num_warps=num_warps, num_stages=num_stages, interpret=interpret,
                             name=f"mla_decode_attn_paged_H{block_h}_T{block_k}_J{J}")
    out, _, _ = merge_splits(acc, m[..., 0], l[..., 0])  # [R, NB, Hb, C]
    return out.reshape(R, Np, C)[:, :N].astype(q_c_RNC.dtype)


def _pow2(name: str, x: int, floor: int = 1):
    if x < floor or x & (x - 1):
        raise ValueError(f"{name}: Triton tiles need a power of two >= {floor}, got {x}")


def mla_paged_decode_attention_gpu(q_c_RNC, q_r_RNE, c_pages, kr_pages, page_table_RM, lengths_R, *, scale: float,
                                   layer=0, interpret=False, block_k: Optional[int] = None,
                                   block_h: Optional[int] = None, num_splits: Optional[int] = None, num_warps=4,
                                   num_stages=2):
    """Absorbed-MLA decode over latent pools (contract in the module docstring and mla_reference.py).

    q_c_RNC [R, N, C], q_r_RNE [R, N, E]; c_pages [L, P, Z, C], kr_pages [L, P, Z, E] (or without L);
    page_table_RM [R, M]; lengths_R [R] (clipped to [0, M * Z]); layer may be traced.
    block_k: keys per block, a power-of-two multiple of Z and >= 16 (default 32, at least Z);
    block_h: heads per program, a power of two >= 16 (default 16; N is zero-padded to a multiple);
    num_splits: split-K pieces per sequence (default: splits.choose_num_splits).
    Raises ValueError for shapes the kernel does not support, naming the dimension.
    """
    c, kr = mla_block_math.stack_latent_pools(q_c_RNC, q_r_RNE, c_pages, kr_pages, page_table_RM, lengths_R,
                                              "mla_paged_decode_attention_gpu")
    C = q_c_RNC.shape[2]
    Z, E = c.shape[2], kr.shape[3]
    M = page_table_RM.shape[1]
    _pow2("q_c: latent width C", C, MIN_TILE)
    _pow2("q_r: RoPE width E", E, MIN_TILE)
    _pow2("c_pages: page size Z", Z)
    bk = block_k or max(Z, MIN_TILE, min(DEFAULT_BLOCK_K, layout.next_pow2(M * Z)))
    _pow2("block_k", bk, max(Z, MIN_TILE))
    bh = block_h or DEFAULT_BLOCK_H
    _pow2("block_h", bh, MIN_TILE)
    len_R = jnp.clip(lengths_R.astype(jnp.int32), 0, M * Z)
    return _run(q_c_RNC, q_r_RNE, c, kr, page_table_RM, len_R, jnp.asarray(layer, jnp.int32), scale=float(scale),
                block_k=bk, block_h=bh, num_splits=num_splits, num_warps=num_warps, num_stages=num_stages,
                interpret=interpret)
