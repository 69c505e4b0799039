"""The per-block math of the absorbed-MLA decode kernels (backend-neutral jnp code, shared by mla_gpu / mla_tpu).

Absorbed MLA decode is multi-query attention: every head n of a sequence attends
over the same keys [c, k_r] (C + E wide) with the same values c (C wide), so a
program holds its heads as the rows of one tile and walks the latent in blocks
of T keys, reading each block of c ONCE for both matmuls:

    s_NT = scale * (q_c_NC . c_TC^T + q_r_NE . kr_TE^T)     logits, float32 accumulation
    acc_NC += softmax-weights_NT . c_TC                      the value is the key's first C dims

C and E stay separate operands (two dots summed) instead of one concatenated
C + E key, because 576 = 512 + 64 is no Triton tile size and the concatenation
would be a copy. Running state per head row is block_math's:

    m [N, 1]  running max of the logits, -inf before any key
    l [N, 1]  running sum of exp(logit - m)
    acc [N, C] running sum of exp(logit - m) * c, float32, not yet divided by l

Callers only hand in blocks holding at least one visible key, and every head of
the tile sees the same keys (one query token per sequence), so m is finite after
the first block and no exp(-inf - -inf) appears. Only 2-D ops that both the
Triton and the Mosaic TPU lowerings accept are used.

`stack_latent_pools` and `compute_dtype` are the argument checks both kernel wrappers share.
"""
import jax
import jax.numpy as jnp

from pallas_kernels.attention import layout
from pallas_kernels.attention.decode_reference import as_layer_stacked


def _dot(a, b, contract_b: int):
    prec = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), precision=prec,
                               preferred_element_type=jnp.float32)


def init_state(Np: int, C: int):
    m = jnp.full((Np, 1), -jnp.inf, jnp.float32)
    l = jnp.zeros((Np, 1), jnp.float32)
    acc = jnp.zeros((Np, C), jnp.float32)
    return m, l, acc


def latent_softmax_step(q_c_NC, q_r_NE, c_TC, kr_TE, valid_1T, valid_T1, state, *, scale: float):
    """Fold one block of T latent keys into the running (m, l, acc).

    q_c_NC, q_r_NE, c_TC, kr_TE share the compute dtype; valid_1T / valid_T1 are
    the same visibility mask as a row and as a column. Invisible slots (stale,
    poisoned with NaN, or a page read in place of a table entry that is not the
    sequence's) are zeroed in c before either dot and their logits set to -inf,
    so nothing of them reaches m, l or acc.
    """
    m, l, acc = state
    c_TC = jnp.where(valid_T1, c_TC, jnp.zeros_like(c_TC))
    s_NT = (_dot(q_c_NC, c_TC, 1) + _dot(q_r_NE, kr_TE, 1)) * scale
    s_NT = jnp.where(valid_1T, s_NT, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s_NT, axis=1, keepdims=True))
    p_NT = jnp.exp(s_NT - m_new)
    alpha = jnp.exp(m - m_new)
    l_new = alpha * l + jnp.sum(p_NT, axis=1, keepdims=True)
    acc_new = alpha * acc + _dot(p_NT.astype(c_TC.dtype), c_TC, 0)
    return m_new, l_new, acc_new


# ---------------------------------------------------------------- argument checks shared by both kernels
def stack_latent_pools(q_c_RNC, q_r_RNE, c_pages, kr_pages, page_table_RM, lengths_R, name: str):
    """Layer-stack the pools (rank 3 -> 4, a free reshape) and check every shape; returns (c_LPZC, kr_LPZE)."""
    c = as_layer_stacked(c_pages, 3)
    kr = as_layer_stacked(kr_pages, 3)
    if c.ndim != 4 or kr.ndim != 4 or c.shape[:3] != kr.shape[:3]:
        raise ValueError(f"{name}: c_pages [L, P, Z, C] and kr_pages [L, P, Z, E] (or without L) must agree on "
                         f"L, P, Z, got {c_pages.shape} and {kr_pages.shape}")
    if q_c_RNC.ndim != 3 or q_r_RNE.ndim != 3 or q_c_RNC.shape[:2] != q_r_RNE.shape[:2]:
        raise ValueError(f"{name}: q_c [R, N, C] and q_r [R, N, E] must agree on R, N, got {q_c_RNC.shape} and "
                         f"{q_r_RNE.shape}")
    if q_c_RNC.shape[2] != c.shape[3]:
        raise ValueError(f"{name}: q_c width C={q_c_RNC.shape[2]} does not match c_pages' C={c.shape[3]}")
    if q_r_RNE.shape[2] != kr.shape[3]:
        raise ValueError(f"{name}: q_r width E={q_r_RNE.shape[2]} does not match kr_pages' E={kr.shape[3]}")
    R = q_c_RNC.shape[0]
    if page_table_RM.ndim != 2 or page_table_RM.shape[0] != R:
        raise ValueError(f"{name}: page_table_RM must be [R={R}, M], got shape {page_table_RM.shape}")
    if lengths_R.shape != (R,):
        raise ValueError(f"{name}: lengths_R must have shape ({R},), got {lengths_R.shape}")
    for x, what in ((c, "c_pages"), (kr, "kr_pages"), (q_r_RNE, "q_r")):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name}: {what} must be a float array, got {x.dtype}")
    layout.compute_dtype(q_c_RNC.dtype)  # raises for unsupported dtypes
    return c, kr


def compute_dtype(q_c_dtype, c_dtype):
    """The dtype both dots run in: q_c's and the pool's promoted, as the reference does."""
    return layout.compute_dtype(jnp.promote_types(q_c_dtype, c_dtype))
