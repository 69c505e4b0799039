"""AttentionMetadata: what one step's flat batch of tokens is, and where its keys and values live.

A step runs T tokens from up to R sequences. Each sequence contributes any
number of new tokens (a prefill chunk, a chunk continuing a cached prefix, one
decode token, a k+1 speculative verify run), always the *last* tokens of its
sequence so far. Fields (all int32, fixed bucketed shapes, so a new mix of
requests reuses the compiled step):

    positions_T        absolute position of each token in its sequence (RoPE)
    slot_T             page * Z + offset its k/v is written to; -1 for padding (dropped)
    query_start_R      first row of sequence r in the flat batch
    query_len_R        number of new tokens of sequence r (0: padding sequence)
    kv_len_R           sequence length after this step's write
    page_table_RM      the pages of sequence r in order (entries past its pages: 0)
    logits_indices_O   the rows whose logits the step returns, in order
    max_q_len          (static) bound on query_len_R, bucketed: sizes the kernels' query grid
    page_size          (static) the Z the slots and page tables were computed with (None: not recorded)
    prefill_rows       (static) only sequences r < prefill_rows have more than one token (None: any may);
                       lets the reference attention pad only those rows to max_q_len
    rows_in_order      (static) a decode-only step with T == R whose sequence r holds row r (or no row):
                       its attention needs no gather of queries and no scatter of outputs (the engine's decode
                       steps and the on-device loops; pallas_kernels/attention/dispatch.py)

Two builders: `build_metadata` on the host (numpy, validated, any mix of
sequences; the engine's path) and `rows_metadata` on the device (jnp, a static
batch of rows each with its own page table, used inside the on-device loops
where no host runs).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class AttentionMetadata:
    positions_T: jnp.ndarray
    slot_T: jnp.ndarray
    query_start_R: jnp.ndarray
    query_len_R: jnp.ndarray
    kv_len_R: jnp.ndarray
    page_table_RM: jnp.ndarray
    logits_indices_O: jnp.ndarray
    max_q_len: int = flax.struct.field(pytree_node=False, default=1)
    page_size: Optional[int] = flax.struct.field(pytree_node=False, default=None)
    prefill_rows: Optional[int] = flax.struct.field(pytree_node=False, default=None)
    rows_in_order: bool = flax.struct.field(pytree_node=False, default=False)


class MetadataError(ValueError):
    """A step would write outside a sequence's reserved pages or read outside the pool; the message names it."""


def bucket(n: int, minimum: int = 1, cap: Optional[int] = None) -> int:
    """The next power of two >= n (at least `minimum`, at most `cap`)."""
    b = max(minimum, 1 << max(0, int(n) - 1).bit_length())
    return min(b, cap) if cap is not None else b


@dataclasses.dataclass
class SequenceStep:
    """One sequence's part of a step: its new tokens, its reserved pages, and what is already cached."""

    tokens: Sequence[int]  # the new tokens (may be empty: the sequence only reserves its row)
    pages: Sequence[int]  # its page table: positions [0, len(pages) * Z) are reserved
    cached: int = 0  # tokens of this sequence already in the pools (position of the first new token)
    logits: str = "last"  # "last": the logits of its last new token; "all": of every new token; "none"


def _check_buckets(*checks) -> None:
    for what, have, need in checks:
        if have < need:
            raise MetadataError(f"{what}: bucket {have} is smaller than the step needs ({need})")


def build_metadata(seqs: Sequence[SequenceStep], *, page_size: int, num_pages: int,
                   num_tokens: Optional[int] = None, num_seqs: Optional[int] = None,
                   pages_per_seq: Optional[int] = None, num_logits: Optional[int] = None,
                   max_q_len: Optional[int] = None, prefill_rows: Optional[int] = None):
    """Host-side: (tokens_T, AttentionMetadata) as numpy arrays for a mix of sequences, padded to buckets.

    Bucket sizes (T tokens, R sequences, M pages per sequence, O logits rows, the static max_q_len)
    default to the next power of two of what the mix needs; pass them to pin the compiled shapes. Refused with MetadataError
    before anything runs: a write past a sequence's reserved pages, a page outside [0, num_pages),
    a negative cached length, buckets too small for the mix, or (with prefill_rows) a sequence at
    index >= prefill_rows with more than one token.
    """
    Z = page_size
    n_tok = sum(len(s.tokens) for s in seqs)
    need_m = max([len(s.pages) for s in seqs] + [1])
    T = num_tokens or bucket(n_tok, minimum=8)
    R = num_seqs or bucket(len(seqs), minimum=1)
    M = pages_per_seq or bucket(need_m)
    need_q = max([len(s.tokens) for s in seqs] + [1])
    Q = max_q_len or bucket(need_q)
    _check_buckets(("num_tokens", T, n_tok), ("num_seqs", R, len(seqs)), ("pages_per_seq", M, need_m),
                   ("max_q_len", Q, need_q))

    tokens = np.zeros((T,), np.int32)
    positions = np.zeros((T,), np.int32)
    slots = np.full((T,), -1, np.int32)
    q_start = np.zeros((R,), np.int32)
    q_len = np.zeros((R,), np.int32)
    kv_len = np.zeros((R,), np.int32)
    table = np.zeros((R, M), np.int32)
    logits_idx: List[int] = []
    row = 0
    for r, s in enumerate(seqs):
        pages = np.asarray(s.pages, np.int64)
        n = len(s.tokens)
        if s.cached < 0:
            raise MetadataError(f"sequence {r}: cached length must be >= 0, got {s.cached}")
        if pages.size and (pages.min() < 0 or pages.max() >= num_pages):
            bad = int(pages[(pages < 0) | (pages >= num_pages)][0])
            raise MetadataError(f"sequence {r}: page table entry {bad} is outside the pool [0, {num_pages})")
        if s.cached + n > len(pages) * Z:
            raise MetadataError(f"sequence {r}: writing positions [{s.cached}, {s.cached + n}) goes past its "
                                f"{len(pages)} reserved pages ({len(pages) * Z} positions)")
        if prefill_rows is not None and r >= prefill_rows and n > 1:
            raise MetadataError(f"sequence {r}: {n} tokens, but only the first {prefill_rows} sequences "
                                f"(prefill_rows) may have more than one")
        if s.logits not in ("last", "all", "none"):
            raise MetadataError(f"sequence {r}: logits must be 'last', 'all' or 'none', got {s.logits!r}")
        pos = s.cached + np.arange(n)
        tokens[row:row + n] = s.tokens
        positions[row:row + n] = pos
        slots[row:row + n] = pages[pos // Z] * Z + pos % Z
        q_start[r], q_len[r], kv_len[r] = row, n, s.cached + n
        table[r, :len(pages)] = pages
        if s.logits == "all":
            logits_idx.extend(range(row, row + n))
        elif s.logits == "last" and n:
            logits_idx.append(row + n - 1)
        row += n
    q_start[len(seqs):] = row  # padding sequences: empty, past the real rows
    O = num_logits or bucket(max(len(logits_idx), 1))
    _check_buckets(("num_logits", O, len(logits_idx)))
    logits = np.zeros((O,), np.int32)
    logits[:len(logits_idx)] = logits_idx
    meta = AttentionMetadata(positions_T=positions, slot_T=slots, query_start_R=q_start, query_len_R=q_len,
                             kv_len_R=kv_len, page_table_RM=table, logits_indices_O=logits,
                             max_q_len=Q, page_size=Z, prefill_rows=prefill_rows,
                             rows_in_order=bool(Q == 1 and T == R and (q_start[q_len > 0] == np.flatnonzero(q_len > 0)).all()))
    return tokens, meta


def rows_metadata(page_table_BM, lengths_B, n_new_B, tokens_per_row: int, page_size: int,
                  logits="last") -> AttentionMetadata:
    """Device-side metadata for a static batch: row b appends n_new_B[b] tokens at position lengths_B[b].

    The flat batch is the row-major [B, tokens_per_row] block (row b owns flat rows
    b * tokens_per_row ...; its unused rows are padding). logits="last" returns one row
    of logits per batch row (its last new token; row 0 of the block when n_new is 0),
    "all" every flat row ([B * tokens_per_row]), an int array [B] the given token of
    each row's block. Writes past a row's M * Z reserved positions are dropped (callers
    reserve enough pages up front). Pure jnp: runs inside jit and loops.
    """
    B, M = page_table_BM.shape
    Tr, Z = tokens_per_row, page_size
    n_new_B = n_new_B.astype(jnp.int32)
    lengths_B = lengths_B.astype(jnp.int32)
    t_T = jnp.arange(Tr, dtype=jnp.int32)
    pos_BT = lengths_B[:, None] + t_T[None, :]
    valid_BT = (t_T[None, :] < n_new_B[:, None]) & (pos_BT < M * Z)
    page_BT = jnp.take_along_axis(page_table_BM, jnp.clip(pos_BT // Z, 0, M - 1), axis=1)
    slot_BT = jnp.where(valid_BT, page_BT * Z + pos_BT % Z, -1)
    start_B = jnp.arange(B, dtype=jnp.int32) * Tr
    if isinstance(logits, str) and logits == "last":
        logits_idx = start_B + jnp.maximum(n_new_B - 1, 0)
    elif isinstance(logits, str) and logits == "all":
        logits_idx = jnp.arange(B * Tr, dtype=jnp.int32)
    elif isinstance(logits, str):
        raise ValueError(f"logits: must be 'last', 'all' or an index array [B], got {logits!r}")
    else:
        logits_idx = start_B + jnp.asarray(logits, jnp.int32)
    return AttentionMetadata(positions_T=pos_BT.reshape(-1), slot_T=slot_BT.reshape(-1), query_start_R=start_B,
                             query_len_R=n_new_B, kv_len_R=lengths_B + n_new_B,
                             page_table_RM=page_table_BM.astype(jnp.int32), logits_indices_O=logits_idx,
                             max_q_len=Tr, page_size=Z, rows_in_order=Tr == 1)
