"""Paged kernels (GPU interpret, TPU interpret) equal the contiguous reference on the same logical cache.

Pages are scattered through the pool in a shuffled order, table entries past a
row's pages are -1, and unused pool pages are poisoned with NaN.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.attention.decode_gpu import paged_decode_attention_gpu
from pallas_kernels.attention.decode_tpu import paged_decode_attention_tpu
from pallas_kernels.attention.decode_reference import decode_attention_reference, paged_decode_attention_reference
from pallas_kernels.testing import TOLERANCE, make_case, rel_err, to_pages

Z = 16  # page size
M = 4  # table slots per row
EDGE_LENGTHS = [0, 1, Z - 1, Z, Z + 1, M * Z]


def _paged(kind, pc, **kw):
    fn = paged_decode_attention_gpu if kind == "gpu" else paged_decode_attention_tpu
    return fn(pc["q"], pc["k_pages"], pc["v_pages"], pc["block_tables"], pc["lengths"], k_scale=pc["k_scale"],
              v_scale=pc["v_scale"], interpret=True, **kw)


def _contiguous_ref(case, **kw):
    return decode_attention_reference(case["q"], case["k"], case["v"], case["lengths"], k_scale=case["k_scale"],
                                      v_scale=case["v_scale"], **kw)


def test_shuffled_pages_really_are_shuffled():
    case = make_case(len(EDGE_LENGTHS), K=2, G=1, S=M * Z, H=64, lengths=EDGE_LENGTHS)
    tables = np.asarray(to_pages(case, Z, seed=1)["block_tables"])
    used = tables[tables >= 0]
    assert len(set(used.tolist())) == len(used)  # no page shared
    assert not np.array_equal(used, np.sort(used))  # not in allocation order
    assert (tables[0] == -1).all()  # the empty row owns no page


@pytest.mark.parametrize("kind,extra", [
    ("gpu", dict(pages_per_block=2, num_splits=2)),  # 32-key blocks gathered from 2 pages
    ("gpu", dict(pages_per_block=1, num_splits=4)),
    ("tpu", dict(num_splits=2)),
])
def test_edge_lengths(kind, extra):
    case = make_case(len(EDGE_LENGTHS), K=2, G=5, S=M * Z, H=64, lengths=EDGE_LENGTHS, L=2, seed=2)
    pc = to_pages(case, Z, seed=3)
    out, (m, l) = _paged(kind, pc, layer=1, return_stats=True, **extra)
    ref, (m_ref, l_ref) = _contiguous_ref(case, layer=1, return_stats=True)
    np.testing.assert_array_equal(np.asarray(out[0]), 0.0)
    assert rel_err(out, ref) <= 1e-5
    np.testing.assert_allclose(np.asarray(l), np.asarray(l_ref), rtol=1e-5)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_bf16_int8_window_and_softcap(kind):
    lengths = [3, 2 * Z + 5, M * Z]
    for dtype, int8 in ((jnp.bfloat16, False), (jnp.float32, True)):
        case = make_case(3, K=2, G=2, S=M * Z, H=128, lengths=lengths, dtype=dtype, int8=int8, seed=4)
        pc = to_pages(case, Z, seed=5)
        got = _paged(kind, pc, sliding_window=20, softcap=4.0)
        assert rel_err(got, _contiguous_ref(case, sliding_window=20, softcap=4.0)) <= TOLERANCE[dtype], (dtype, int8)


def test_paged_reference_equals_contiguous_reference():
    case = make_case(3, K=2, G=3, S=M * Z, H=64, lengths=[1, 20, 64], seed=6)
    pc = to_pages(case, Z, seed=7)
    tables = jnp.maximum(pc["block_tables"], 0)  # the reference gathers every slot; -1 slots are masked anyway
    got = paged_decode_attention_reference(pc["q"], pc["k_pages"], pc["v_pages"], tables, pc["lengths"])
    assert rel_err(got, _contiguous_ref(case)) <= 1e-6


def test_gpu_paged_lowers_to_triton_with_int8_pages():
    q = jnp.zeros((2, 8, 128), jnp.bfloat16)
    kp = jnp.zeros((2, 9, 2, 16, 128), jnp.int8)
    sc = jnp.ones((2, 9, 2, 16), jnp.float32)
    tables = jnp.zeros((2, 8), jnp.int32)
    lens = jnp.array([5, 100], jnp.int32)
    fn = lambda q, k, v, ks, vs, t, n: paged_decode_attention_gpu(q, k, v, t, n, layer=1, k_scale=ks, v_scale=vs)
    text = jax.jit(fn).trace(q, kp, kp, sc, sc, tables, lens).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text
