"""The per-block math shared by every decode kernel (backend-neutral jnp code).

A kernel walks one KV head's keys in blocks of T_blk positions for the G query
heads that share it (packed as rows of one tile, padded to Gp). It carries the
flash-attention running state per query row:

    m [Gp, 1]  running max of the scaled (and soft-capped) logits, -inf before any key
    l [Gp, 1]  running sum of exp(logit - m)
    acc [Gp, H] running sum of exp(logit - m) * v, float32, not yet divided by l

Callers only hand in blocks that hold at least one visible key, so m is finite
after the first block and no exp(-inf - -inf) appears. Only ops that both the
Triton and the Mosaic TPU lowerings accept are used here (2-D shapes,
dot_general with float32 accumulation, where/exp/max/sum).
"""
import jax
import jax.numpy as jnp


def init_state(Gp: int, H: int):
    m = jnp.full((Gp, 1), -jnp.inf, jnp.float32)
    l = jnp.zeros((Gp, 1), jnp.float32)
    acc = jnp.zeros((Gp, H), jnp.float32)
    return m, l, acc


def dequantize(x_TH, scale_T1, compute_dtype):
    """int8 block [T, H] * per-token scale [T, 1] -> compute dtype (a no-op cast for float caches)."""
    if scale_T1 is None:
        return x_TH.astype(compute_dtype)
    return (x_TH.astype(jnp.float32) * scale_T1.astype(jnp.float32)).astype(compute_dtype)


def _dot(a, b, contract_b: int):
    prec = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), precision=prec,
                               preferred_element_type=jnp.float32)


def online_softmax_step(q_GH, k_TH, v_TH, valid_1T, valid_T1, state, *, sm_scale: float, softcap=None):
    """Fold one block of keys/values into the running (m, l, acc).

    q_GH, k_TH, v_TH share the compute dtype (bf16/f16/f32); valid_1T / valid_T1
    are the same visibility mask as a row and as a column. Masked values are
    zeroed so stale or uninitialised cache slots (even NaN) never leak in.
    """
    m, l, acc = state
    s_GT = _dot(q_GH, k_TH, 1) * sm_scale
    if softcap is not None:
        s_GT = softcap * jnp.tanh(s_GT / softcap)
    s_GT = jnp.where(valid_1T, s_GT, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s_GT, axis=1, keepdims=True))
    p_GT = jnp.exp(s_GT - m_new)
    alpha = jnp.exp(m - m_new)
    l_new = alpha * l + jnp.sum(p_GT, axis=1, keepdims=True)
    v_TH = jnp.where(valid_T1, v_TH, jnp.zeros_like(v_TH))
    acc_new = alpha * acc + _dot(p_GT.astype(v_TH.dtype), v_TH, 0)
    return m_new, l_new, acc_new
