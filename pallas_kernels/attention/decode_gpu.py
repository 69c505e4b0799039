"""GPU decode attention: Pallas with the Triton lowering (and CPU interpret mode).

Grid (B, K, J): one program per (row, KV head, split). Its tile is the G
query heads of that KV head, loaded as the rows of a [Gp, H] tile (Gp >= 16 so
tl.dot is legal; rows past G are masked loads of zeros, so q goes in as the
projection wrote it, with no pad launch before the kernel). The program walks
only the key blocks of its split that intersect the row's visible range
[lo, hi) -- a short row does no work past its length. With J = 1 (a batch that
fills the GPU, splits.UNSPLIT_FROM) and no stats asked for, it writes the
normalised output [B, N, H] in q's dtype itself (G rows, masked stores): no
merge launch after it. Otherwise it writes an un-normalised partial
(acc, m, l) that `splits.merge_splits` combines.

The cache is read in place: k/v are whole-array refs ([L, B, K, S, H] or a
paged pool [L, P, K, Z, H]) and the kernel computes the address of
(layer, b, kh, block) itself, so no layer slice, transpose or copy of the
cache is made on any call.

Layout of this file: `_decode_kernel` is the kernel (backend-neutral refs
indexing plus block_math); `triton_glue.load_rows` and `triton_glue.triton_call` are the only
Triton-specific pieces (masked loads, CompilerParams), so a Mosaic GPU port
replaces those two.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.attention import block_math, layout
from pallas_kernels.attention.triton_glue import MIN_TILE, load_rows, load_tile_rows, store_tile_rows, triton_call
from pallas_kernels.attention.splits import merge_splits, plan_splits

DEFAULT_BLOCK_K = 64  # keys per block: [64, 128] bf16 = 16 KiB per K or V tile
# ---------------------------------------------------------------- the kernel
def _decode_kernel(*refs, block_k, split_len, seq_len, sm_scale, softcap, quantized, paged, page_size,
                   table_len, cdt, G, Gp, num_kv_heads, direct):
    it = iter(refs)
    lo_ref, hi_ref, layer_ref, q_ref, k_ref, v_ref = (next(it) for _ in range(6))
    ks_ref, vs_ref = (next(it), next(it)) if quantized else (None, None)
    tables_ref = next(it) if paged else None
    o_ref, m_ref, l_ref = (next(it), None, None) if direct else it

    b, kh, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    layer = layer_ref[0]
    split_lo = j * split_len
    s_begin = jnp.maximum(lo_ref[b], split_lo)
    s_end = jnp.minimum(hi_ref[b], split_lo + split_len)
    first = jax.lax.div(s_begin, block_k)  # non-negative: truncating division is floor division
    n_blocks = jnp.where(s_end > s_begin, jax.lax.div(s_end + block_k - 1, block_k) - first, 0)
    H = q_ref.shape[-1]
    # q [B*K*G, H]: this program's G rows, padded to the Gp-row tile by masked loads (padding rows read row G-1's
    # address, masked to zeros)
    g_G = jnp.arange(Gp, dtype=jnp.int32)
    g_ok = g_G < G
    rows_G = (b * num_kv_heads + kh) * G + jnp.minimum(g_G, G - 1)
    cols_H = jnp.arange(H, dtype=jnp.int32)
    q_GH = load_tile_rows(q_ref, rows_G, g_ok, cols_H).astype(cdt)

    def load_contiguous(start, pos_T):
        tail_T1 = (pos_T < seq_len)[:, None] if seq_len % block_k else None
        rows = (layer, b, kh, pl.ds(start, block_k))
        k_TH = load_rows(k_ref.at[rows + (slice(None),)], tail_T1)
        v_TH = load_rows(v_ref.at[rows + (slice(None),)], tail_T1)
        if not quantized:
            return k_TH, v_TH, None, None
        ks = load_rows(ks_ref.at[rows], None if tail_T1 is None else tail_T1[:, 0])
        vs = load_rows(vs_ref.at[rows], None if tail_T1 is None else tail_T1[:, 0])
        return k_TH, v_TH, ks[:, None], vs[:, None]

    def load_paged(start, pos_T):
        ppb = block_k // page_size
        slot0 = jax.lax.div(start, page_size)
        slots_M = slot0 + jnp.arange(ppb)
        in_table = (slots_M < table_len) if table_len % ppb else None
        ids_M = load_rows(tables_ref.at[b, pl.ds(slot0, ppb)], in_table)
        # table entries outside the row's visible pages may be anything (freed, -1): read page 0 there instead
        ids_M = jnp.where((slots_M * page_size < s_end) & ((slots_M + 1) * page_size > s_begin), ids_M, 0)
        k_TH = k_ref[layer, ids_M, kh, :, :].reshape(block_k, H)
        v_TH = v_ref[layer, ids_M, kh, :, :].reshape(block_k, H)
        if not quantized:
            return k_TH, v_TH, None, None
        ks = ks_ref[layer, ids_M, kh, :].reshape(block_k, 1)
        vs = vs_ref[layer, ids_M, kh, :].reshape(block_k, 1)
        return k_TH, v_TH, ks, vs

    load = load_paged if paged else load_contiguous

    def body(i, state):
        start = (first + i) * block_k
        pos_T = start + jnp.arange(block_k)
        valid_T = (pos_T >= s_begin) & (pos_T < s_end)
        k_TH, v_TH, ks_T1, vs_T1 = load(start, pos_T)
        k_TH = block_math.dequantize(k_TH, ks_T1, cdt)
        v_TH = block_math.dequantize(v_TH, vs_T1, cdt)
        return block_math.online_softmax_step(q_GH, k_TH, v_TH, valid_T[None, :], valid_T[:, None], state,
                                              sm_scale=sm_scale, softcap=softcap)

    m, l, acc = jax.lax.fori_loop(0, n_blocks, body, block_math.init_state(Gp, H))
    if direct:  # the whole row in one split: normalise here (a row with no visible key gives 0, as the merge does)
        out = (acc / jnp.where(l > 0, l, 1.0)).astype(o_ref.dtype)
        # padding rows point past the array (never written; a clamped index would alias row G-1, and interpret
        # mode's masked store writes every index it is given)
        store_tile_rows(o_ref, jnp.where(g_ok, rows_G, o_ref.shape[0]), g_ok, cols_H, out)
        return
    o_ref[...] = acc
    m_ref[...] = m
    l_ref[...] = l


# ---------------------------------------------------------------- wrappers
@functools.partial(jax.jit, static_argnames=(
    "sliding_window", "softcap", "return_stats", "num_splits", "block_k", "page_size", "num_warps",
    "num_stages", "interpret", "paged"))
def _run(q_BNH, k, v, k_scale, v_scale, tables_BM, lo_B, hi_B, layer, *, sliding_window, softcap, return_stats,
         num_splits, block_k, page_size, num_warps, num_stages, interpret, paged):
    del sliding_window  # already folded into lo_B
    B, N, H = q_BNH.shape
    L, X, K, Y, Hk = k.shape  # contiguous: X = B, Y = S; paged: X = P, Y = Z
    if Hk != H:
        raise ValueError(f"k: head dim {Hk} does not match q's {H} (q {q_BNH.shape}, k {k.shape})")
    if H & (H - 1):
        raise ValueError(f"q: Triton tiles need a power-of-two head dim, got H={H}")
    cdt = layout.compute_dtype(q_BNH.dtype)
    if N % K:
        raise ValueError(f"q: N={N} query heads is not a multiple of the cache's K={K} kv heads")
    G = N // K
    Gp = max(MIN_TILE, layout.next_pow2(G))
    q_XH = q_BNH.reshape(B * N, H)  # rows (b, kh, g): the kernel loads its G rows itself (no pad to Gp)
    if paged:
        seq_len, table_len = tables_BM.shape[1] * Y, tables_BM.shape[1]
    else:
        if X != B:
            raise ValueError(f"k: cache batch {X} does not match q's batch {B} (q {q_BNH.shape}, k {k.shape})")
        seq_len, table_len = Y, 0
    plan = plan_splits(seq_len, block_k, B * K, num_splits)
    J = plan.num_splits
    quantized = k_scale is not None
    direct = J == 1 and not return_stats

    whole = pl.BlockSpec()  # the kernel indexes these itself
    in_arrays = [lo_B, hi_B, jnp.reshape(layer, (1,)).astype(jnp.int32), q_XH, k, v]
    in_specs = [whole] * 6
    if quantized:
        in_arrays += [k_scale, v_scale]
        in_specs += [whole, whole]
    if paged:
        in_arrays.append(tables_BM.astype(jnp.int32))
        in_specs.append(whole)
    if direct:
        out_shapes, out_specs = [jax.ShapeDtypeStruct((B * N, H), q_BNH.dtype)], [whole]
    else:
        out_shapes, out_specs = _partial_outputs(B, K, J, Gp, H)
    kernel = functools.partial(
        _decode_kernel, block_k=block_k, split_len=plan.split_len, seq_len=seq_len, sm_scale=H ** -0.5,
        softcap=softcap, quantized=quantized, paged=paged, page_size=page_size, table_len=table_len, cdt=cdt,
        G=G, Gp=Gp, num_kv_heads=K, direct=direct)
    res = triton_call(kernel, (B, K, J), in_arrays, in_specs, out_shapes, out_specs, num_warps=num_warps,
                      num_stages=num_stages, interpret=interpret,
                      name=f"decode_attn_{'paged' if paged else 'dense'}_G{Gp}_T{block_k}_J{J}")
    if direct:
        return res[0].reshape(B, N, H)
    acc, m, l = res
    out, m, l = merge_splits(acc, m[..., 0], l[..., 0])
    return layout.unpack_out(out, m, l, G, q_BNH.dtype, return_stats)


def _partial_outputs(B, K, J, Gp, H):
    """(shapes, specs) of the split partials acc [B, K, J, Gp, H], m and l [B, K, J, Gp, 1], float32."""
    out_shapes = [jax.ShapeDtypeStruct((B, K, J, Gp, H), jnp.float32),
                  jax.ShapeDtypeStruct((B, K, J, Gp, 1), jnp.float32),
                  jax.ShapeDtypeStruct((B, K, J, Gp, 1), jnp.float32)]
    out_specs = [pl.BlockSpec((None, None, None, Gp, H), lambda b, h, j: (b, h, j, 0, 0)),
                 pl.BlockSpec((None, None, None, Gp, 1), lambda b, h, j: (b, h, j, 0, 0)),
                 pl.BlockSpec((None, None, None, Gp, 1), lambda b, h, j: (b, h, j, 0, 0))]
    return out_shapes, out_specs


def _block_k(seq_len: int, block_k: Optional[int]) -> int:
    bk = block_k or min(DEFAULT_BLOCK_K, max(MIN_TILE, layout.next_pow2(seq_len)))
    if bk < MIN_TILE or bk & (bk - 1):
        raise ValueError(f"block_k: must be a power of two >= {MIN_TILE}, got {bk}")
    return bk


def decode_attention_gpu_bounds(q_BNH, k, v, lo_B, hi_B, *, layer=0, k_scale=None, v_scale=None, softcap=None,
                                return_stats=False, num_splits=None, block_k=None, num_warps=4, num_stages=2,
                                interpret=False):
    """Decode attention over keys [lo_B[b], hi_B[b]) of each row (the model seam's entry point)."""
    k, v, k_scale, v_scale = layout.stack_cache(k, v, k_scale, v_scale, "decode_attention_gpu")
    S = k.shape[3]
    return _run(q_BNH, k, v, k_scale, v_scale, None, lo_B.astype(jnp.int32), jnp.minimum(hi_B, S).astype(jnp.int32),
                jnp.asarray(layer, jnp.int32), sliding_window=None, softcap=softcap, return_stats=return_stats,
                num_splits=num_splits, block_k=_block_k(S, block_k), page_size=0, num_warps=num_warps,
                num_stages=num_stages, interpret=interpret, paged=False)


def decode_attention_gpu(q_BNH, k, v, lengths_B, *, layer=0, k_scale=None, v_scale=None, sliding_window=None,
                         softcap=None, return_stats=False, num_splits=None, block_k=None, num_warps=4, num_stages=2,
                         interpret=False):
    """Same contract as reference.decode_attention_reference; k/v [L, B, K, S, H] or [B, K, S, H]."""
    S = k.shape[-2]
    lo_B, hi_B = layout.bounds_from_lengths(lengths_B, sliding_window, S)
    return decode_attention_gpu_bounds(q_BNH, k, v, lo_B, hi_B, layer=layer, k_scale=k_scale, v_scale=v_scale,
                                       softcap=softcap, return_stats=return_stats, num_splits=num_splits,
                                       block_k=block_k, num_warps=num_warps, num_stages=num_stages,
                                       interpret=interpret)


def paged_decode_attention_gpu(q_BNH, k_pages, v_pages, block_tables_BM, lengths_B, *, layer=0, k_scale=None,
                               v_scale=None, sliding_window=None, softcap=None, return_stats=False,
                               num_splits=None, pages_per_block=None, num_warps=4, num_stages=2, interpret=False):
    """Same contract as reference.paged_decode_attention_reference; pools [L, P, K, Z, H] or [P, K, Z, H]."""
    k, v, k_scale, v_scale = layout.stack_cache(k_pages, v_pages, k_scale, v_scale, "paged_decode_attention_gpu")
    Z = k.shape[3]
    if Z & (Z - 1):
        raise ValueError(f"k_pages: page size Z={Z} must be a power of two for Triton tiles")
    ppb = pages_per_block or max(1, DEFAULT_BLOCK_K // Z)
    if ppb & (ppb - 1) or ppb * Z < MIN_TILE:
        raise ValueError(f"pages_per_block: need a power of two with pages_per_block * Z >= {MIN_TILE}, "
                         f"got {ppb} (Z={Z})")
    M = block_tables_BM.shape[1]
    lo_B, hi_B = layout.bounds_from_lengths(lengths_B, sliding_window, M * Z)
    return _run(q_BNH, k, v, k_scale, v_scale, block_tables_BM, lo_B, hi_B, jnp.asarray(layer, jnp.int32),
                sliding_window=None, softcap=softcap, return_stats=return_stats, num_splits=num_splits,
                block_k=ppb * Z, page_size=Z, num_warps=num_warps, num_stages=num_stages, interpret=interpret,
                paged=True)
