"""Which kernel runs where: the backend choice for every attention kernel in this package.

- GPU backend: the Triton kernels (decode_gpu, ragged_gpu), compiled.
- TPU backend: the Mosaic kernels (decode_tpu, ragged_tpu), compiled.
- CPU: the Triton kernel in Pallas interpret mode (the faster of the two
  interpreters; tests run the TPU kernel under TPU interpret mode directly).
- Absorbed MLA (mla_ragged_paged_attention): the MLA decode kernels (mla_gpu,
  mla_tpu) for decode-only steps, the pure-JAX twin otherwise.

"""
from typing import Optional

import jax.numpy as jnp

from pallas_kernels.attention import decode_gpu, decode_tpu, mla_gpu, mla_tpu, ragged_gpu, ragged_tpu
from pallas_kernels.attention.mla_reference import mla_ragged_paged_attention_reference
from pallas_kernels.platform import family


def pick_backend(platform: Optional[str] = None):
    """(kernel family "gpu" | "tpu", interpret) for a JAX platform name (default: the target platform,
    pallas_kernels/platform.py)."""
    fam = family(platform)
    return ("gpu", True) if fam == "cpu" else (fam, False)


def decode_attention(q_BNH, k, v, lengths_B, *, platform=None, **kw):
    """Contiguous-cache decode attention on the kernel for this backend (see reference for the contract)."""
    family, interpret = pick_backend(platform)
    fn = decode_tpu.decode_attention_tpu if family == "tpu" else decode_gpu.decode_attention_gpu
    return fn(q_BNH, k, v, lengths_B, interpret=kw.pop("interpret", interpret), **kw)


def paged_decode_attention(q_BNH, k_pages, v_pages, block_tables_BM, lengths_B, *, platform=None, **kw):
    """Paged decode attention on the kernel for this backend."""
    family, interpret = pick_backend(platform)
    fn = decode_tpu.paged_decode_attention_tpu if family == "tpu" else decode_gpu.paged_decode_attention_gpu
    return fn(q_BNH, k_pages, v_pages, block_tables_BM, lengths_B, interpret=kw.pop("interpret", interpret), **kw)


def ragged_paged_attention(q_TNH, k_pages, v_pages, page_table_RM, query_start_R, query_len_R, kv_len_R, *,
                           max_q_len: int, platform=None, tokens_in_row_order: bool = False, **kw):
    """Ragged paged attention on the kernel for this backend (contract: ragged_reference.py).

    A decode-only step (max_q_len == 1, static) runs the split-K paged decode kernel, which
    spreads a long row over many programs; any other mix runs the ragged kernel, tiled over
    query blocks with the causal mask. `tokens_in_row_order` (static; the caller's promise, made
    by layers/attention/impls.py from infer/kv/metadata.py's builders): a decode-only step with
    T == R whose sequence r has its token at row r, so the queries and the output need no gather
    and no scatter into a zeroed [T, N, H] (two launches per layer on a GPU); a padding row
    attends over nothing and is 0 either way.
    """
    family, interpret = pick_backend(platform)
    interpret = kw.pop("interpret", interpret)
    if max_q_len == 1:
        T = q_TNH.shape[0]
        fn = decode_tpu.paged_decode_attention_tpu if family == "tpu" else decode_gpu.paged_decode_attention_gpu
        lengths_R = jnp.where(query_len_R > 0, kv_len_R, 0)
        if tokens_in_row_order:
            if T != query_start_R.shape[0]:
                raise ValueError(f"tokens_in_row_order: needs as many tokens as rows, got T={T}, "
                                 f"R={query_start_R.shape[0]}")
            return fn(q_TNH, k_pages, v_pages, page_table_RM, lengths_R, interpret=interpret,
                      **kw).astype(q_TNH.dtype)
        rows_R = jnp.clip(query_start_R, 0, T - 1)
        out_RNH = fn(q_TNH[rows_R], k_pages, v_pages, page_table_RM, lengths_R, interpret=interpret, **kw)
        dest_R = jnp.where(query_len_R > 0, query_start_R, T)  # padding sequences write nothing
        return jnp.zeros_like(q_TNH).at[dest_R].set(out_RNH.astype(q_TNH.dtype), mode="drop")
    fn = ragged_tpu.ragged_paged_attention_tpu if family == "tpu" else ragged_gpu.ragged_paged_attention_gpu
    return fn(q_TNH, k_pages, v_pages, page_table_RM, query_start_R, query_len_R, kv_len_R, max_q_len=max_q_len,
              interpret=interpret, **kw)


def mla_ragged_paged_attention(q_c_TNC, q_r_TNE, c_pages, kr_pages, page_table_RM, query_start_R, query_len_R,
                               kv_len_R, *, max_q_len: int, scale: float, layer=0, platform=None, interpret=None,
                               prefill_rows: Optional[int] = None, **kw):
    """Absorbed MLA attention of a flat ragged batch over the latent pools (contract: mla_reference.py).

    A decode-only step (max_q_len == 1, static) gathers each sequence's one query row and runs
    the backend's MLA paged decode kernel (mla_gpu / mla_tpu; `kw` goes to it: block_k,
    num_splits, ...), then scatters the rows back (rows no sequence owns stay zero). A step
    with max_q_len > 1 runs mla_ragged_paged_attention_reference: multi-token MLA steps
    (prefill chunks, verify runs) take the expanded (non-absorbed) path in the model, so the
    only MLA kernel is the decode kernel; `kw` is then ignored and `prefill_rows` (the
    reference's, see ragged_reference.py) applies; the decode kernel needs no prefill_rows.
    """
    if max_q_len > 1:
        return mla_ragged_paged_attention_reference(q_c_TNC, q_r_TNE, c_pages, kr_pages, page_table_RM,
                                                    query_start_R, query_len_R, kv_len_R, max_q_len=max_q_len,
                                                    scale=scale, layer=layer, prefill_rows=prefill_rows)
    family, default_interpret = pick_backend(platform)
    interpret = default_interpret if interpret is None else interpret
    T = q_c_TNC.shape[0]
    rows_R = jnp.clip(query_start_R, 0, T - 1)
    fn = mla_tpu.mla_paged_decode_attention_tpu if family == "tpu" else mla_gpu.mla_paged_decode_attention_gpu
    out_RNC = fn(q_c_TNC[rows_R], q_r_TNE[rows_R], c_pages, kr_pages, page_table_RM,
                 jnp.where(query_len_R > 0, kv_len_R, 0), scale=scale, layer=layer, interpret=interpret, **kw)
    dest_R = jnp.where(query_len_R > 0, query_start_R, T)  # padding sequences write nothing
    return jnp.zeros_like(q_c_TNC).at[dest_R].set(out_RNC.astype(q_c_TNC.dtype), mode="drop")
