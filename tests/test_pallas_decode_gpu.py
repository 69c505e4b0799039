"""The Triton decode kernel (CPU interpret mode) equals the pure-JAX reference; it also lowers to Triton."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.attention import splits
from pallas_kernels.attention.decode_gpu import decode_attention_gpu, paged_decode_attention_gpu
from pallas_kernels.attention.decode_reference import decode_attention_reference
from pallas_kernels.testing import TOLERANCE, make_case, rel_err

BK = 16  # block_k used in these tests; S = 3 blocks
S = 3 * BK
EDGE_LENGTHS = [0, 1, BK - 1, BK, BK + 1, S]  # empty row, one key, around a block edge, full


def _run(case, **kw):
    return decode_attention_gpu(case["q"], case["k"], case["v"], case["lengths"], k_scale=case["k_scale"],
                                v_scale=case["v_scale"], interpret=True, **kw)


def _ref(case, **kw):
    return decode_attention_reference(case["q"], case["k"], case["v"], case["lengths"], k_scale=case["k_scale"],
                                      v_scale=case["v_scale"], **kw)


def test_edge_lengths_and_stats(num_splits=3):  # one split per block; J = 1 runs in the other tests
    case = make_case(len(EDGE_LENGTHS), K=2, G=5, S=S, H=64, lengths=EDGE_LENGTHS, L=2)
    out, (m, l) = _run(case, layer=1, block_k=BK, num_splits=num_splits, return_stats=True)
    ref, (m_ref, l_ref) = _ref(case, layer=1, return_stats=True)
    assert not np.isnan(np.asarray(out)).any()
    np.testing.assert_array_equal(np.asarray(out[0]), 0.0)  # the empty row is defined: zeros
    assert rel_err(out, ref) <= 1e-5
    np.testing.assert_array_equal(np.isfinite(m), np.isfinite(m_ref))  # -inf exactly for the empty row
    fin = np.isfinite(np.asarray(m_ref))
    np.testing.assert_allclose(np.asarray(m)[fin], np.asarray(m_ref)[fin], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(l), np.asarray(l_ref), rtol=1e-5)


def test_one_split_writes_the_normalised_output_itself():
    """J = 1 without stats: the kernel divides by l and stores the G real rows of each tile in q's dtype (no merge);
    the empty row is zeros as the merge would give, and G = 5 leaves 11 padding rows that must not be written."""
    case = make_case(len(EDGE_LENGTHS), K=2, G=5, S=S, H=64, lengths=EDGE_LENGTHS, L=2, dtype=jnp.bfloat16, seed=7)
    out = _run(case, layer=1, block_k=BK, num_splits=1)
    assert out.dtype == jnp.bfloat16 and not np.isnan(np.asarray(out, np.float32)).any()
    np.testing.assert_array_equal(np.asarray(out[0], np.float32), 0.0)
    assert rel_err(out, _ref(case, layer=1)) <= TOLERANCE[jnp.bfloat16]


@pytest.mark.parametrize("G,H", [(1, 64), (2, 128), (4, 64), (8, 128), (5, 128)])
def test_group_sizes_and_head_dims(G, H):
    case = make_case(2, K=2, G=G, S=S, H=H, lengths=[BK + 3, S], seed=G)
    assert rel_err(_run(case, block_k=BK, num_splits=2), _ref(case)) <= 1e-5


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs(dtype):
    case = make_case(3, K=2, G=4, S=S, H=64, lengths=[1, BK + 1, S], dtype=dtype, seed=3)
    out = _run(case, block_k=BK)
    assert out.dtype == dtype
    assert rel_err(out, _ref(case)) <= TOLERANCE[dtype]


def test_more_splits_than_a_short_row_needs():
    # 48 keys in 16-key blocks give at most 3 useful splits; ask for 3 with rows of 1 and 2 keys
    case = make_case(3, K=1, G=4, S=S, H=64, lengths=[1, 2, S], seed=4)
    assert rel_err(_run(case, block_k=BK, num_splits=3), _ref(case)) <= 1e-5
    # and the heuristic on a tiny cache: batch*heads already fill the device -> 1 split
    assert splits.choose_num_splits(batch_heads=64 * 8, num_blocks=3) == 1


def test_window_softcap_and_traced_layer():
    case = make_case(4, K=2, G=4, S=S, H=64, lengths=[0, 5, 30, S], L=3, seed=5)
    f = jax.jit(lambda c, layer: _run(c, layer=layer, block_k=BK, num_splits=2, sliding_window=7, softcap=3.0))
    got = f(case, jnp.int32(2))
    assert rel_err(got, _ref(case, layer=2, sliding_window=7, softcap=3.0)) <= 1e-5
    assert rel_err(got, _ref(case, layer=1, sliding_window=7, softcap=3.0)) > 1e-2  # the layer index matters


def test_cache_length_not_a_multiple_of_the_block():
    case = make_case(3, K=2, G=2, S=40, H=64, lengths=[0, 33, 40], seed=6)  # 40 = 2.5 blocks of 16
    assert rel_err(_run(case, block_k=BK, num_splits=2), _ref(case)) <= 1e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_int8_cache_equals_dequantized_reference(dtype):
    case = make_case(len(EDGE_LENGTHS), K=2, G=4, S=S, H=64, lengths=EDGE_LENGTHS, dtype=dtype, int8=True, seed=7)
    out = _run(case, block_k=BK, num_splits=2)
    assert rel_err(out, _ref(case)) <= TOLERANCE[dtype]


def test_split_heuristic_fills_the_gpu_at_batch_one():
    # B*K = 8 programs without splitting; 32k keys in 64-key blocks = 512 blocks
    J = splits.choose_num_splits(batch_heads=8, num_blocks=512)
    assert J * 8 >= 132  # at least one program per H100 SM
    assert 512 // J >= splits.MIN_BLOCKS_PER_SPLIT
    assert splits.choose_num_splits(batch_heads=64 * 32, num_blocks=512) == 1
    # Llama 3 8B at batch 64 (B*K = 512, two programs per SM and more): one split, so no merge launch
    assert splits.choose_num_splits(batch_heads=64 * 8, num_blocks=16) == 1
    assert splits.choose_num_splits(batch_heads=32 * 8, num_blocks=16) > 1


def _lower_for_cuda(fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_lowers_to_triton_and_reads_the_cache_in_place():
    """The real Triton lowering (not interpret) accepts the kernel, and the stacked cache goes straight in."""
    L, B, K, Sx, H, G = 3, 2, 2, 256, 128, 5
    q = jnp.zeros((B, K * G, H), jnp.bfloat16)
    k = jnp.zeros((L, B, K, Sx, H), jnp.bfloat16)
    lens = jnp.array([3, 200], jnp.int32)
    text = _lower_for_cuda(lambda q, k, v, n, layer: decode_attention_gpu(q, k, v, n, layer=layer, softcap=30.0,
                                                                          sliding_window=64), q, k, k, lens,
                           jnp.int32(1))
    assert "__gpu$xla.gpu.triton" in text
    cache_type = f"tensor<{L}x{B}x{K}x{Sx}x{H}xbf16>"
    # no op other than the kernel call touches the cache: no slice, transpose or copy of it
    uses = [ln for ln in text.splitlines() if cache_type in ln and "func.func" not in ln]
    allowed = ("xla.gpu.triton", "call @", "return ")  # the kernel, the jitted wrapper's call, its signature
    assert uses and all(any(a in ln for a in allowed) for ln in uses), uses
    k8 = jnp.zeros((L, B, K, Sx, H), jnp.int8)
    sc = jnp.ones((L, B, K, Sx), jnp.float32)
    _lower_for_cuda(lambda q, k, v, ks, vs, n: decode_attention_gpu(q, k, v, n, k_scale=ks, v_scale=vs),
                    q, k8, k8, sc, sc, lens)
    kp = jnp.zeros((L, 9, K, 16, H), jnp.bfloat16)
    tables = jnp.zeros((B, 16), jnp.int32)
    _lower_for_cuda(lambda q, k, v, t, n: paged_decode_attention_gpu(q, k, v, t, n, layer=2), q, kp, kp, tables, lens)
