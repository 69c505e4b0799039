"""The ragged paged reference equals independent dense attention on random mixes of sequences.

Two independent checks per case: a float64 numpy computation per sequence (built in
pallas_kernels/testing.py before the data is paged) and the dense masked attention the
uncached `forward` uses (layers/attention/dense.py) over each sequence's contiguous keys.
Pages are shuffled, free slots and table entries past a sequence's pages are poisoned
(NaN data, -1 entries), sequences sit in a shuffled order in the flat batch with padding rows.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.attention.dense import attend
from pallas_kernels.attention.ragged_reference import ragged_paged_attention_reference
from pallas_kernels.testing import make_ragged_case, rel_err

Z = 16
# (kv_len, query_len): a padding sequence, decode rows at the page edges, full prefills,
# chunks continuing a cached prefix, and k+1 = 4 verify runs.
MIXES = {
    "edges": [(0, 0), (1, 1), (Z - 1, 1), (Z, 1), (Z + 1, 1), (Z - 1, Z - 1), (Z, Z), (Z + 1, Z + 1)],
    "mixed": [(37, 1), (20, 20), (45, 13), (30, 4), (1, 1), (0, 0), (64, 4)],
    "long_prefill": [(3 * Z + 5, 3 * Z + 5), (9, 1)],
}


# Jitted (the engine runs it under jit too): eagerly, every op of the reference compiled on its own per shape,
# which was most of this module's time (the slowest case 48 s in CI).
_reference = jax.jit(ragged_paged_attention_reference,
                     static_argnames=("max_q_len", "sliding_window", "softcap", "q_chunk", "prefill_rows", "scale"))
_attend = jax.jit(attend, static_argnames=("sliding_window", "softcap", "scale"))


def _run(case, **kw):
    return _reference(
        case["q"], case["k_pages"], case["v_pages"], case["page_table"], case["query_start"], case["query_len"],
        case["kv_len"], max_q_len=case["max_q_len"], layer=case["layer"], k_scale=case["k_scale"],
        v_scale=case["v_scale"], **kw)


def _dense(case, sliding_window=None, softcap=None):
    """Per sequence: gather its keys contiguously (numpy), then the dense masked attention, all sequences in one
    padded batch (as the uncached `forward` runs it: keys past kv_len and queries past query_len are padding)."""
    q = np.asarray(case["q"].astype(jnp.float32))
    T, N, H = q.shape
    lay = case["layer"]
    kp = np.asarray(case["k_pages"].astype(jnp.float32))[lay]
    vp = np.asarray(case["v_pages"].astype(jnp.float32))[lay]
    if case["k_scale"] is not None:
        kp = kp * np.asarray(case["k_scale"])[lay][..., None]
        vp = vp * np.asarray(case["v_scale"])[lay][..., None]
    K = kp.shape[1]
    kv_len, q_len = np.asarray(case["kv_len"]), np.asarray(case["query_len"])
    q_start = np.asarray(case["query_start"])
    rows = [r for r in range(len(kv_len)) if q_len[r] > 0]
    B, Tm, S = len(rows), int(q_len.max()), int(kv_len.max())
    qb = np.zeros((B, Tm, N, H), np.float32)
    kb = np.full((B, K, S, H), np.nan, np.float32)  # padding keys are NaN: the mask must keep them out
    vb = np.full((B, K, S, H), np.nan, np.float32)
    pos = np.zeros((B, Tm), np.int32)
    for b, r in enumerate(rows):
        n, m, s = int(kv_len[r]), int(q_len[r]), int(q_start[r])
        pages = np.asarray(case["page_table"][r, :-(-n // Z)])
        kb[b, :, :n] = np.concatenate([kp[p] for p in pages], axis=1)[:, :n]  # [K, n, H]
        vb[b, :, :n] = np.concatenate([vp[p] for p in pages], axis=1)[:, :n]
        qb[b, :m] = q[s:s + m]
        pos[b] = n - m + np.arange(Tm)  # rows past m are padding queries, dropped below
    vb = np.where(np.isnan(vb), 0.0, vb)  # p = 0 on masked keys, but 0 * NaN would still poison p @ v
    o = np.asarray(_attend(jnp.asarray(qb), jnp.asarray(kb), jnp.asarray(vb), jnp.asarray(pos),
                           jnp.asarray(kv_len[rows]), sliding_window=sliding_window, softcap=softcap))
    out = np.zeros((T, N, H), np.float32)
    for b, r in enumerate(rows):
        m, s = int(q_len[r]), int(q_start[r])
        out[s:s + m] = o[b, :m]
    return out


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("G", [1, 3, 5])
def test_reference_equals_numpy_and_dense(mix, G):
    case = make_ragged_case(MIXES[mix], K=2, G=G, H=32, Z=Z, L=2, seed=G)
    out = _run(case)
    assert rel_err(out, case["expected"]) <= 1e-5
    if G == 3:  # the dense path compiles per sequence shape: one group size is enough for the second check
        assert rel_err(out, _dense(case)) <= 1e-5
    T_real = int(np.asarray(case["query_len"]).sum())
    np.testing.assert_array_equal(np.asarray(out[T_real:]), 0.0)  # padding rows are zeros (and not NaN)


@pytest.mark.parametrize("kw", [dict(sliding_window=7), dict(softcap=3.0), dict(sliding_window=Z, softcap=30.0)])
def test_window_and_softcap(kw):
    case = make_ragged_case(MIXES["mixed"], K=2, G=2, H=32, Z=Z, seed=11, **kw)
    out = _run(case, **kw)
    assert rel_err(out, case["expected"]) <= 1e-5
    assert rel_err(out, _dense(case, **kw)) <= 1e-5


def test_int8_pages_and_bf16():
    case = make_ragged_case(MIXES["mixed"], K=2, G=3, H=32, Z=Z, int8=True, seed=3)
    assert rel_err(_run(case), case["expected"]) <= 1e-5
    case = make_ragged_case(MIXES["mixed"], K=2, G=3, H=32, Z=Z, dtype=jnp.bfloat16, seed=4)
    out = _run(case)
    assert out.dtype == jnp.bfloat16 and rel_err(out, case["expected"]) <= 2e-2


def test_query_chunking_and_traced_layer_change_nothing():
    case = make_ragged_case(MIXES["long_prefill"], K=2, G=2, H=32, Z=Z, L=3, seed=5)
    whole = _run(case)
    chunked = _run(case, q_chunk=8)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-6, atol=1e-6)
    fn = jax.jit(lambda layer: ragged_paged_attention_reference(
        case["q"], case["k_pages"], case["v_pages"], case["page_table"], case["query_start"], case["query_len"],
        case["kv_len"], max_q_len=case["max_q_len"], layer=layer))
    np.testing.assert_allclose(np.asarray(fn(jnp.int32(case["layer"]))), np.asarray(whole), rtol=1e-6, atol=1e-6)
    assert rel_err(fn(jnp.int32(0)), whole) > 1e-2  # another layer's pages give another answer


@pytest.mark.parametrize("prefill_rows", [0, 1, 3])
def test_prefill_rows_split_equals_numpy(prefill_rows):
    """Multi-token sequences first, single queries after: the split path pads only the first rows."""
    heads = [(45, 13), (20, 20), (3 * Z + 5, 3 * Z + 5)][:prefill_rows]
    tails = [(37, 1), (1, 1), (0, 0), (Z, 1), (Z + 1, 1)]
    case = make_ragged_case(heads + tails, K=2, G=2, H=32, Z=Z, L=2, seed=20 + prefill_rows)
    out = _run(case, prefill_rows=prefill_rows)
    assert rel_err(out, case["expected"]) <= 1e-5
    np.testing.assert_array_equal(np.asarray(out[int(np.asarray(case["query_len"]).sum()):]), 0.0)
