"""The Triton ragged paged attention kernel (CPU interpret mode) equals the pure-JAX reference and float64 numpy.

Every case comes from testing.make_ragged_case: pages shuffled through the pool,
free slots NaN-poisoned, -1 table entries past a sequence's pages, sequences in
a shuffled order in the flat batch and padding rows at its end.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.attention.ragged_gpu import ragged_paged_attention_gpu
from pallas_kernels.attention.ragged_reference import ragged_paged_attention_reference
from pallas_kernels.testing import TOLERANCE, make_ragged_case, rel_err

# Jitted: eagerly, every op of the reference compiles on its own per case shape.
ragged_paged_attention_reference = jax.jit(
    ragged_paged_attention_reference,
    static_argnames=("max_q_len", "sliding_window", "softcap", "q_chunk", "prefill_rows", "scale"))

Z = 16  # page size
# (kv_len, query_len): a padding sequence, decode rows at kv lengths 1, Z-1, Z, Z+1, a prefill from scratch,
# a chunk continuing a prefix, a k+1 = 4 verify run
MIXED = [(0, 0), (1, 1), (Z - 1, 1), (Z, 1), (Z + 1, 1), (Z - 1, Z - 1), (40, 13), (Z + 1, 4), (2 * Z + 1, Z + 1)]


def _args(c):
    return c["q"], c["k_pages"], c["v_pages"], c["page_table"], c["query_start"], c["query_len"], c["kv_len"]


def _kernel(c, **kw):
    kw.setdefault("max_q_len", c["max_q_len"])
    kw.setdefault("layer", c["layer"])
    return ragged_paged_attention_gpu(*_args(c), k_scale=c["k_scale"], v_scale=c["v_scale"], interpret=True, **kw)


def _reference(c, **kw):
    kw.setdefault("layer", c["layer"])
    return ragged_paged_attention_reference(*_args(c), max_q_len=c["max_q_len"], k_scale=c["k_scale"],
                                            v_scale=c["v_scale"], **kw)


def _padding_rows(c):
    owned = np.zeros(c["q"].shape[0], bool)
    for s, n in zip(np.asarray(c["query_start"]), np.asarray(c["query_len"])):
        owned[s:s + n] = True
    return ~owned


def _check(c, out, tol, **ref_kw):
    assert out.shape == c["q"].shape and out.dtype == c["q"].dtype
    assert not np.isnan(np.asarray(out.astype(jnp.float32))).any()
    pad = _padding_rows(c)
    assert pad.any()
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32))[pad], 0.0)  # padding rows exactly zero
    assert rel_err(out, c["expected"]) <= tol
    assert rel_err(out, _reference(c, **ref_kw)) <= tol


@pytest.mark.parametrize("G,block_q,block_k", [
    (1, None, None),  # default tiles: 64 tokens per program
    (3, 4, 16),  # 12 of 16 rows used; several query blocks per prefill, one page per key block
    (4, 5, 64),  # 20 of 32 rows; 4 pages per key block, a 3-slot table read past its end
    (5, 2, 32),  # 10 of 16 rows
])
def test_mixed_step_float32(G, block_q, block_k):
    c = make_ragged_case(MIXED, K=2, G=G, H=32, Z=Z, L=2, seed=G)
    _check(c, _kernel(c, block_q=block_q, block_k=block_k), 1e-5)


def test_bfloat16_and_larger_head_dim():
    c = make_ragged_case(MIXED, K=2, G=4, H=64, Z=Z, dtype=jnp.bfloat16, seed=10)
    _check(c, _kernel(c, block_q=4), TOLERANCE[jnp.bfloat16])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_int8_pools(dtype):
    c = make_ragged_case(MIXED, K=2, G=3, H=32, Z=Z, dtype=dtype, int8=True, seed=11)
    _check(c, _kernel(c, block_q=4, block_k=32), TOLERANCE[dtype])


def test_sliding_window_and_softcap():
    # window 5 < block_q: later tokens of a block see none of the block's first key block
    seqs = [(50, 20), (Z + 1, 1), (3, 3), (0, 0), (2 * Z, 6)]
    c = make_ragged_case(seqs, K=2, G=3, H=32, Z=Z, sliding_window=5, softcap=2.0, seed=12)
    _check(c, _kernel(c, block_q=8, block_k=16, sliding_window=5, softcap=2.0), 1e-5, sliding_window=5, softcap=2.0)


def test_traced_layer_in_jit_and_padded_max_q_len():
    c = make_ragged_case(MIXED, K=1, G=4, H=32, Z=Z, L=3, seed=13)
    f = jax.jit(lambda c, layer: _kernel(c, layer=layer, max_q_len=24, block_q=8))  # 24 > the longest query run
    out = f(c, jnp.int32(2))
    _check(c, out, 1e-5, layer=2)
    assert rel_err(out, _reference(c, layer=1)) > 1e-2  # the layer index matters


def test_decode_only_step_and_nan_padding_queries():
    seqs = [(1, 1), (Z - 1, 1), (Z, 1), (Z + 1, 1), (0, 0), (3 * Z, 1)]
    c = make_ragged_case(seqs, K=2, G=4, H=32, Z=Z, seed=14)
    pad = _padding_rows(c)
    c["q"] = c["q"].at[np.flatnonzero(pad)].set(jnp.nan)  # rows no sequence owns may hold anything
    assert c["max_q_len"] == 1
    _check(c, _kernel(c), 1e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(H=24), "head dim"),
    (dict(block_k=8), "block_k"),  # below the page size (and tl.dot's 16)
    (dict(block_q=0), "block_q"),
])
def test_refuses_shapes_triton_cannot_tile(kw, match):
    c = make_ragged_case([(5, 2)], K=1, G=2, H=kw.get("H", 32), Z=Z, pad_tokens=1)
    with pytest.raises(ValueError, match=match):
        _kernel(c, **{k: v for k, v in kw.items() if k != "H"})


@pytest.mark.parametrize("num_splits", [2, 3, 7])
def test_split_k_equals_the_unsplit_kernel_and_the_reference(num_splits):
    # J parts of every program's key blocks, merged: more parts than some rows have blocks (empty splits), a
    # sliding window and softcap, int8 pages, a padding sequence and rows of one key
    seqs = [(90, 1), (0, 0), (1, 1), (2 * Z + 1, 1), (40, 13), (70, 9), (Z, Z)]
    for kw, ref_kw, dtype, int8, tol in (
            (dict(block_q=4, block_k=16), {}, jnp.float32, False, 1e-5),
            (dict(block_q=8, block_k=16, sliding_window=20, softcap=3.0), dict(sliding_window=20, softcap=3.0),
             jnp.float32, False, 1e-5),
            (dict(block_q=4, block_k=32), {}, jnp.bfloat16, True, TOLERANCE[jnp.bfloat16])):
        c = make_ragged_case(seqs, K=2, G=3, H=32, Z=Z, dtype=dtype, int8=int8, seed=20 + num_splits,
                             sliding_window=ref_kw.get("sliding_window"), softcap=ref_kw.get("softcap"))
        split = _kernel(c, num_splits=num_splits, **kw)
        _check(c, split, tol, **ref_kw)
        assert rel_err(split, _kernel(c, num_splits=1, **kw)) <= tol


def test_split_k_default_is_one_in_interpret_mode_and_refuses_zero():
    c = make_ragged_case([(40, 1)], K=1, G=2, H=32, Z=Z, pad_tokens=1, seed=30)
    np.testing.assert_array_equal(np.asarray(_kernel(c)), np.asarray(_kernel(c, num_splits=1)))
    with pytest.raises(ValueError, match="num_splits"):
        _kernel(c, num_splits=0)


def test_a_decode_step_in_row_order_skips_the_gather_and_scatter_and_equals_them():
    """The dispatcher's decode path with tokens_in_row_order (T == R, sequence r at row r: the engine's decode steps)
    feeds the kernel the queries as they are; it equals the gather / scatter path and the float64 expectation, and
    its padding row is exactly zero. A step with T != R is refused."""
    from pallas_kernels.attention.dispatch import ragged_paged_attention
    seqs = [(1, 1), (Z + 1, 1), (3 * Z, 1), (0, 0)]
    c = make_ragged_case(seqs, K=2, G=4, H=32, Z=Z, pad_tokens=1, seed=5)
    start, qlen = np.asarray(c["query_start"]), np.asarray(c["query_len"])
    R = len(seqs)
    assert c["q"].shape[0] == R
    real = np.flatnonzero(qlen > 0)
    q = jnp.zeros_like(c["q"]).at[real].set(c["q"][start[real]])  # sequence r's token at row r
    want = np.zeros(c["expected"].shape, np.float32)
    want[real] = np.asarray(c["expected"])[start[real]]
    run = lambda in_order, q, start: ragged_paged_attention(
        q, c["k_pages"], c["v_pages"], c["page_table"], start, c["query_len"], c["kv_len"], max_q_len=1,
        layer=c["layer"], k_scale=c["k_scale"], v_scale=c["v_scale"], tokens_in_row_order=in_order)
    rows = jnp.arange(R, dtype=jnp.int32)
    fast, gathered = run(True, q, rows), run(False, q, jnp.where(c["query_len"] > 0, rows, R))
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(gathered))
    assert rel_err(fast, want) <= 1e-5
    np.testing.assert_array_equal(np.asarray(fast)[qlen == 0], 0.0)
    with pytest.raises(ValueError, match="as many tokens as rows"):
        run(True, jnp.concatenate([q, q]), rows)
