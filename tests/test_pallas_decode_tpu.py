"""The Mosaic TPU decode kernel equals the reference under TPU interpret mode (out-of-bounds reads raise,
uninitialised memory is NaN); it also passes the real Mosaic lowering."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.attention.decode_tpu import decode_attention_tpu, interpret_params
from pallas_kernels.attention.decode_reference import decode_attention_reference
from pallas_kernels.testing import TOLERANCE, make_case, rel_err

BK = 8
S = 3 * BK
EDGE_LENGTHS = [0, 1, BK - 1, BK, BK + 1, S]


def _run(case, **kw):
    return decode_attention_tpu(case["q"], case["k"], case["v"], case["lengths"], k_scale=case["k_scale"],
                                v_scale=case["v_scale"], interpret=True, **kw)


def _ref(case, **kw):
    return decode_attention_reference(case["q"], case["k"], case["v"], case["lengths"], k_scale=case["k_scale"],
                                      v_scale=case["v_scale"], **kw)


def test_interpret_mode_is_strict():
    p = interpret_params(True)
    assert p.out_of_bounds_reads == "raise" and p.uninitialized_memory == "nan"


def test_edge_lengths_splits_and_stats():
    case = make_case(len(EDGE_LENGTHS), K=2, G=5, S=S, H=64, lengths=EDGE_LENGTHS, L=2)
    out, (m, l) = _run(case, layer=1, block_k=BK, num_splits=2, return_stats=True)
    ref, (m_ref, l_ref) = _ref(case, layer=1, return_stats=True)
    np.testing.assert_array_equal(np.asarray(out[0]), 0.0)  # empty row: zeros, not NaN
    assert rel_err(out, ref) <= 1e-5
    np.testing.assert_array_equal(np.isfinite(m), np.isfinite(m_ref))
    np.testing.assert_allclose(np.asarray(l), np.asarray(l_ref), rtol=1e-5)


@pytest.mark.parametrize("G,H", [(1, 128), (2, 64), (4, 128), (8, 64)])
def test_group_sizes_and_head_dims(G, H):
    case = make_case(1, K=2, G=G, S=2 * BK, H=H, lengths=[BK + 3], seed=G)
    assert rel_err(_run(case, block_k=BK), _ref(case)) <= 1e-5


def test_bf16_window_softcap_traced_layer_and_extra_splits():
    bk = 16  # bf16 blocks are aligned to 16 rows
    case = make_case(3, K=1, G=4, S=3 * bk, H=64, lengths=[2, 21, 3 * bk], L=2, dtype=jnp.bfloat16, seed=9)
    f = jax.jit(lambda c, layer: _run(c, layer=layer, block_k=bk, num_splits=3, sliding_window=6, softcap=3.0))
    assert rel_err(f(case, jnp.int32(1)), _ref(case, layer=1, sliding_window=6, softcap=3.0)) <= TOLERANCE[jnp.bfloat16]


def test_int8_cache_equals_dequantized_reference():
    bk = 32  # int8 blocks are aligned to 32 rows
    lengths = [0, 1, bk - 1, bk, bk + 1, 2 * bk]
    case = make_case(len(lengths), K=1, G=5, S=2 * bk, H=64, lengths=lengths, int8=True, seed=11)
    assert rel_err(_run(case, block_k=bk), _ref(case)) <= 1e-5


def test_lowers_with_mosaic():
    L, B, K, Sx, H, G = 2, 2, 2, 1024, 128, 5
    q = jnp.zeros((B, K * G, H), jnp.bfloat16)
    lens = jnp.array([3, 1000], jnp.int32)
    for dt in (jnp.bfloat16, jnp.int8):
        k = jnp.zeros((L, B, K, Sx, H), dt)
        sc = jnp.ones((L, B, K, Sx), jnp.float32) if dt == jnp.int8 else None
        fn = lambda q, k, v, n, layer: decode_attention_tpu(q, k, v, n, layer=layer, k_scale=sc, v_scale=sc,
                                                            num_splits=2, softcap=30.0, sliding_window=100)
        text = jax.jit(fn).trace(q, k, k, lens, jnp.int32(1)).lower(lowering_platforms=("tpu",)).as_text()
        assert "tpu_custom_call" in text
