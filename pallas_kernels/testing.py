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
