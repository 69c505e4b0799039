"""The Triton kernels compiled for real (interpret=False) on an NVIDIA GPU equal their pure-JAX references.

Skipped, with the reason, on a machine without a GPU; run them with `pytest -m gpu` on one. Head shapes follow
Llama-3-8B (K = 8 KV heads, G = 4, H = 128) plus an odd group size; pools are bfloat16 or int8. The quantized
matmul runs every weight format at Llama-3-8B's MLP decode shapes; the KV write and the add + RMSNorm at its
step shapes; the decode GEMV (norm prologue, SwiGLU epilogue) at its four projections.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.matmul.formats import FORMATS, dequantize, quantize
from pallas_kernels.attention.decode_gpu import decode_attention_gpu, paged_decode_attention_gpu
from pallas_kernels.attention.decode_reference import decode_attention_reference
from pallas_kernels.attention.ragged_gpu import ragged_paged_attention_gpu
from pallas_kernels.attention.ragged_reference import ragged_paged_attention_reference
from pallas_kernels.matmul.quant_gpu import quant_matmul_gpu
from pallas_kernels.matmul.quant_reference import quant_matmul_reference
from pallas_kernels.kv_write.write_gpu import write_pages_gpu
from pallas_kernels.kv_write.write_reference import write_pages_reference
from pallas_kernels.gemv.gemv_gpu import gemv_gpu
from pallas_kernels.gemv.gemv_reference import fused_gemv_reference
from pallas_kernels.norm.add_rms_norm_gpu import add_rms_norm_gpu
from pallas_kernels.norm.add_rms_norm_reference import add_rms_norm_reference
from pallas_kernels.testing import TOLERANCE, make_case, make_ragged_case, rel_err, to_pages

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU to compile the Triton kernels "
                       f"(the default JAX backend is {jax.default_backend()})"),
]

BF16 = TOLERANCE[jnp.bfloat16]
LENGTHS = [0, 1, 63, 64, 65, 300, 1000, 1024]  # empty row, around a 64-key block edge, long rows


@pytest.mark.parametrize("int8", [False, True])
def test_contiguous_decode(int8):
    case = make_case(len(LENGTHS), K=8, G=4, S=1024, H=128, lengths=LENGTHS, L=2, dtype=jnp.bfloat16, int8=int8)
    args = (case["q"], case["k"], case["v"], case["lengths"])
    kw = dict(layer=1, k_scale=case["k_scale"], v_scale=case["v_scale"])
    out = decode_attention_gpu(*args, **kw)
    assert rel_err(out, decode_attention_reference(*args, **kw)) <= BF16
    out = decode_attention_gpu(*args, sliding_window=100, softcap=30.0, num_splits=4, **kw)
    assert rel_err(out, decode_attention_reference(*args, sliding_window=100, softcap=30.0, **kw)) <= BF16


@pytest.mark.parametrize("int8,Z", [(False, 16), (True, 16), (False, 64)])
def test_paged_decode(int8, Z):
    case = make_case(len(LENGTHS), K=8, G=4, S=1024, H=128, lengths=LENGTHS, dtype=jnp.bfloat16, int8=int8, seed=1)
    pc = to_pages(case, Z, seed=2)
    out = paged_decode_attention_gpu(pc["q"], pc["k_pages"], pc["v_pages"], pc["block_tables"], pc["lengths"],
                                     k_scale=pc["k_scale"], v_scale=pc["v_scale"], sliding_window=200)
    ref = decode_attention_reference(case["q"], case["k"], case["v"], case["lengths"], k_scale=case["k_scale"],
                                     v_scale=case["v_scale"], sliding_window=200)
    assert rel_err(out, ref) <= BF16


MIXES = {
    "decode": [(1, 1), (63, 1), (64, 1), (65, 1), (1000, 1), (0, 0), (300, 1), (17, 1)],
    "mixed": [(0, 0), (1, 1), (15, 1), (16, 1), (17, 1), (300, 300), (700, 129), (65, 5), (1000, 1), (40, 40)],
    "prefill": [(512, 512), (1024, 256), (77, 77)],
}


def _ragged(c, fn, **kw):
    kw = {"max_q_len": c["max_q_len"], "layer": c["layer"], "k_scale": c["k_scale"], "v_scale": c["v_scale"], **kw}
    return fn(c["q"], c["k_pages"], c["v_pages"], c["page_table"], c["query_start"], c["query_len"], c["kv_len"], **kw)


def _check_ragged(c, out, tol, **kw):
    assert rel_err(out, c["expected"]) <= tol
    assert rel_err(out, _ragged(c, ragged_paged_attention_reference, **kw)) <= tol
    owned = np.zeros(c["q"].shape[0], bool)
    for s, n in zip(np.asarray(c["query_start"]), np.asarray(c["query_len"])):
        owned[s:s + n] = True
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32))[~owned], 0.0)


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("int8", [False, True])
def test_ragged_llama3_heads(mix, int8):
    c = make_ragged_case(MIXES[mix], K=8, G=4, H=128, Z=16, L=2, dtype=jnp.bfloat16, int8=int8, seed=3)
    _check_ragged(c, _ragged(c, ragged_paged_attention_gpu), BF16)


@pytest.mark.parametrize("G,H,Z,block_q,block_k", [
    (5, 128, 64, None, None),  # default tiles: 12 tokens x 5 heads in 64 rows, one page per key block
    (3, 64, 16, 8, 32),
    (1, 128, 128, 16, None),  # pages larger than the default key block
])
def test_ragged_other_shapes_window_softcap(G, H, Z, block_q, block_k):
    c = make_ragged_case(MIXES["mixed"], K=2, G=G, H=H, Z=Z, dtype=jnp.bfloat16, sliding_window=100, softcap=30.0,
                         seed=4)
    kw = dict(sliding_window=100, softcap=30.0)
    _check_ragged(c, _ragged(c, ragged_paged_attention_gpu, block_q=block_q, block_k=block_k, **kw), BF16, **kw)


def test_ragged_split_k_long_row_in_a_small_mixed_step():
    # a long decoding row beside a short chunk: 2 query blocks x K x R = 32 programs, under the GPU's SMs, so the
    # default cuts each program's keys into parts (split-K) and merges them; and a forced J = 3
    c = make_ragged_case([(4000, 1), (40, 17)], K=8, G=4, H=128, Z=16, dtype=jnp.bfloat16, seed=6)
    _check_ragged(c, _ragged(c, ragged_paged_attention_gpu), BF16)
    _check_ragged(c, _ragged(c, ragged_paged_attention_gpu, num_splits=3), BF16)


def test_ragged_traced_layer_float32():
    c = make_ragged_case(MIXES["mixed"], K=8, G=4, H=128, Z=16, L=3, seed=5)
    f = jax.jit(lambda a, layer: ragged_paged_attention_gpu(
        a["q"], a["k_pages"], a["v_pages"], a["page_table"], a["query_start"], a["query_len"], a["kv_len"],
        max_q_len=c["max_q_len"], layer=layer))
    arrays = {k: c[k] for k in ("q", "k_pages", "v_pages", "page_table", "query_start", "query_len", "kv_len")}
    _check_ragged(c, f(arrays, jnp.int32(2)), 1e-4, layer=2)  # float32 end to end; GPU exp is not correctly rounded


@pytest.mark.parametrize("I,O", [(4096, 14336), (14336, 4096)])  # Llama-3-8B gate/up and down
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_quant_matmul_llama3_mlp(name, I, O):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((I, O), dtype=np.float32) * 0.02
    qw = {k: jnp.asarray(v) for k, v in quantize(w, name).items()}
    f = jax.jit(lambda x, w: quant_matmul_gpu(x, w, name))
    for M in (1, 8, 16):
        x = jnp.asarray(rng.standard_normal((M, I), dtype=np.float32), jnp.bfloat16)
        out, ref = f(x, qw), quant_matmul_reference(x, qw, name)
        assert out.shape == (M, O) and out.dtype == jnp.float32
        # float32 operands (ieee dot) summed in another order than XLA's: float32 rounding only
        assert rel_err(out, ref) <= 1e-4
        x64 = np.asarray(x.astype(jnp.float32), np.float64)
        assert rel_err(out, x64 @ np.asarray(dequantize(qw, name), np.float64)) <= 1e-4
    out = quant_matmul_gpu(x, qw, name, compute_dtype=jnp.bfloat16)  # tensor-core operands
    assert rel_err(out, ref) <= BF16


@pytest.mark.parametrize("T", [1, 64])
def test_kv_write_llama3_step_in_place(T):
    """Llama 3 8B's q|k|v product (32 + 8 + 8 heads of 128) written into 65-page pools with the keys rotated;
    two padding tokens in the 64-token step; equal to the scatter twin (the rotation in float32 both ways, GPU
    sin/cos-free: the tables are inputs)."""
    rng = np.random.default_rng(T)
    L, P, K, Z, H = 4, 65, 8, 16, 128
    pools = [jnp.asarray(rng.standard_normal((L, P, K, Z, H)), jnp.bfloat16) for _ in range(2)]
    qkv = jnp.asarray(rng.standard_normal((T, 48, H)), jnp.bfloat16)
    ang = rng.uniform(0, 100, (T, H // 2))
    rope = (jnp.asarray(np.cos(ang), jnp.float32), jnp.asarray(np.sin(ang), jnp.float32))
    slot = rng.permutation(P * Z)[:T].astype(np.int32)
    if T > 1:
        slot[[0, T - 1]] = -1  # padding: dropped
    args = (*pools, jnp.int32(2), qkv, 32, qkv, 40, jnp.asarray(slot), rope)
    want = write_pages_reference(*args)
    got = jax.jit(write_pages_gpu)(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("M", [1, 64])
def test_add_rms_norm_llama3_rows(M):
    rng = np.random.default_rng(M)
    x, d = (jnp.asarray(rng.standard_normal((M, 4096)) * 3, jnp.bfloat16) for _ in range(2))
    w = jnp.asarray(rng.uniform(0.5, 1.5, 4096), jnp.bfloat16)
    (h, y), (rh, ry) = add_rms_norm_gpu(x, d, w, 1e-5), add_rms_norm_reference(x, d, w, 1e-5)
    np.testing.assert_array_equal(np.asarray(h, np.float32), np.asarray(rh, np.float32))
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ry, np.float32), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("M", [1, 5])
@pytest.mark.parametrize("K,N,norm,swiglu", [(4096, 6144, True, False), (4096, 4096, False, False),
                                             (4096, 2 * 14336, True, True), (14336, 4096, False, False),
                                             (4096, 4100, False, False)])
def test_decode_gemv_llama3_projections(M, K, N, norm, swiglu):
    """Llama 3 8B's decode projections (and an N with a masked column block) at 1 and 5 rows (a verify step)."""
    rng = np.random.default_rng(K + N + M)
    x, r = (jnp.asarray(rng.standard_normal((M, K)), jnp.bfloat16) for _ in range(2))
    w = jnp.asarray(rng.standard_normal((K, N)) / np.sqrt(K), jnp.bfloat16)
    wn = jnp.asarray(rng.uniform(0.5, 1.5, K), jnp.bfloat16)
    fold = (r, wn, 1e-5) if norm else None
    got = gemv_gpu(x, w, *((r, wn) if norm else ()), eps=1e-5, swiglu=swiglu)
    want = fused_gemv_reference(x, w, fold, swiglu)
    if norm:
        (h, got), (rh, want) = got, want
        np.testing.assert_array_equal(np.asarray(h, np.float32), np.asarray(rh, np.float32))
    assert rel_err(got, want) <= BF16
