"""The absorbed-MLA decode kernels (GPU in Pallas interpret mode, TPU under strict TPU interpret mode) and the
MLA dispatch equal mla_ragged_paged_attention_reference on ragged paged batches.

Every case is hostile the way a recycled pool is: pages are shuffled through the pool, free pages and the
unused tail slots of each sequence's last page are NaN, and table entries past a sequence's pages are -1,
far out of range, or an in-range free (NaN) page. A kernel that reads and weights any slot it should not
turns its output into NaN and fails the comparison. The reference itself is checked against a float64
numpy computation of the same case.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.attention.dispatch import mla_ragged_paged_attention
from pallas_kernels.attention.mla_gpu import mla_paged_decode_attention_gpu
from pallas_kernels.attention.mla_reference import mla_ragged_paged_attention_reference
from pallas_kernels.attention.mla_tpu import mla_paged_decode_attention_tpu
from pallas_kernels.testing import TOLERANCE, rel_err

# Jitted: eagerly, every op of the reference compiles on its own per case shape.
mla_ragged_paged_attention_reference = jax.jit(
    mla_ragged_paged_attention_reference, static_argnames=("max_q_len", "scale", "prefill_rows"))

M = 5  # table slots per sequence
SCALE = 0.125


def _lengths(Z):
    """0, 1, exactly a page, several pages not a multiple of Z, one short of a page, the whole table."""
    return [0, 1, Z, 2 * Z + 3, Z - 1, M * Z]


def _mla_case(seqs, *, N, C, E, Z, L=1, dtype=jnp.float32, extra_pages=3, pad_tokens=2, seed=0):
    """A ragged MLA step: seqs = [(kv_len, query_len)]; queries laid out in a shuffled order, pad rows at the end.

    Returns dict of jnp arrays (q_c [T, N, C], q_r [T, N, E], c_pages [L, P, Z, C], kr_pages [L, P, Z, E],
    page_table [R, M], query_start / query_len / kv_len [R]), max_q_len, and the float64 numpy expectation
    of layer `layer` for every layer (expected[l] [T, N, C]).
    """
    rng = np.random.default_rng(seed)
    R = len(seqs)
    kv_len = np.array([s[0] for s in seqs], np.int32)
    q_len = np.array([s[1] for s in seqs], np.int32)
    need = [-(-int(n) // Z) for n in kv_len]
    P = sum(need) + extra_pages
    perm = rng.permutation(P)
    c = np.full((L, P, Z, C), np.nan, np.float32)
    kr = np.full((L, P, Z, E), np.nan, np.float32)
    table = np.empty((R, M), np.int32)
    free_pages = perm[sum(need):]
    nxt = 0
    for r in range(R):
        # past a sequence's pages: -1, out of range, or a free (poisoned) page, by row
        table[r] = [-1, P + 1000, int(free_pages[0])][r % 3]
        for m in range(need[r]):
            page = perm[nxt]
            nxt += 1
            table[r, m] = page
            n = min(Z, int(kv_len[r]) - m * Z)  # the tail of the last page stays NaN
            c[:, page, :n] = rng.standard_normal((L, n, C))
            kr[:, page, :n] = rng.standard_normal((L, n, E))
    order = rng.permutation(R)
    start = np.zeros((R,), np.int32)
    off = 0
    for r in order:
        start[r] = off
        off += int(q_len[r])
    T = off + pad_tokens
    q_c = jnp.asarray(rng.standard_normal((T, N, C)), dtype)
    q_r = jnp.asarray(rng.standard_normal((T, N, E)), dtype)
    c_pages, kr_pages = jnp.asarray(c, dtype), jnp.asarray(kr, dtype)

    # float64 expectation from the dtype-rounded values
    f64 = lambda x: np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    qc64, qr64, c64, kr64 = f64(q_c), f64(q_r), f64(c_pages), f64(kr_pages)
    expected = np.zeros((L, T, N, C), np.float64)
    for lay in range(L):
        for r in range(R):
            if not q_len[r]:
                continue
            pages = table[r, :need[r]]
            c_S = np.concatenate([c64[lay, p] for p in pages])[:kv_len[r]]
            kr_S = np.concatenate([kr64[lay, p] for p in pages])[:kv_len[r]]
            for i in range(int(q_len[r])):
                t, pos = start[r] + i, int(kv_len[r] - q_len[r] + i)
                s_NS = SCALE * (qc64[t] @ c_S[:pos + 1].T + qr64[t] @ kr_S[:pos + 1].T)
                w_NS = np.exp(s_NS - s_NS.max(axis=1, keepdims=True))
                expected[lay, t] = (w_NS / w_NS.sum(axis=1, keepdims=True)) @ c_S[:pos + 1]
    return dict(q_c=q_c, q_r=q_r, c_pages=c_pages, kr_pages=kr_pages, page_table=jnp.asarray(table),
                query_start=jnp.asarray(start), query_len=jnp.asarray(q_len), kv_len=jnp.asarray(kv_len),
                max_q_len=int(max(1, q_len.max())), expected=expected)


def _decode_case(lengths, **kw):
    """One query per sequence (a length-0 sequence is padding: query_len 0)."""
    return _mla_case([(n, int(n > 0)) for n in lengths], pad_tokens=0, **kw)


def _reference(case, layer=0):
    return mla_ragged_paged_attention_reference(
        case["q_c"], case["q_r"], case["c_pages"], case["kr_pages"], case["page_table"], case["query_start"],
        case["query_len"], case["kv_len"], max_q_len=case["max_q_len"], scale=SCALE, layer=layer)


def _kernel(kind, case, **kw):
    """Run a decode kernel on the case's rows (in sequence order); returns [T, N, C] laid out like the reference."""
    fn = mla_paged_decode_attention_gpu if kind == "gpu" else mla_paged_decode_attention_tpu
    start = case["query_start"]
    T = case["q_c"].shape[0]
    rows = jnp.clip(start, 0, T - 1)
    lengths = jnp.where(case["query_len"] > 0, case["kv_len"], 0)
    out_RNC = fn(case["q_c"][rows], case["q_r"][rows], case["c_pages"], case["kr_pages"], case["page_table"],
                 lengths, scale=SCALE, interpret=True, **kw)
    dest = jnp.where(case["query_len"] > 0, start, T)
    return out_RNC, jnp.zeros_like(case["q_c"]).at[dest].set(out_RNC, mode="drop")


def test_case_is_hostile_and_reference_matches_float64():
    Z = 4
    case = _mla_case([(n, min(n, 2)) for n in _lengths(Z)] + [(0, 0)], N=4, C=16, E=8, Z=Z, L=2, seed=1)
    table, kv = np.asarray(case["page_table"]), np.asarray(case["kv_len"])
    c = np.asarray(case["c_pages"])
    owned = np.concatenate([table[r, :-(-n // Z)] for r, n in enumerate(kv)])
    assert len(set(owned.tolist())) == len(owned) and not np.array_equal(owned, np.sort(owned))  # shuffled
    assert np.isnan(c[:, np.setdiff1d(np.arange(c.shape[1]), owned)]).all()  # free pages poisoned
    assert np.isnan(c[:, table[3, 2], 3:]).all()  # tail of the 2Z+3 sequence's last page poisoned
    assert {-1, c.shape[1] + 1000} <= set(table[:, -1].tolist())  # past-the-end entries: -1 and out of range
    for layer in (0, 1):
        ref = _reference(case, layer)
        assert rel_err(ref, case["expected"][layer]) <= 1e-5, layer


@pytest.mark.parametrize("Z,N,extra", [
    (4, 12, dict(block_k=16, num_splits=2)),  # 4 pages per block, heads padded 12 -> 16
    (8, 20, dict()),  # default block (4 pages, M = 5 not a multiple: masked table load), 2 head blocks
    (16, 4, dict(block_k=16, num_splits=3)),  # one page per block, more splits than some rows need
])
def test_gpu_kernel_equals_reference(Z, N, extra):
    case = _decode_case(_lengths(Z), N=N, C=64, E=16, Z=Z, L=2, seed=Z)
    out_RNC, got = _kernel("gpu", case, layer=1, **extra)
    np.testing.assert_array_equal(np.asarray(out_RNC[0]), 0.0)  # length 0: zeros, not NaN
    assert rel_err(got, _reference(case, layer=1)) <= 1e-5
    assert rel_err(got, case["expected"][1]) <= 1e-5


@pytest.mark.parametrize("Z,extra", [
    (8, dict(block_k=16, num_splits=2)),  # 2 pages stacked per grid step, 2 splits
    (4, dict()),  # Z not sublane-aligned: one page per step
    (8, dict(num_splits=None)),  # default: all M = 5 pages in one step
])
def test_tpu_kernel_equals_reference(Z, extra):
    case = _decode_case(_lengths(Z), N=6, C=128, E=32, Z=Z, L=2, seed=10 + Z)
    out_RNC, got = _kernel("tpu", case, layer=1, **extra)
    np.testing.assert_array_equal(np.asarray(out_RNC[0]), 0.0)
    assert rel_err(got, _reference(case, layer=1)) <= 1e-5
    assert rel_err(got, case["expected"][1]) <= 1e-5


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_bf16(kind):
    Z = 16  # a bf16 sublane tile: the TPU kernel stacks pages
    case = _decode_case([0, 1, Z, 2 * Z + 3, 4 * Z + 5], N=16, C=64, E=16, Z=Z, dtype=jnp.bfloat16, seed=21)
    out_RNC, got = _kernel(kind, case, num_splits=2)
    assert out_RNC.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out_RNC[0], np.float32), 0.0)
    assert rel_err(got, _reference(case)) <= TOLERANCE[jnp.bfloat16]
    assert rel_err(got, case["expected"][0]) <= TOLERANCE[jnp.bfloat16]


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_traced_layer_in_multi_layer_pool(kind):
    Z = 8
    case = _decode_case([3, 2 * Z + 1, M * Z], N=8, C=32, E=16, Z=Z, L=3, seed=31)
    run = jax.jit(lambda layer: _kernel(kind, case, layer=layer)[1])
    outs = []
    for layer in (2, 0):
        got = run(jnp.int32(layer))
        assert rel_err(got, _reference(case, layer)) <= 1e-5, layer
        assert rel_err(got, case["expected"][layer]) <= 1e-5, layer
        outs.append(np.asarray(got))
    assert not np.allclose(outs[0], outs[1])  # the layer really selects different pages' contents


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_dispatch_decode_step_with_padding(platform):
    Z = 8
    # a padding sequence (0, 0), a sequence with keys but no query this step, and padding rows at the end
    seqs = [(2 * Z + 3, 1), (0, 0), (1, 1), (Z + 2, 0), (M * Z, 1), (Z, 1)]
    case = _mla_case(seqs, N=8, C=64, E=16, Z=Z, L=2, pad_tokens=3, seed=41)
    got = mla_ragged_paged_attention(
        case["q_c"], case["q_r"], case["c_pages"], case["kr_pages"], case["page_table"], case["query_start"],
        case["query_len"], case["kv_len"], max_q_len=1, scale=SCALE, layer=jnp.int32(1), platform=platform,
        interpret=True)
    assert got.shape == case["q_c"].shape and got.dtype == case["q_c"].dtype
    np.testing.assert_array_equal(np.asarray(got[-3:]), 0.0)  # padding rows
    assert rel_err(got, _reference(case, layer=1)) <= 1e-5
    assert rel_err(got, case["expected"][1]) <= 1e-5


def test_dispatch_multi_token_step_runs_the_reference():
    Z = 4
    seqs = [(9, 3), (12, 4), (0, 0), (5, 1)]  # only the first prefill_rows = 2 sequences have several queries
    case = _mla_case(seqs, N=4, C=16, E=8, Z=Z, seed=51)
    got = mla_ragged_paged_attention(
        case["q_c"], case["q_r"], case["c_pages"], case["kr_pages"], case["page_table"], case["query_start"],
        case["query_len"], case["kv_len"], max_q_len=case["max_q_len"], scale=SCALE, prefill_rows=2)
    assert rel_err(got, case["expected"][0]) <= 1e-5


def test_shape_errors_name_the_dimension():
    q_c, q_r = jnp.zeros((2, 4, 48)), jnp.zeros((2, 4, 16))
    c, kr = jnp.zeros((1, 3, 4, 48)), jnp.zeros((1, 3, 4, 16))
    tab, lens = jnp.zeros((2, 2), jnp.int32), jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match="C"):
        mla_paged_decode_attention_gpu(q_c, q_r, c, kr, tab, lens, scale=1.0, interpret=True)
    with pytest.raises(ValueError, match="E"):
        mla_paged_decode_attention_tpu(q_c, q_r[..., :8], c, kr, tab, lens, scale=1.0, interpret=True)
