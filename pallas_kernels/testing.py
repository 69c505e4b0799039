"""Random decode-attention cases for the kernel tests and the benchmark (numpy-built, independent of the kernels).

Cache slots past a row's length hold NaN (float caches) or NaN scales (int8),
the way a recycled buffer may hold anything: a kernel that reads or weights a
stale slot turns the output into NaN and fails the comparison.
"""
import numpy as np
import jax.numpy as jnp

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-3}


def quantize_int8(x):
    """Symmetric per-token, per-head int8 over the last axis: (int8 values, float32 scales)."""
    scale = np.abs(x).max(axis=-1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(x / scale[..., None]), -127, 127).astype(np.int8)
    return q, scale


def make_case(B, K, G, S, H, lengths, *, L=1, dtype=jnp.float32, int8=False, seed=0):
    """q [B, K*G, H]; k/v [L, B, K, S, H] (+ scales [L, B, K, S] when int8); stale slots poisoned."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, np.int32)
    if lengths.shape != (B,):
        raise ValueError(f"lengths: need shape ({B},), got {lengths.shape}")
    q = rng.standard_normal((B, K * G, H)).astype(np.float32)
    k = rng.standard_normal((L, B, K, S, H)).astype(np.float32)
    v = rng.standard_normal((L, B, K, S, H)).astype(np.float32)
    stale = np.arange(S)[None, None, None, :] >= lengths[None, :, None, None]  # [1, B, 1, S]
    case = {"q": jnp.asarray(q, dtype), "lengths": jnp.asarray(lengths)}
    if int8:
        kq, ks = quantize_int8(k)
        vq, vs = quantize_int8(v)
        ks = np.where(stale, np.nan, ks).astype(np.float32)
        vs = np.where(stale, np.nan, vs).astype(np.float32)
        case.update(k=jnp.asarray(kq), v=jnp.asarray(vq), k_scale=jnp.asarray(ks), v_scale=jnp.asarray(vs))
    else:
        k = np.where(stale[..., None], np.nan, k)
        v = np.where(stale[..., None], np.nan, v)
        case.update(k=jnp.asarray(k, dtype), v=jnp.asarray(v, dtype), k_scale=None, v_scale=None)
    return case


def to_pages(case, Z, *, num_pages=None, seed=0):
    """Scatter a contiguous case's [L, B, K, S, H] cache into a shuffled pool [L, P, K, Z, H] + tables [B, M].

    Pages a row does not need are left out of its table (entry -1) and unused
    pool pages are poisoned (NaN, or NaN scales for int8).
    """
    rng = np.random.default_rng(seed)
    k = np.asarray(case["k"]) if case["k"].dtype == jnp.int8 else np.asarray(case["k"].astype(jnp.float32))
    v = np.asarray(case["v"]) if case["v"].dtype == jnp.int8 else np.asarray(case["v"].astype(jnp.float32))
    L, B, K, S, H = k.shape
    if S % Z:
        raise ValueError(f"to_pages: S={S} is not a multiple of the page size Z={Z}")
    M = S // Z
    lengths = np.asarray(case["lengths"])
    need = [-(-int(n) // Z) for n in lengths]
    P = num_pages or sum(need) + 3
    perm = rng.permutation(P)
    tables = -np.ones((B, M), np.int32)
    poison = np.nan if k.dtype != np.int8 else 0
    kp = np.full((L, P, K, Z, H), poison, k.dtype)
    vp = np.full((L, P, K, Z, H), poison, v.dtype)
    out = {"q": case["q"], "lengths": case["lengths"]}
    scales = case["k_scale"] is not None
    if scales:
        ksp = np.full((L, P, K, Z), np.nan, np.float32)
        vsp = np.full((L, P, K, Z), np.nan, np.float32)
    nxt = 0
    for b in range(B):
        for m in range(need[b]):
            p = perm[nxt]
            nxt += 1
            tables[b, m] = p
            kp[:, p] = k[:, b, :, m * Z:(m + 1) * Z]
            vp[:, p] = v[:, b, :, m * Z:(m + 1) * Z]
            if scales:
                ksp[:, p] = np.asarray(case["k_scale"])[:, b, :, m * Z:(m + 1) * Z]
                vsp[:, p] = np.asarray(case["v_scale"])[:, b, :, m * Z:(m + 1) * Z]
    dt = case["k"].dtype
    out.update(k_pages=jnp.asarray(kp, dt), v_pages=jnp.asarray(vp, dt), block_tables=jnp.asarray(tables),
               k_scale=jnp.asarray(ksp) if scales else None, v_scale=jnp.asarray(vsp) if scales else None)
    return out


def rel_err(got, ref):
    """max |got - ref| / max |ref| in float32 (NaN anywhere gives inf)."""
    got = np.asarray(jnp.asarray(got, jnp.float32))
    ref = np.asarray(jnp.asarray(ref, jnp.float32))
    if np.isnan(got).any() or np.isnan(ref).any():
        return float("inf")
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def make_ragged_case(seqs, *, K, G, H, Z, L=1, dtype=jnp.float32, int8=False, sliding_window=None, softcap=None,
                     extra_pages=3, pad_tokens=3, M=None, seed=0):
    """A random ragged paged-attention step and its expected output, computed per sequence in float64 numpy.

    seqs: [(kv_len, query_len), ...], one per sequence (query_len <= kv_len; (0, 0) is a padding
    sequence). Pages are shuffled through a pool of sum(pages) + extra_pages pages; every slot no
    sequence owns (free pages, the tail of a last page) is poisoned with NaN (NaN scales for int8).
    Sequences are laid out in the flat query batch in a shuffled order with `pad_tokens` padding rows
    at the end; table entries past a sequence's pages are -1.

    Returns a dict: q [T, N, H], k_pages / v_pages [L, P, K, Z, H], k_scale / v_scale [L, P, K, Z] or
    None, page_table [R, M], query_start / query_len / kv_len [R], max_q_len, layer (L - 1), and
    expected [T, N, H] float32 (zeros on padding rows).
    """
    rng = np.random.default_rng(seed)
    R = len(seqs)
    kv_len = np.array([s[0] for s in seqs], np.int32)
    q_len = np.array([s[1] for s in seqs], np.int32)
    if (q_len > kv_len).any():
        raise ValueError(f"seqs: query_len must be <= kv_len, got {seqs}")
    N = K * G
    need = [-(-int(n) // Z) for n in kv_len]
    M = M or max(1, max(need))
    P = sum(need) + extra_pages
    perm = rng.permutation(P)
    table = -np.ones((R, M), np.int32)
    k_seq = [rng.standard_normal((L, K, int(n), H)).astype(np.float32) for n in kv_len]
    v_seq = [rng.standard_normal((L, K, int(n), H)).astype(np.float32) for n in kv_len]
    kp = np.full((L, P, K, Z, H), np.nan, np.float32)
    vp = np.full((L, P, K, Z, H), np.nan, np.float32)
    nxt = 0
    for r in range(R):
        for m in range(need[r]):
            page = perm[nxt]
            nxt += 1
            table[r, m] = page
            n = min(Z, int(kv_len[r]) - m * Z)
            kp[:, page, :, :n] = k_seq[r][:, :, m * Z:m * Z + n]
            vp[:, page, :, :n] = v_seq[r][:, :, m * Z:m * Z + n]
    case = {"page_table": jnp.asarray(table), "kv_len": jnp.asarray(kv_len), "query_len": jnp.asarray(q_len),
            "max_q_len": int(max(1, q_len.max())), "layer": L - 1}
    if int8:
        kq, ks = quantize_int8(np.nan_to_num(kp))
        vq, vs = quantize_int8(np.nan_to_num(vp))
        poisoned = np.isnan(kp[..., 0])
        ks[poisoned] = np.nan
        vs[poisoned] = np.nan
        k_deq, v_deq = kq.astype(np.float64) * ks[..., None], vq.astype(np.float64) * vs[..., None]
        case.update(k_pages=jnp.asarray(kq), v_pages=jnp.asarray(vq), k_scale=jnp.asarray(ks),
                    v_scale=jnp.asarray(vs))
    else:
        kp_dt, vp_dt = jnp.asarray(kp, dtype), jnp.asarray(vp, dtype)
        k_deq, v_deq = np.asarray(kp_dt.astype(jnp.float32), np.float64), np.asarray(vp_dt.astype(jnp.float32),
                                                                                        np.float64)
        case.update(k_pages=kp_dt, v_pages=vp_dt, k_scale=None, v_scale=None)

    order = rng.permutation(R)
    T = int(q_len.sum()) + pad_tokens
    start = np.zeros((R,), np.int32)
    off = 0
    for r in order:
        start[r] = off
        off += int(q_len[r])
    q = jnp.asarray(rng.standard_normal((T, N, H)).astype(np.float32), dtype)
    q64 = np.asarray(q.astype(jnp.float32), np.float64)
    expected = np.zeros((T, N, H), np.float64)
    lay = L - 1
    for r in range(R):
        pages = table[r, :need[r]]
        k_r = np.concatenate([k_deq[lay, p] for p in pages], axis=1)[:, :kv_len[r]] if need[r] else None
        v_r = np.concatenate([v_deq[lay, p] for p in pages], axis=1)[:, :kv_len[r]] if need[r] else None
        for i in range(int(q_len[r])):
            pos = int(kv_len[r] - q_len[r] + i)
            lo = 0 if sliding_window is None else max(0, pos - sliding_window + 1)
            for n in range(N):
                kh = n // G
                s = k_r[kh, lo:pos + 1] @ q64[start[r] + i, n] / np.sqrt(H)
                if softcap is not None:
                    s = softcap * np.tanh(s / softcap)
                w = np.exp(s - s.max())
                expected[start[r] + i, n] = (w / w.sum()) @ v_r[kh, lo:pos + 1]
    case.update(q=q, query_start=jnp.asarray(start), expected=expected.astype(np.float32))
    return case
