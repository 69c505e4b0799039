"""The Mosaic TPU ragged paged attention kernel equals the reference twin and the float64 numpy expectation
under strict TPU interpret mode (out-of-bounds reads raise, uninitialised memory is NaN).

Every case mixes decode rows (query_len 1), prefill chunks, a chunk continuing an existing prefix and k+1
verify runs, with kv lengths 0 (a (0, 0) padding sequence), 1, Z-1, Z, Z+1; pages are shuffled, free slots
NaN-poisoned and sequences laid out in a shuffled order with padding rows (pallas_kernels.testing).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.attention.ragged_reference import ragged_paged_attention_reference
from pallas_kernels.attention.ragged_tpu import ragged_paged_attention_tpu
from pallas_kernels.testing import TOLERANCE, make_ragged_case, rel_err

# Jitted: eagerly, every op of the reference compiles on its own per case shape.
ragged_paged_attention_reference = jax.jit(
    ragged_paged_attention_reference,
    static_argnames=("max_q_len", "sliding_window", "softcap", "q_chunk", "prefill_rows", "scale"))


def _mix(Z):
    """(kv_len, query_len) of every kind of sequence a step may hold."""
    return [(0, 0), (1, 1), (Z - 1, 1), (Z, Z), (Z + 1, Z + 1), (Z + 1, 3), (3 * Z + 2, 9), (2 * Z + 3, 4),
            (20, 20)]


def _args(case):
    return (case["q"], case["k_pages"], case["v_pages"], case["page_table"], case["query_start"],
            case["query_len"], case["kv_len"])


def _kw(case, **kw):
    return dict(max_q_len=case["max_q_len"], layer=case["layer"], k_scale=case["k_scale"],
                v_scale=case["v_scale"], **kw)


def _check(case, got, tol, **attn):
    """got equals the numpy expectation and the reference twin; padding rows are exactly zero; no NaN."""
    got = np.asarray(jnp.asarray(got, jnp.float32))
    assert not np.isnan(got).any()
    owned = np.zeros(got.shape[0], bool)
    for s, n in zip(np.asarray(case["query_start"]), np.asarray(case["query_len"])):
        owned[s:s + n] = True
    assert (~owned).any()
    np.testing.assert_array_equal(got[~owned], 0.0)
    assert rel_err(got, case["expected"]) <= tol
    ref = ragged_paged_attention_reference(*_args(case), **_kw(case, **attn))
    assert rel_err(got, ref) <= tol


@pytest.mark.parametrize("G,block_q,pages_per_block", [
    (1, None, None),  # defaults: one query block of the whole max_q_len, C = M pages per key block
    (3, 8, 2),  # 3 query blocks of 24 rows, 16-key blocks
    (4, 2, 3),  # 2-token query tiles; M = 5 pages -> 2 key blocks, the last one partly past the table
    (5, 8, 1),  # 40-row tiles, one page per key block
])
def test_float32_mixed_batch(G, block_q, pages_per_block):
    Z = 8
    case = make_ragged_case(_mix(Z), K=2, G=G, H=64, Z=Z, L=2, seed=G)
    got = ragged_paged_attention_tpu(*_args(case), **_kw(case), interpret=True, block_q=block_q,
                                     pages_per_block=pages_per_block)
    _check(case, got, 1e-5)


def test_float32_sliding_window_skips_blocks_and_garbage_table_entries():
    Z = 8
    # (30, 11): the query at position 20 sees keys 16..20 only, so it has no visible key in block 1 (keys 8..15)
    # which its query block (positions 19..26) still reads: a fully masked row must not turn into NaN
    seqs = [(0, 0), (1, 1), (60, 40), (45, 1), (Z + 1, Z + 1), (33, 5), (30, 11)]
    case = make_ragged_case(seqs, K=1, G=3, H=128, Z=Z, sliding_window=5, softcap=2.0, seed=7)
    table = np.asarray(case["page_table"])
    case["page_table"] = jnp.asarray(np.where(table < 0, 10 ** 6, table))  # never dereferenced, never clamped in
    attn = dict(sliding_window=5, softcap=2.0)
    got = ragged_paged_attention_tpu(*_args(case), **_kw(case, **attn), interpret=True, block_q=8,
                                     pages_per_block=1)
    _check(case, got, 1e-5, **attn)


def test_bfloat16_window_softcap_traced_layer():
    Z = 16
    case = make_ragged_case(_mix(Z), K=2, G=4, H=64, Z=Z, L=3, dtype=jnp.bfloat16, sliding_window=7,
                            softcap=5.0, seed=3)
    attn = dict(sliding_window=7, softcap=5.0)
    kw = _kw(case, **attn)
    kw.pop("layer")
    f = jax.jit(lambda c, layer: ragged_paged_attention_tpu(*_args(c), **kw, layer=layer, interpret=True,
                                                            block_q=4, pages_per_block=2))
    got = f({k: v for k, v in case.items() if k in ("q", "k_pages", "v_pages", "page_table", "query_start",
                                                    "query_len", "kv_len")}, jnp.int32(case["layer"]))
    _check(case, got, TOLERANCE[jnp.bfloat16], **attn)


@pytest.mark.parametrize("dtype,Z,G", [(jnp.float32, 8, 3), (jnp.bfloat16, 16, 5)])
def test_int8_pools(dtype, Z, G):
    case = make_ragged_case(_mix(Z), K=2, G=G, H=64, Z=Z, L=2, dtype=dtype, int8=True, sliding_window=11,
                            seed=5)
    got = ragged_paged_attention_tpu(*_args(case), **_kw(case, sliding_window=11), interpret=True, block_q=16,
                                     pages_per_block=2)
    _check(case, got, TOLERANCE[dtype], sliding_window=11)


def test_decode_only_batch():
    Z = 16
    seqs = [(0, 0), (1, 1), (Z - 1, 1), (Z, 1), (Z + 1, 1), (3 * Z, 1)]
    case = make_ragged_case(seqs, K=2, G=5, H=128, Z=Z, dtype=jnp.bfloat16, seed=11)
    assert case["max_q_len"] == 1  # one (G, H) tile per sequence and KV head
    got = ragged_paged_attention_tpu(*_args(case), **_kw(case), interpret=True)
    _check(case, got, TOLERANCE[jnp.bfloat16])


def test_refuses_unsupported_shapes():
    case = make_ragged_case([(20, 20), (3, 1)], K=1, G=3, H=64, Z=8)
    with pytest.raises(ValueError, match="block_q"):  # 3 tokens x 3 heads = 9 rows: not whole (8, 128) tiles
        ragged_paged_attention_tpu(*_args(case), **_kw(case), block_q=3)
    with pytest.raises(ValueError, match="q: dtype"):
        ragged_paged_attention_tpu(case["q"].astype(jnp.float16), *_args(case)[1:], **_kw(case))
    with pytest.raises(ValueError, match="k_pages: dtype"):
        ragged_paged_attention_tpu(case["q"].astype(jnp.bfloat16), *_args(case)[1:], **_kw(case))
    with pytest.raises(ValueError, match="pages_per_block"):  # Z = 8 pages cannot be stacked in bf16 (16 rows)
        bf = dict(case, q=case["q"].astype(jnp.bfloat16), k_pages=case["k_pages"].astype(jnp.bfloat16),
                  v_pages=case["v_pages"].astype(jnp.bfloat16))
        ragged_paged_attention_tpu(*_args(bf), **_kw(bf), pages_per_block=2)
    with pytest.raises(ValueError, match="query_len_R"):
        ragged_paged_attention_tpu(*_args(case)[:5], case["query_len"][:1], case["kv_len"], **_kw(case))
