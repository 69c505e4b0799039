"""TPU decode attention: Pallas Mosaic TPU (tested under TPU interpret mode on CPU).

Grid (B, K, J, I): row, KV head, split, key block within the split. The block
specs copy one key block [T_blk, H] of K and V from HBM into VMEM per step and
the Pallas pipeline double-buffers those copies (block i + 1 is in flight while
block i is computed). The index maps read the layer, each row's visible range
and (paged) the block table from scalar-prefetched SMEM, so:

- the layer-stacked cache is addressed in place (no slice of kv["k"][layer]);
- the block index is clamped to the row's last needed block, so steps past a
  row's length re-use the resident block (the pipeline issues no copy when the
  index does not change) and `pl.when` skips their compute;
- a paged row's block i comes from pool page block_tables[b, i].

The per-block math is block_math, shared with the GPU kernel; running (m, l,
acc) live in VMEM scratch across the sequential I axis.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.attention import block_math, layout
from pallas_kernels.attention.splits import merge_splits, plan_splits

DEFAULT_BLOCK_K = 512  # keys per block: [512, 128] bf16 = 128 KiB per K or V buffer
SUBLANES = {1: 32, 2: 16, 4: 8}  # rows per native VMEM tile by itemsize


def interpret_params(interpret):
    """True -> TPU interpret mode that raises on out-of-bounds reads and fills uninitialised memory with NaN."""
    if interpret is True:
        return pltpu.InterpretParams(out_of_bounds_reads="raise", uninitialized_memory="nan")
    return interpret or False


def choose_block_k(seq_len: int, itemsize: int, block_k: Optional[int]) -> int:
    """A block that divides S exactly (no partial edge block), aligned to the dtype's sublane tile."""
    target = block_k or DEFAULT_BLOCK_K
    if seq_len <= target:
        return seq_len  # the full dimension is always a legal block
    align = SUBLANES.get(itemsize, 8)
    for d in range(target - target % align, 0, -align):
        if seq_len % d == 0:
            return d
    raise ValueError(f"k: cache length S={seq_len} has no divisor <= {target} that is a multiple of {align}; "
                     f"allocate the cache with S a multiple of {align}")


def _decode_kernel(*refs, block_k, blocks_per_split, sm_scale, softcap, quantized, paged, cdt):
    it = iter(refs)
    layer_ref, lo_ref, hi_ref = next(it), next(it), next(it)
    if paged:
        next(it)  # block tables: only the index maps read them
    q_ref, k_ref, v_ref = next(it), next(it), next(it)
    ks_ref, vs_ref = (next(it), next(it)) if quantized else (None, None)
    acc_out, m_out, l_out, m_sc, l_sc, acc_sc = it
    del layer_ref

    b, j, i = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    lo, hi = lo_ref[b], hi_ref[b]
    start = (j * blocks_per_split + i) * block_k

    @pl.when(i == 0)
    def _init():
        m, l, acc = block_math.init_state(*acc_sc.shape)
        m_sc[...], l_sc[...], acc_sc[...] = m, l, acc

    @pl.when((start < hi) & (start + block_k > lo))
    def _step():
        pos_1T = start + jax.lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
        pos_T1 = start + jax.lax.broadcasted_iota(jnp.int32, (block_k, 1), 0)
        valid_1T = (pos_1T >= lo) & (pos_1T < hi)
        valid_T1 = (pos_T1 >= lo) & (pos_T1 < hi)
        k_TH = block_math.dequantize(k_ref[...], ks_ref[...] if quantized else None, cdt)
        v_TH = block_math.dequantize(v_ref[...], vs_ref[...] if quantized else None, cdt)
        m, l, acc = block_math.online_softmax_step(
            q_ref[...].astype(cdt), k_TH, v_TH, valid_1T, valid_T1, (m_sc[...], l_sc[...], acc_sc[...]),
            sm_scale=sm_scale, softcap=softcap)
        m_sc[...], l_sc[...], acc_sc[...] = m, l, acc

    @pl.when(i == blocks_per_split - 1)
    def _finish():
        acc_out[...] = acc_sc[...]
        m_out[...] = m_sc[...]
        l_out[...] = l_sc[...]


@functools.partial(jax.jit, static_argnames=("softcap", "return_stats", "num_splits", "block_k", "interpret",
                                             "paged"))
def _run(q_BNH, k, v, k_scale, v_scale, tables_BM, lo_B, hi_B, layer, *, softcap, return_stats, num_splits,
         block_k, interpret, paged):
    B, N, H = q_BNH.shape
    L, X, K, Y, Hk = k.shape  # contiguous: X = B, Y = S; paged: X = P, Y = Z (block_k = Z)
    if Hk != H:
        raise ValueError(f"k: head dim {Hk} does not match q's {H} (q {q_BNH.shape}, k {k.shape})")
    cdt = layout.compute_dtype(q_BNH.dtype)
    G = N // K
    Gp = -(-G // 8) * 8
    q_BKGH = layout.pack_q(q_BNH, K, Gp)
    seq_len = tables_BM.shape[1] * Y if paged else Y
    if not paged and X != B:
        raise ValueError(f"k: cache batch {X} does not match q's batch {B} (q {q_BNH.shape}, k {k.shape})")
    plan = plan_splits(seq_len, block_k, B * K, num_splits if num_splits is not None else 1)
    J, I, nb = plan.num_splits, plan.blocks_per_split, plan.num_blocks
    quantized = k_scale is not None

    def block_index(b, j, i, lo_ref, hi_ref):
        first = jax.lax.div(lo_ref[b], block_k)  # non-negative: truncating division is floor division
        last = jnp.maximum(jax.lax.div(hi_ref[b] + block_k - 1, block_k) - 1, first)
        return jnp.clip(jnp.clip(j * I + i, first, last), 0, nb - 1)

    if paged:
        M = tables_BM.shape[1]

        def kv_map(b, h, j, i, layer_ref, lo_ref, hi_ref, tables_ref):
            blk = block_index(b, j, i, lo_ref, hi_ref)
            # an empty row has no page to read: point it at page 0 (its compute is skipped)
            page = jnp.where(blk * block_k < hi_ref[b], tables_ref[b * M + blk], 0)
            return layer_ref[0], page, h, 0, 0
    else:
        def kv_map(b, h, j, i, layer_ref, lo_ref, hi_ref):
            return layer_ref[0], b, h, block_index(b, j, i, lo_ref, hi_ref), 0

    kv_spec = pl.BlockSpec((None, None, None, block_k, H), kv_map)
    scale_spec = pl.BlockSpec((None, None, None, block_k, 1), kv_map)
    tile_map = lambda b, h, j, i, *_: (b, h, j, 0, 0)
    prefetch = [jnp.reshape(layer, (1,)).astype(jnp.int32), lo_B, hi_B]
    if paged:
        prefetch.append(tables_BM.reshape(-1).astype(jnp.int32))
    in_arrays = [q_BKGH, k, v]
    in_specs = [pl.BlockSpec((None, None, Gp, H), lambda b, h, j, i, *_: (b, h, 0, 0)), kv_spec, kv_spec]
    if quantized:
        in_arrays += [k_scale[..., None], v_scale[..., None]]  # [.., T, 1]: a free reshape, legal TPU block
        in_specs += [scale_spec, scale_spec]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(prefetch), grid=(B, K, J, I), in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, None, None, Gp, H), tile_map),
                   pl.BlockSpec((None, None, None, Gp, 1), tile_map),
                   pl.BlockSpec((None, None, None, Gp, 1), tile_map)],
        scratch_shapes=[pltpu.VMEM((Gp, 1), jnp.float32), pltpu.VMEM((Gp, 1), jnp.float32),
                        pltpu.VMEM((Gp, H), jnp.float32)])
    kernel = functools.partial(_decode_kernel, block_k=block_k, blocks_per_split=I, sm_scale=H ** -0.5,
                               softcap=softcap, quantized=quantized, paged=paged, cdt=cdt)
    acc, m, l = pl.pallas_call(
        kernel, grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((B, K, J, Gp, H), jnp.float32),
                   jax.ShapeDtypeStruct((B, K, J, Gp, 1), jnp.float32),
                   jax.ShapeDtypeStruct((B, K, J, Gp, 1), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret, name=f"decode_attn_tpu_{'paged' if paged else 'dense'}_G{Gp}_T{block_k}_J{J}",
    )(*prefetch, *in_arrays)
    out, m, l = merge_splits(acc, m[..., 0], l[..., 0])
    return layout.unpack_out(out, m, l, G, q_BNH.dtype, return_stats)


def decode_attention_tpu_bounds(q_BNH, k, v, lo_B, hi_B, *, layer=0, k_scale=None, v_scale=None, softcap=None,
                                return_stats=False, num_splits=None, block_k=None, interpret=False):
    """Decode attention over keys [lo_B[b], hi_B[b]) of each row (the model seam's entry point)."""
    k, v, k_scale, v_scale = layout.stack_cache(k, v, k_scale, v_scale, "decode_attention_tpu")
    S = k.shape[3]
    return _run(q_BNH, k, v, k_scale, v_scale, None, lo_B.astype(jnp.int32), jnp.minimum(hi_B, S).astype(jnp.int32),
                jnp.asarray(layer, jnp.int32), softcap=softcap, return_stats=return_stats, num_splits=num_splits,
                block_k=choose_block_k(S, k.dtype.itemsize, block_k), interpret=interpret_params(interpret),
                paged=False)


def decode_attention_tpu(q_BNH, k, v, lengths_B, *, layer=0, k_scale=None, v_scale=None, sliding_window=None,
                         softcap=None, return_stats=False, num_splits=None, block_k=None, interpret=False):
    """Same contract as reference.decode_attention_reference; k/v [L, B, K, S, H] or [B, K, S, H]."""
    lo_B, hi_B = layout.bounds_from_lengths(lengths_B, sliding_window, k.shape[-2])
    return decode_attention_tpu_bounds(q_BNH, k, v, lo_B, hi_B, layer=layer, k_scale=k_scale, v_scale=v_scale,
                                       softcap=softcap, return_stats=return_stats, num_splits=num_splits,
                                       block_k=block_k, interpret=interpret)


def paged_decode_attention_tpu(q_BNH, k_pages, v_pages, block_tables_BM, lengths_B, *, layer=0, k_scale=None,
                               v_scale=None, sliding_window=None, softcap=None, return_stats=False,
                               num_splits=None, interpret=False):
    """Same contract as reference.paged_decode_attention_reference; one page per pipelined block."""
    k, v, k_scale, v_scale = layout.stack_cache(k_pages, v_pages, k_scale, v_scale, "paged_decode_attention_tpu")
    Z, M = k.shape[3], block_tables_BM.shape[1]
    lo_B, hi_B = layout.bounds_from_lengths(lengths_B, sliding_window, M * Z)
    return _run(q_BNH, k, v, k_scale, v_scale, block_tables_BM, lo_B, hi_B, jnp.asarray(layer, jnp.int32),
                softcap=softcap, return_stats=return_stats, num_splits=num_splits, block_k=Z,
                interpret=interpret_params(interpret), paged=True)
