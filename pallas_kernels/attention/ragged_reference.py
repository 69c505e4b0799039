"""Ragged paged attention, pure JAX: the twin every ragged Pallas kernel is tested against.

One step of the model attends a flat batch of T query tokens drawn from up to R
sequences over their pages in a shared pool. Any mix is allowed: single decode
tokens, prefill chunks (also a chunk that continues an existing prefix) and
speculative verify runs of k+1 tokens. The contract, shared by every kernel:

- q_TNH [T, N, H]: the step's queries after RoPE. Sequence r owns the contiguous
  rows query_start_R[r] ... query_start_R[r] + query_len_R[r] - 1 (sequences may
  come in any order; rows owned by no sequence are padding and come out as zeros).
- k_pages / v_pages [L, P, K, Z, H] (or [P, K, Z, H], read as L = 1): the page
  pools, `layer` picks one of the L layers. int8 pools come with k_scale /
  v_scale [L, P, K, Z] float32 (value = int8 * scale, per token and head).
- page_table_RM [R, M]: logical position s of sequence r lives at page
  page_table_RM[r, s // Z], slot s % Z. Entries past the pages a sequence uses
  may hold anything (the host builder writes 0, the test cases -1): they are
  never visible, and a kernel clamps or skips them.
- kv_len_R [R]: the sequence's length *after* this step's keys were written
  (the step's own tokens are the last query_len_R[r] positions), so query i of
  sequence r sits at position p = kv_len_R[r] - query_len_R[r] + i.
- Key s is visible to that query iff s <= p and, with a sliding window W,
  s > p - W. Logits are q.k / sqrt(H), soft-capped as softcap * tanh(x / softcap)
  when asked; softmax in float32; output in q's dtype. Stale or NaN page slots
  are never weighted. A sequence with query_len 0 is a no-op (padding rows).
- max_q_len (static) >= max(query_len_R): the reference works on the padded
  per-sequence view [R, max_q_len]; kernels size their query-block grid by it.
- prefill_rows (static, optional): only sequences r < prefill_rows may have more than
  one query; the reference then pads just those rows to max_q_len and runs the others
  as single queries (a step of one prefill chunk among many decodes costs that chunk,
  not R copies of it). Kernels may ignore it.

Work is proportional to the sequences' (bucketed) pages and query counts, never to
the pool size P: only the pages named in page_table_RM are gathered.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from pallas_kernels.attention.decode_reference import as_layer_stacked, gather_pages


def _gathered_layer(pool, scale, page_table_RM, layer):
    """This layer's pages of every sequence as [R, K, M * Z, H], dequantized for int8 pools."""
    x_RKSH = gather_pages(as_layer_stacked(pool, 4)[layer], page_table_RM)
    if scale is None:
        return x_RKSH
    s_RKS = gather_pages(as_layer_stacked(scale, 3)[layer], page_table_RM)
    return x_RKSH.astype(jnp.float32) * s_RKS[..., None].astype(jnp.float32)


def _attend_chunk(q_RQKGH, pos_RQ, valid_RQ, k_RKSH, v_RKSH, sliding_window, softcap, scale):
    """Causal attention of a [R, Q] block of queries over their sequence's keys; float32 out [R, Q, K, G, Hv]."""
    S = k_RKSH.shape[2]
    dt = jnp.promote_types(q_RQKGH.dtype, k_RKSH.dtype)
    s_RKGQS = jnp.einsum("rqkgh,rksh->rkgqs", q_RQKGH.astype(dt), k_RKSH.astype(dt),
                         preferred_element_type=jnp.float32, precision="highest") * scale
    if softcap is not None:
        s_RKGQS = softcap * jnp.tanh(s_RKGQS / softcap)
    key_S = jnp.arange(S, dtype=jnp.int32)
    vis_RQS = (key_S[None, None, :] <= pos_RQ[:, :, None]) & valid_RQ[:, :, None]
    if sliding_window is not None:
        vis_RQS &= key_S[None, None, :] > pos_RQ[:, :, None] - sliding_window
    vis = vis_RQS[:, None, None]
    s_RKGQS = jnp.where(vis, s_RKGQS, -jnp.inf)
    m = jnp.max(s_RKGQS, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p_RKGQS = jnp.where(vis, jnp.exp(s_RKGQS - m), 0.0)
    l_RKGQ = jnp.sum(p_RKGQS, axis=-1)
    o_RKGQH = jnp.einsum("rkgqs,rksh->rkgqh", p_RKGQS, v_RKSH.astype(jnp.float32), precision="highest")
    o_RKGQH = o_RKGQH / jnp.where(l_RKGQ > 0, l_RKGQ, 1.0)[..., None]
    return jnp.transpose(o_RKGQH, (0, 3, 1, 2, 4))  # [R, Q, K, G, Hv]


def split_prefill_rows(run, page_table_RM, query_start_R, query_len_R, kv_len_R, max_q_len: int,
                       prefill_rows: Optional[int]):
    """Run `run(page_table_RM, query_start_R, query_len_R, kv_len_R, max_q_len)` once for the sequences that may
    have several queries (r < prefill_rows, padded to max_q_len) and once for the single-query rest; rows are
    disjoint and padding comes out as zeros, so the two outputs add up."""
    R = page_table_RM.shape[0]
    if prefill_rows is None or max_q_len <= 1 or prefill_rows >= R:
        return run(page_table_RM, query_start_R, query_len_R, kv_len_R, max_q_len)
    part = lambda a, b: tuple(x[a:b] for x in (page_table_RM, query_start_R, query_len_R, kv_len_R))
    out = run(*part(prefill_rows, R), 1)
    if prefill_rows > 0:
        out = out + run(*part(0, prefill_rows), max_q_len)
    return out


def ragged_paged_attention_reference(q_TNH, k_pages, v_pages, page_table_RM, query_start_R, query_len_R, kv_len_R,
                                     *, max_q_len: int, layer=0, k_scale=None, v_scale=None,
                                     sliding_window: Optional[int] = None, softcap: Optional[float] = None,
                                     q_chunk: int = 256, prefill_rows: Optional[int] = None,
                                     scale: Optional[float] = None):
    """Attention of a flat ragged batch of queries over paged pools (contract in the module docstring).

    scale: the logit scale (default 1 / sqrt(H)).
    """
    def run(tab, start, qlen, kvlen, mql):
        return attend_gathered(q_TNH, _gathered_layer(k_pages, k_scale, tab, layer),
                               _gathered_layer(v_pages, v_scale, tab, layer), start, qlen, kvlen, max_q_len=mql,
                               sliding_window=sliding_window, softcap=softcap, q_chunk=q_chunk, scale=scale)
    return split_prefill_rows(run, page_table_RM, query_start_R, query_len_R, kv_len_R, max_q_len, prefill_rows)


def attend_gathered(q_TNH, k_RKSH, v_RKSH, query_start_R, query_len_R, kv_len_R, *, max_q_len: int,
                    sliding_window: Optional[int] = None, softcap: Optional[float] = None, q_chunk: int = 256,
                    scale: Optional[float] = None):
    """The ragged contract over keys and values already gathered per sequence: k [R, K, S, H], v [R, K, S, Hv]
    (position s of sequence r at [r, :, s]); returns [T, N, Hv] in q's dtype.

    Queries are processed in chunks of `q_chunk` per sequence (a `lax.map`), so the
    float32 score tensor is at most [R, N, q_chunk, S] however long a prefill is.
    """
    T, N, H = q_TNH.shape
    R, K, S = k_RKSH.shape[:3]
    Hv = v_RKSH.shape[-1]
    if N % K:
        raise ValueError(f"q: N={N} query heads is not a multiple of the pool's K={K} kv heads")
    G = N // K
    scale = H ** -0.5 if scale is None else scale
    kv_len_R = kv_len_R.astype(jnp.int32)
    query_len_R = query_len_R.astype(jnp.int32)
    # Stale slots (past the sequence's length) may hold anything, NaN included: never let them reach p @ v.
    v_RKSH = jnp.where((jnp.arange(S) < kv_len_R[:, None])[:, None, :, None], v_RKSH.astype(jnp.float32), 0.0)

    Q = max(int(max_q_len), 1)
    chunk = min(Q, q_chunk)
    n_chunks = -(-Q // chunk)
    i_Q = jnp.arange(n_chunks * chunk, dtype=jnp.int32)
    valid_RQ = i_Q[None, :] < query_len_R[:, None]
    rows_RQ = jnp.where(valid_RQ, query_start_R.astype(jnp.int32)[:, None] + i_Q[None, :], 0)
    pos_RQ = kv_len_R[:, None] - query_len_R[:, None] + i_Q[None, :]
    q_RQKGH = q_TNH[rows_RQ].reshape(R, n_chunks * chunk, K, G, H)

    if n_chunks == 1:
        o_RQKGH = _attend_chunk(q_RQKGH, pos_RQ, valid_RQ, k_RKSH, v_RKSH, sliding_window, softcap, scale)
    else:
        split = lambda x: jnp.moveaxis(x.reshape(R, n_chunks, chunk, *x.shape[2:]), 1, 0)
        o_CRQKGH = jax.lax.map(
            lambda c: _attend_chunk(c[0], c[1], c[2], k_RKSH, v_RKSH, sliding_window, softcap, scale),
            (split(q_RQKGH), split(pos_RQ), split(valid_RQ)))
        o_RQKGH = jnp.moveaxis(o_CRQKGH, 0, 1).reshape(R, n_chunks * chunk, K, G, Hv)

    out_rows_RQ = jnp.where(valid_RQ, rows_RQ, T)  # padding goes out of bounds and is dropped
    out_TNH = jnp.zeros((T, N, Hv), q_TNH.dtype)
    return out_TNH.at[out_rows_RQ].set(o_RQKGH.reshape(R, -1, N, Hv).astype(q_TNH.dtype), mode="drop")
