"""TPU ragged paged attention: Pallas Mosaic TPU (tested under TPU interpret mode on CPU).

Same contract as ragged_reference (flat ragged batch of decode tokens, prefill
chunks and verify runs over a shared page pool). Design:

- Query layout. The wrapper gathers the flat queries q_TNH into a padded
  per-sequence view and packs GQA: [R, K, Qp * G, H], where Qp is max_q_len
  rounded up to the query block B_q. Row j of a (B_q * G, H) query tile is
  token j // G, query head j % G of the KV head, so the G heads that share a
  KV head and B_q tokens form one MXU-friendly tile. The gather (and the final
  scatter back to [T, N, H], zeros on padding rows) are XLA ops over T * N * H
  elements: cheap next to attention, which reads every visible key per token.
- Grid (R, Qp / B_q, I): sequence, query block, key block of `pages_per_block`
  (C) pages, i.e. S_blk = C * Z keys. One step handles all K KV heads (a loop
  in the kernel), so a page [K, Z, H] arrives as one contiguous DMA.
- Index maps. The page table, query_len, kv_len and the layer are scalar-
  prefetched into SMEM. The pool goes in C times (C operands, the same buffer):
  operand c of key block i reads pool page page_table[r, i * C + c] of the
  layer. The key block is clamped to [first, last], the blocks the query block
  can see (causal end, sliding-window start), and the page number to the
  sequence's last page, then the pool index into [0, P): steps outside the
  range re-use the resident block (the pipeline copies nothing when an index
  does not change) and `pl.when` skips their compute; table entries past the
  sequence's pages (-1, garbage) are never dereferenced.
- Math. A (B_q * G, S_blk) mask per step: key s is visible to row j iff its
  token is a real query (t < query_len) and s <= p (and s > p - W), with
  p = kv_len - query_len + t. Values (and int8 value scales) of keys at or
  past kv_len are zeroed, so stale or NaN slots never leak. float32 online
  softmax (m, l, acc) per KV head in VMEM scratch; a row with no visible key in
  a block keeps m = -inf without producing NaN, and a row that never sees a key
  (padding) writes 0.
- Pages to block. The C pages of one head are concatenated along the key axis
  (tile-aligned: with C > 1, Z must be a multiple of the compute dtype's
  sublane tile) so the two matmuls see S_blk keys at once.
- int8 pools are cast to the compute dtype in the kernel (exact for |x| <= 127)
  and their per-key scales applied to the logits and to the probabilities, so
  the scale pools are read as they are, [L, P, K, Z] with (K, Z) blocks: no
  relayout of a pool, no [Z, 1] lane-padded blocks.

VMEM at the defaults (K = 8, H = 128, bf16, B_q * G = 128, S_blk = 256): q and
out tiles 2 x 2 x 256 KiB, K/V pages 2 x 2 x 512 KiB, scratch 1.5 MiB: ~4.5 MiB.

Cost: R * (Qp / B_q) * I grid steps, steps outside a query block's key range
cost only the step overhead (no copy, no compute).
"""
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.attention import layout
from pallas_kernels.attention.decode_tpu import interpret_params

DEFAULT_QUERY_ROWS = 128  # B_q * G rows per query tile (one MXU pass of 128 rows)
DEFAULT_BLOCK_KEYS = 256  # S_blk = C * Z keys per key block
SUBLANES = {4: 8, 2: 16}  # rows per native VMEM tile of a float dtype, by itemsize


def _choose_block_q(max_q_len: int, G: int, q_dtype, block_q: Optional[int]):
    """(B_q, Qp): one query block of the whole padded length if it is short, else B_q * G tile-aligned rows."""
    Q = max(int(max_q_len), 1)
    sub = SUBLANES[jnp.dtype(q_dtype).itemsize]
    align = sub // math.gcd(G, sub)  # B_q must be a multiple of this for B_q * G to fill whole tiles
    if block_q is None:
        if Q * G <= DEFAULT_QUERY_ROWS:
            return Q, Q
        block_q = max(align, DEFAULT_QUERY_ROWS // G // align * align)
    bq = min(int(block_q), Q)
    if bq < 1:
        raise ValueError(f"block_q: must be >= 1, got {block_q}")
    if bq < Q and bq % align:
        raise ValueError(f"block_q: {bq} query tokens x G={G} heads = {bq * G} rows is not a multiple of the "
                         f"{sub}-row {jnp.dtype(q_dtype).name} tile; use a multiple of {align} (or >= max_q_len={Q})")
    return bq, -(-Q // bq) * bq


def _choose_pages_per_block(Z: int, M: int, compute_dtype, pages_per_block: Optional[int]) -> int:
    """C pages per key block: about DEFAULT_BLOCK_KEYS keys, at most M; C > 1 needs tile-aligned pages."""
    sub = SUBLANES[jnp.dtype(compute_dtype).itemsize]
    if pages_per_block is None:
        return max(1, min(M, DEFAULT_BLOCK_KEYS // Z)) if Z % sub == 0 else 1
    C = int(pages_per_block)
    if C < 1:
        raise ValueError(f"pages_per_block: must be >= 1, got {pages_per_block}")
    if C > 1 and Z % sub:
        raise ValueError(f"pages_per_block: {C} pages of Z={Z} keys cannot be stacked in a "
                         f"{jnp.dtype(compute_dtype).name} VMEM buffer (Z must be a multiple of {sub}); "
                         f"use pages_per_block=1")
    return min(C, M)


def _key_block_range(r, qb, qlen_ref, kvlen_ref, *, block_q, block_keys, sliding_window):
    """(first, last, active): key blocks query block qb of sequence r can see; active = it holds a real query."""
    q_len, kv_len = qlen_ref[r], kvlen_ref[r]
    t0 = qb * block_q
    active = t0 < q_len
    t1 = jnp.minimum(t0 + block_q, q_len) - 1
    p_first, p_last = kv_len - q_len + t0, kv_len - q_len + t1
    lo = 0 if sliding_window is None else jnp.maximum(p_first - sliding_window + 1, 0)
    # positions are non-negative on active blocks: truncating division is floor division
    first = jnp.where(active, jax.lax.div(lo, block_keys), 0)
    last = jnp.where(active, jax.lax.div(p_last, block_keys), 0)
    return first, last, active


def _online_softmax_step(q_RH, k_SH, v_SH, vis_RS, kvalid_1S, kvalid_S1, ks_1S, vs_1S, state, *, sm_scale,
                         softcap):
    """Fold one key block into (m, l, acc) [R_blk, 1], [R_blk, 1], [R_blk, H] with a per-row mask.

    Unlike block_math.online_softmax_step a row may see no key of the block (causal
    or window edge, padding token): its max stays -inf and exp uses 0 in its place.
    int8 pools come as integer-valued k_SH / v_SH plus per-key scales ks_1S / vs_1S
    (None for float pools), applied to the logits and to the probabilities:
    q.(k * s) = (q.k) * s and sum_s p_s (v_s * s_s) = sum_s (p_s * s_s) v_s.
    """
    m, l, acc = state
    prec = jax.lax.Precision.HIGHEST if q_RH.dtype == jnp.float32 else None
    s_RS = jax.lax.dot_general(q_RH, k_SH, (((1,), (1,)), ((), ())), precision=prec,
                               preferred_element_type=jnp.float32) * sm_scale
    if ks_1S is not None:
        s_RS = s_RS * ks_1S
    if softcap is not None:
        s_RS = softcap * jnp.tanh(s_RS / softcap)
    s_RS = jnp.where(vis_RS, s_RS, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s_RS, axis=1, keepdims=True))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    p_RS = jnp.exp(s_RS - m_safe)
    alpha = jnp.exp(m - m_safe)
    l_new = alpha * l + jnp.sum(p_RS, axis=1, keepdims=True)
    # stale slots (at or past kv_len) may hold NaN values or scales: 0 * NaN would leak, so zero them
    v_SH = jnp.where(kvalid_S1, v_SH, jnp.zeros_like(v_SH))
    pv_RS = p_RS if vs_1S is None else p_RS * jnp.where(kvalid_1S, vs_1S, 0.0)
    pv_RH = jax.lax.dot_general(pv_RS.astype(v_SH.dtype), v_SH, (((1,), (0,)), ((), ())), precision=prec,
                                preferred_element_type=jnp.float32)
    return m_new, l_new, alpha * acc + pv_RH


def _ragged_kernel(layer_ref, table_ref, qlen_ref, kvlen_ref, q_ref, *refs, K, G, Z, C, block_q, num_kv_blocks,
                   sm_scale, softcap, sliding_window, quantized, cdt):
    it = iter(refs)
    k_refs = [next(it) for _ in range(C)]
    v_refs = [next(it) for _ in range(C)]
    ks_refs = [next(it) for _ in range(C)] if quantized else None
    vs_refs = [next(it) for _ in range(C)] if quantized else None
    o_ref, m_sc, l_sc, acc_sc = it
    del layer_ref, table_ref  # only the index maps read them

    r, qb, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    S_blk = C * Z
    first, last, active = _key_block_range(r, qb, qlen_ref, kvlen_ref, block_q=block_q, block_keys=S_blk,
                                           sliding_window=sliding_window)

    @pl.when(i == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when(active & (i >= first) & (i <= last))
    def _step():
        q_len, kv_len = qlen_ref[r], kvlen_ref[r]
        rows = q_ref.shape[1]
        start = i * S_blk
        # lax.div, not //: floor division of a vector lowers through sign(), which needs a real TPU to lower
        tok_R1 = qb * block_q + jax.lax.div(jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0), G)
        pos_R1 = kv_len - q_len + tok_R1
        key_1S = start + jax.lax.broadcasted_iota(jnp.int32, (1, S_blk), 1)
        vis_RS = (key_1S <= pos_R1) & (tok_R1 < q_len)
        if sliding_window is not None:
            vis_RS &= key_1S > pos_R1 - sliding_window
        kvalid_1S = key_1S < kv_len
        kvalid_S1 = start + jax.lax.broadcasted_iota(jnp.int32, (S_blk, 1), 0) < kv_len

        def keys_SH(refs_c, h):  # head h of the C pages [K, Z, H] -> [S_blk, H]
            blocks = [x[h].astype(cdt) for x in refs_c]
            return blocks[0] if C == 1 else jnp.concatenate(blocks, axis=0)

        def scales_1S(refs_c, h):  # head h of the C scale pages [K, Z] -> [1, S_blk]
            if not quantized:
                return None
            parts = [x[h:h + 1, :] for x in refs_c]
            return parts[0] if C == 1 else jnp.concatenate(parts, axis=1)

        for h in range(K):  # static: every ref index below is static
            k_SH, v_SH = keys_SH(k_refs, h), keys_SH(v_refs, h)
            ks_1S, vs_1S = scales_1S(ks_refs, h), scales_1S(vs_refs, h)
            m_sc[h], l_sc[h], acc_sc[h] = _online_softmax_step(
                q_ref[h].astype(cdt), k_SH, v_SH, vis_RS, kvalid_1S, kvalid_S1, ks_1S, vs_1S,
                (m_sc[h], l_sc[h], acc_sc[h]), sm_scale=sm_scale, softcap=softcap)

    @pl.when(i == num_kv_blocks - 1)
    def _finish():
        l = l_sc[...]
        o_ref[...] = jnp.where(l > 0, acc_sc[...] / jnp.where(l > 0, l, 1.0), 0.0).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_q", "q_pad", "pages_per_block", "sliding_window", "softcap",
                                             "interpret"))
def _run(q_TNH, k, v, k_scale, v_scale, page_table_RM, query_start_R, query_len_R, kv_len_R, layer, *, block_q,
         q_pad, pages_per_block, sliding_window, softcap, interpret):
    T, N, H = q_TNH.shape
    L, P, K, Z, _ = k.shape
    R, M = page_table_RM.shape
    G = N // K
    C, bq, Qp = pages_per_block, block_q, q_pad
    S_blk = C * Z
    I = -(-M // C)
    rows = bq * G
    cdt = layout.compute_dtype(q_TNH.dtype)
    quantized = k_scale is not None

    # padded per-sequence view, GQA-packed: [R, K, Qp * G, H] (row = token * G + head of the KV head)
    i_Q = jnp.arange(Qp, dtype=jnp.int32)
    valid_RQ = i_Q[None, :] < query_len_R[:, None]
    src_RQ = jnp.where(valid_RQ, query_start_R[:, None] + i_Q[None, :], 0)
    q_RKXH = jnp.transpose(q_TNH[src_RQ].reshape(R, Qp, K, G, H), (0, 2, 1, 3, 4)).reshape(R, K, Qp * G, H)

    range_of = functools.partial(_key_block_range, block_q=bq, block_keys=S_blk, sliding_window=sliding_window)

    def page_map(c, block_rank):
        """Index map of operand c: (layer, pool page, 0...) for a block of `block_rank` trailing dims."""
        def index_map(r, qb, i, layer_ref, table_ref, qlen_ref, kvlen_ref):
            first, last, _ = range_of(r, qb, qlen_ref, kvlen_ref)
            last_page = jnp.clip(jax.lax.div(kvlen_ref[r] - 1, Z), 0, M - 1)
            page_no = jnp.minimum(jnp.clip(i, first, last) * C + c, last_page)
            page = jnp.clip(table_ref[r * M + page_no], 0, P - 1)
            return (layer_ref[0], page) + (0,) * block_rank
        return index_map

    q_map = lambda r, qb, i, *_: (r, 0, qb, 0)
    in_arrays = [q_RKXH] + [k] * C + [v] * C
    in_specs = ([pl.BlockSpec((None, K, rows, H), q_map)]
                + [pl.BlockSpec((None, None, K, Z, H), page_map(c, 3)) for c in range(C)] * 2)
    if quantized:
        # the scale pools as they are ([L, P, K, Z], no relayout): a (K, Z) block equals the full last two dims
        in_arrays += [k_scale] * C + [v_scale] * C
        in_specs += [pl.BlockSpec((None, None, K, Z), page_map(c, 2)) for c in range(C)] * 2
    scratch = [pltpu.VMEM((K, rows, 1), jnp.float32), pltpu.VMEM((K, rows, 1), jnp.float32),
               pltpu.VMEM((K, rows, H), jnp.float32)]
    prefetch = [jnp.reshape(layer, (1,)).astype(jnp.int32), page_table_RM.reshape(-1).astype(jnp.int32),
                query_len_R, kv_len_R]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(prefetch), grid=(R, Qp // bq, I), in_specs=in_specs,
        out_specs=pl.BlockSpec((None, K, rows, H), q_map), scratch_shapes=scratch)
    kernel = functools.partial(_ragged_kernel, K=K, G=G, Z=Z, C=C, block_q=bq, num_kv_blocks=I, sm_scale=H ** -0.5,
                               softcap=softcap, sliding_window=sliding_window, quantized=quantized, cdt=cdt)
    o_RKXH = pl.pallas_call(
        kernel, grid_spec=grid_spec, out_shape=jax.ShapeDtypeStruct((R, K, Qp * G, H), q_TNH.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret, name=f"ragged_paged_attn_tpu_G{G}_Bq{bq}_Z{Z}_C{C}",
    )(*prefetch, *in_arrays)

    o_RQNH = jnp.transpose(o_RKXH.reshape(R, K, Qp, G, H), (0, 2, 1, 3, 4)).reshape(R, Qp, N, H)
    dst_RQ = jnp.where(valid_RQ, src_RQ, T)  # padding goes out of bounds and is dropped
    return jnp.zeros((T, N, H), q_TNH.dtype).at[dst_RQ].set(o_RQNH, mode="drop")


def ragged_paged_attention_tpu(q_TNH, k_pages, v_pages, page_table_RM, query_start_R, query_len_R, kv_len_R, *,
                               max_q_len: int, layer=0, k_scale=None, v_scale=None,
                               sliding_window: Optional[int] = None, softcap: Optional[float] = None,
                               interpret=False, block_q: Optional[int] = None,
                               pages_per_block: Optional[int] = None):
    """Same contract and output as ragged_reference.ragged_paged_attention_reference.

    block_q: query tokens per tile (default: the whole max_q_len when max_q_len * G <= 128,
    else about 128 / G tokens, tile-aligned). pages_per_block: pages per key block (default
    about 256 keys). interpret=True runs the strict TPU interpreter (see decode_tpu.interpret_params).
    Raises ValueError for shapes the kernel does not support, naming the dimension.
    """
    k, v, k_scale, v_scale = layout.stack_cache(k_pages, v_pages, k_scale, v_scale, "ragged_paged_attention_tpu")
    T, N, H = q_TNH.shape
    L, P, K, Z, Hk = k.shape
    if Hk != H:
        raise ValueError(f"k_pages: head dim {Hk} does not match q's {H} (q {q_TNH.shape}, k_pages {k.shape})")
    if N % K:
        raise ValueError(f"q: N={N} query heads is not a multiple of the pool's K={K} kv heads")
    cdt = layout.compute_dtype(q_TNH.dtype)
    if cdt not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"q: dtype must be float32 or bfloat16, got {q_TNH.dtype}")
    if k.dtype not in (jnp.int8, q_TNH.dtype):
        raise ValueError(f"k_pages: dtype {k.dtype} must be q's dtype {q_TNH.dtype} or int8")
    if sliding_window is not None and int(sliding_window) < 1:
        raise ValueError(f"sliding_window: must be a positive int or None, got {sliding_window}")
    if page_table_RM.ndim != 2:
        raise ValueError(f"page_table_RM: must be [R, M], got shape {page_table_RM.shape}")
    R, M = page_table_RM.shape
    for name, x in (("query_start_R", query_start_R), ("query_len_R", query_len_R), ("kv_len_R", kv_len_R)):
        if x.shape != (R,):
            raise ValueError(f"{name}: need shape ({R},) to match page_table_RM, got {x.shape}")
    bq, Qp = _choose_block_q(max_q_len, N // K, q_TNH.dtype, block_q)
    C = _choose_pages_per_block(Z, M, cdt, pages_per_block)
    return _run(q_TNH, k, v, k_scale, v_scale, page_table_RM, query_start_R.astype(jnp.int32),
                query_len_R.astype(jnp.int32), kv_len_R.astype(jnp.int32), jnp.asarray(layer, jnp.int32),
                block_q=bq, q_pad=Qp, pages_per_block=C, sliding_window=sliding_window, softcap=softcap,
                interpret=interpret_params(interpret))
