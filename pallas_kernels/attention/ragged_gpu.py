"""GPU ragged paged attention: Pallas with the Triton lowering (and CPU interpret mode).

Contract: `ragged_reference.py` (a flat batch of T query tokens from R sequences,
any mix of decode tokens, prefill chunks and verify runs, over paged pools).

Grid (Qb * J, K, R), Qb = cdiv(max_q_len, block_q): program (i * J + j, kh, r) handles
query tokens i * block_q ... i * block_q + block_q - 1 of sequence r for KV head kh,
over the j-th of J near-equal parts of those tokens' key blocks. The query block index
is the fastest grid axis, so programs that read the same pages (same sequence and KV
head) run side by side and share them through L2.

Split-K (J > 1, "flash decoding"): with few programs (one long sequence decoding in a
mixed step is K programs: 8 of a GPU's 132 SMs), each (i, kh, r) is cut into J
programs that write un-normalised partials (acc, m, l) and `splits.merge_splits`
combines them exactly (up to rounding). On a GPU, J = `splits.choose_num_splits` of
the grid's programs and the table's key blocks with RAGGED_TARGET_PROGRAMS as the
target (a grid that fills the SMs gets J = 1); interpret mode (no SMs to fill) J = 1;
`num_splits` overrides. J = 1 stores the normalised output directly.

Tile: the block_q tokens times the G query heads of kh are packed as the rows of
one [Rt, H] tile, row j = (token j // G, head j % G), Rt = next_pow2(block_q * G)
(>= 16 so tl.dot is legal); the default block_q fills Rt = 64 rows for any G
(e.g. G = 5 -> 12 tokens, 60 of 64 rows used). Rows are gathered from q viewed as
[T * N, H] and scattered back to the output the same way, masked to the
sequence's own tokens, so a program never touches another sequence's rows.

Keys: the program walks the key blocks from the first key visible to its first
token (causal + sliding window) to its last token's position (never past
kv_len); a block is block_k // Z whole pages read through page_table_RM (entries
outside the visible range, e.g. -1 or stale, are replaced by page 0 and every
index is clamped into [0, P)). Each row gets its own causal/window mask; the
float32 online softmax is `block_math.online_softmax_step`; int8 pages are
dequantised in registers. The layer-stacked pool is passed whole and the kernel
computes (layer, page, kh, slot) addresses itself: no slice or copy of the pool.

Padding rows: the output buffer is a zero array aliased into the kernel
(input_output_aliases) and only rows owned by a sequence are stored, so rows no
sequence owns come out exactly zero. A program whose block starts past its
sequence's query_len does nothing.

Layout of this file: `_ragged_kernel` is the kernel (backend-neutral ref
indexing plus block_math); `_gather_rows`, `_scatter_rows`, `load_rows` and
`_triton_call` are the only Triton-specific pieces (masked loads/stores,
CompilerParams), so a Mosaic GPU port replaces those.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.attention import block_math, layout
from pallas_kernels.attention.splits import choose_num_splits, merge_splits
from pallas_kernels.attention.triton_glue import MIN_TILE, load_rows

DEFAULT_ROWS = 64  # packed (token, head) rows per tile: [64, 128] f32 accumulator
DEFAULT_BLOCK_K = 64  # keys per block (raised to the page size Z when Z is larger)
# Split-K aims at one program per SM (an H100/H200 has 132), not the decode kernel's four
# (splits.GPU_TARGET_PROGRAMS): the ragged partials are J x T x N x H float32, written and read back, so a grid
# that already fills the SMs is not split (choose_num_splits gives J = 1 there).
RAGGED_TARGET_PROGRAMS = 132
# Running max a row starts from instead of -inf: a row whose first key blocks are all masked (a later token
# under a sliding window, a padding row of the tile) then keeps m finite, exp(-inf - m) = 0 and l = acc = 0,
# where -inf would give exp(-inf + inf) = NaN. Real logits are always far above it.
_M_FLOOR = -1e30


# ---------------------------------------------------------------- Triton glue
def _gather_rows(ref, rows_J, valid_J):
    """ref [X, H] -> [J, H]: row rows_J[j] where valid_J[j], zeros elsewhere (those rows are never read)."""
    cols_H = jnp.arange(ref.shape[1], dtype=jnp.int32)
    return plgpu.load(ref.at[rows_J[:, None], cols_H[None, :]], mask=valid_J[:, None], other=0)


def _scatter_rows(ref, rows_J, valid_J, x_JH):
    """ref[rows_J[j]] = x_JH[j] where valid_J[j]; nothing else of ref is written.

    Masked-off rows must point past the end of ref (row X): Triton never dereferences them, and interpret
    mode (a read-modify-write scatter) drops out-of-bounds updates, where an in-bounds dummy row could
    collide with a row this store writes.
    """
    cols_H = jnp.arange(ref.shape[1], dtype=jnp.int32)
    plgpu.store(ref.at[rows_J[:, None], cols_H[None, :]], x_JH, mask=valid_J[:, None])


def _store_rows(ref, rows_J, valid_J, x_J):
    """1-D ref[rows_J[j]] = x_J[j] where valid_J[j] (masked-off rows point past the end, as _scatter_rows)."""
    plgpu.store(ref.at[rows_J], x_J, mask=valid_J)


def _triton_call(kernel, grid, in_arrays, out_inits, *, num_warps, num_stages, interpret, name):
    """Every operand passed whole (the kernel indexes them); each output aliases its out_init, so rows the
    kernel does not store keep out_init's values."""
    whole = pl.BlockSpec()
    n = len(in_arrays)
    return pl.pallas_call(
        kernel, grid=grid, in_specs=[whole] * (n + len(out_inits)), out_specs=[whole] * len(out_inits),
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in out_inits],
        input_output_aliases={n + o: o for o in range(len(out_inits))},
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret, name=name)(*in_arrays, *out_inits)


# ---------------------------------------------------------------- the kernel
def _ragged_kernel(*refs, G, N, block_q, rows, block_k, page_size, table_len, num_pages, sm_scale, softcap,
                   sliding_window, quantized, cdt, num_splits):
    it = iter(refs)
    start_ref, qlen_ref, kvlen_ref, layer_ref, table_ref, q_ref, k_ref, v_ref = (next(it) for _ in range(8))
    ks_ref, vs_ref = (next(it), next(it)) if quantized else (None, None)
    if num_splits == 1:  # the aliased zero buffer (same memory as o_ref), then the output [T * N, H]
        _, o_ref = it
    else:  # the aliased inits, then the partials: acc [J * T * N, H] float32, m and l [J * T * N]
        _, _, _, o_ref, m_ref, l_ref = it

    pid0, kh, r = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    i, j = jax.lax.div(pid0, num_splits), jax.lax.rem(pid0, num_splits)  # query block, split
    q_len = qlen_ref[r]
    tok0 = i * block_q

    @pl.when(tok0 < q_len)
    def _():
        kv_len = kvlen_ref[r]
        layer = layer_ref[0]
        H = q_ref.shape[1]
        j_J = jnp.arange(rows, dtype=jnp.int32)
        tok_J = tok0 + jax.lax.div(j_J, G)
        row_valid_J = (j_J < block_q * G) & (tok_J < q_len)
        pos_J = kv_len - q_len + tok_J  # the token's position in its sequence
        # rows of q / out viewed as [T * N, H]; rows that are not this program's own point past the end
        rows_J = jnp.where(row_valid_J, (start_ref[r] + tok_J) * N + kh * G + jax.lax.rem(j_J, G), q_ref.shape[0])
        q_JH = _gather_rows(q_ref, rows_J, row_valid_J).astype(cdt)

        # keys [lo, hi) are the union of this block's tokens' visible ranges
        last_tok = jnp.minimum(q_len, tok0 + block_q) - 1
        hi = kv_len - q_len + last_tok + 1
        lo = 0 if sliding_window is None else jnp.maximum(kv_len - q_len + tok0 - sliding_window + 1, 0)
        first = jax.lax.div(lo, block_k)  # non-negative: truncating division is floor division
        n_blocks = jax.lax.div(hi + block_k - 1, block_k) - first

        ppb = block_k // page_size

        def load_block(start):
            slot0 = jax.lax.div(start, page_size)
            slots_M = slot0 + jnp.arange(ppb, dtype=jnp.int32)
            in_table = (slots_M < table_len) if table_len % ppb else None
            ids_M = load_rows(table_ref.at[r, pl.ds(slot0, ppb)], in_table)
            # entries of pages outside [lo, hi) may be anything (-1, freed): read page 0 there instead
            seen_M = (slots_M * page_size < hi) & ((slots_M + 1) * page_size > lo)
            ids_M = jnp.clip(jnp.where(seen_M, ids_M, 0), 0, num_pages - 1)
            k_TH = k_ref[layer, ids_M, kh, :, :].reshape(block_k, H)
            v_TH = v_ref[layer, ids_M, kh, :, :].reshape(block_k, H)
            if not quantized:
                return k_TH, v_TH, None, None
            ks_T1 = ks_ref[layer, ids_M, kh, :].reshape(block_k, 1)
            vs_T1 = vs_ref[layer, ids_M, kh, :].reshape(block_k, 1)
            return k_TH, v_TH, ks_T1, vs_T1

        def body(b, state):
            start = (first + b) * block_k
            pos_T = start + jnp.arange(block_k, dtype=jnp.int32)
            k_TH, v_TH, ks_T1, vs_T1 = load_block(start)
            k_TH = block_math.dequantize(k_TH, ks_T1, cdt)
            v_TH = block_math.dequantize(v_TH, vs_T1, cdt)
            vis_JT = row_valid_J[:, None] & (pos_T[None, :] <= pos_J[:, None])
            if sliding_window is not None:
                vis_JT &= pos_T[None, :] > pos_J[:, None] - sliding_window
            seen_T1 = ((pos_T >= lo) & (pos_T < hi))[:, None]  # slots past kv_len (stale, NaN) never reach p @ v
            return block_math.online_softmax_step(q_JH, k_TH, v_TH, vis_JT, seen_T1, state, sm_scale=sm_scale,
                                                  softcap=softcap)

        _, l, acc = block_math.init_state(rows, H)
        state = (jnp.full((rows, 1), _M_FLOOR, jnp.float32), l, acc)
        if num_splits == 1:
            _, l, acc = jax.lax.fori_loop(0, n_blocks, body, state)
            out_JH = acc / jnp.where(l > 0, l, 1.0)
            _scatter_rows(o_ref, rows_J, row_valid_J, out_JH.astype(o_ref.dtype))
            return
        # this program's part of the key blocks: [b0, b0 + count) of [0, n_blocks)
        per = jax.lax.div(n_blocks + num_splits - 1, num_splits)
        b0 = j * per
        count = jnp.clip(n_blocks - b0, 0, per)
        m, l, acc = jax.lax.fori_loop(b0, b0 + count, body, state)
        # split j's partial rows live at j * T * N + row; masked-off rows keep pointing past the end
        out_rows_J = jnp.where(row_valid_J, rows_J + j * q_ref.shape[0], num_splits * q_ref.shape[0])
        _scatter_rows(o_ref, out_rows_J, row_valid_J, acc)
        _store_rows(m_ref, out_rows_J, row_valid_J, m[:, 0])
        _store_rows(l_ref, out_rows_J, row_valid_J, l[:, 0])


# ---------------------------------------------------------------- wrapper
@functools.partial(jax.jit, static_argnames=(
    "max_q_len", "sliding_window", "softcap", "block_q", "block_k", "num_warps", "num_stages", "interpret",
    "num_splits"))
def _run(q_TNH, k, v, k_scale, v_scale, page_table_RM, query_start_R, query_len_R, kv_len_R, layer, *, max_q_len,
         sliding_window, softcap, block_q, block_k, num_warps, num_stages, interpret, num_splits):
    T, N, H = q_TNH.shape
    _, P, K, Z, _ = k.shape
    R, M = page_table_RM.shape
    G = N // K
    Rt = max(MIN_TILE, layout.next_pow2(block_q * G))
    Qb = -(-max_q_len // block_q)
    quantized = k_scale is not None
    in_arrays = [query_start_R.astype(jnp.int32), query_len_R.astype(jnp.int32), kv_len_R.astype(jnp.int32),
                 jnp.reshape(layer, (1,)).astype(jnp.int32), page_table_RM.astype(jnp.int32),
                 q_TNH.reshape(T * N, H), k, v]
    if quantized:
        in_arrays += [k_scale, v_scale]
    J = num_splits
    kernel = functools.partial(
        _ragged_kernel, G=G, N=N, block_q=block_q, rows=Rt, block_k=block_k, page_size=Z, table_len=M,
        num_pages=P, sm_scale=H ** -0.5, softcap=softcap, sliding_window=sliding_window, quantized=quantized,
        cdt=layout.compute_dtype(q_TNH.dtype), num_splits=J)
    name = f"ragged_paged_attn_rows{Rt}_keys{block_k}" + (f"_splits{J}" if J > 1 else "")
    if J == 1:
        out, = _triton_call(kernel, (Qb, K, R), in_arrays, [jnp.zeros((T * N, H), q_TNH.dtype)],  # padding rows: 0
                            num_warps=num_warps, num_stages=num_stages, interpret=interpret, name=name)
        return out.reshape(T, N, H)
    # rows no program stores keep l = 0: merge_splits gives them 0, like the unsplit kernel's padding rows
    inits = [jnp.zeros((J * T * N, H), jnp.float32), jnp.full((J * T * N,), -jnp.inf, jnp.float32),
             jnp.zeros((J * T * N,), jnp.float32)]
    acc, m, l = _triton_call(kernel, (Qb * J, K, R), in_arrays, inits, num_warps=num_warps, num_stages=num_stages,
                             interpret=interpret, name=name)
    out, _, _ = merge_splits(acc.reshape(J, T * N, H), m.reshape(J, T * N), l.reshape(J, T * N))
    return out.astype(q_TNH.dtype).reshape(T, N, H)


def _check_pow2(name: str, x: int, minimum: int):
    if x < minimum or x & (x - 1):
        raise ValueError(f"{name}: must be a power of two >= {minimum}, got {x}")


def ragged_paged_attention_gpu(q_TNH, k_pages, v_pages, page_table_RM, query_start_R, query_len_R, kv_len_R, *,
                               max_q_len: int, layer=0, k_scale=None, v_scale=None,
                               sliding_window: Optional[int] = None, softcap: Optional[float] = None,
                               interpret: bool = False, block_q: Optional[int] = None,
                               block_k: Optional[int] = None, num_warps: Optional[int] = None,
                               num_stages: Optional[int] = None, num_splits: Optional[int] = None):
    """Same contract as ragged_reference.ragged_paged_attention_reference; pools [L, P, K, Z, H] or [P, K, Z, H].

    block_q: query tokens per program (default: as many as fill DEFAULT_ROWS packed rows, at most
    max_q_len); block_k: keys per block, a power-of-two multiple of Z (default max(DEFAULT_BLOCK_K, Z)).
    num_splits: J, the parts each program's key range is cut into (default: `splits.choose_num_splits` toward
    RAGGED_TARGET_PROGRAMS programs, so 1 for a grid that fills the GPU; 1 in interpret mode).
    `layer` may be a traced int32 scalar.
    """
    k, v, k_scale, v_scale = layout.stack_cache(k_pages, v_pages, k_scale, v_scale, "ragged_paged_attention_gpu")
    T, N, H = q_TNH.shape
    _, _, K, Z, Hk = k.shape
    layout.compute_dtype(q_TNH.dtype)
    if Hk != H:
        raise ValueError(f"k_pages: head dim {Hk} does not match q's {H} (q {q_TNH.shape}, k {k.shape})")
    _check_pow2("q: the head dim H (Triton tiles)", H, MIN_TILE)
    if N % K:
        raise ValueError(f"q: N={N} query heads is not a multiple of the pool's K={K} kv heads")
    _check_pow2("k_pages: the page size Z (Triton tiles)", Z, 1)
    R = page_table_RM.shape[0]
    if not (query_start_R.shape == query_len_R.shape == kv_len_R.shape == (R,)):
        raise ValueError(f"query_start/query_len/kv_len: need shape ({R},) like page_table's rows, got "
                         f"{query_start_R.shape}, {query_len_R.shape}, {kv_len_R.shape}")
    max_q_len = max(int(max_q_len), 1)
    G = N // K
    bq = block_q if block_q is not None else max(1, min(max_q_len, DEFAULT_ROWS // G))
    if bq < 1:
        raise ValueError(f"block_q: need >= 1 query token per program, got {bq}")
    bk = block_k if block_k is not None else max(DEFAULT_BLOCK_K, Z)
    _check_pow2("block_k", bk, max(MIN_TILE, Z))
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window: must be >= 1, got {sliding_window}")
    if T == 0 or R == 0:
        return jnp.zeros((T, N, H), q_TNH.dtype)
    if num_splits is None:
        programs = -(-max_q_len // bq) * K * R
        J = 1 if interpret else choose_num_splits(programs, -(-page_table_RM.shape[1] * Z // bk),
                                                  target_programs=RAGGED_TARGET_PROGRAMS)
    else:
        J = int(num_splits)
        if J < 1:
            raise ValueError(f"num_splits: must be >= 1, got {num_splits}")
    return _run(q_TNH, k, v, k_scale, v_scale, page_table_RM, query_start_R, query_len_R, kv_len_R,
                jnp.asarray(layer, jnp.int32), max_q_len=max_q_len, sliding_window=sliding_window,
                softcap=softcap, block_q=bq, block_k=bk, num_warps=num_warps or 4, num_stages=num_stages or 2,
                interpret=interpret, num_splits=J)
