"""The expert projections of a mixture-of-experts decode step as the model computes them (the expert GEMV
kernel's twin and contract; layers/moe.py's gathered path).

A = T·k assignments (a token row, a picked expert), a stacked weight W [E, K, N]:

    y_AN[a] = (x_MK[row_A[a]].astype(W.dtype) @ W_EKN[ids_A[a]]).astype(out_dtype)     float32 accumulation
    with W2 (the experts' up beside their gate):  y_AN = silu(x W) * (x W2), each product rounded first
"""
import jax
import jax.numpy as jnp


def expert_gemv_reference(x_MK, w_EKN, ids_A, rows_A, w2_EKN=None, out_dtype=None):
    """y [A, N] (see the module docstring): the picked experts' weights gathered, one product per assignment."""
    dt = jnp.dtype(out_dtype or w_EKN.dtype)
    x_AK = x_MK[rows_A].astype(w_EKN.dtype)
    prec = jax.lax.Precision.HIGHEST if w_EKN.dtype == jnp.float32 else None
    mm = lambda w: jnp.einsum("ak,akn->an", x_AK, w[ids_A], precision=prec,
                              preferred_element_type=jnp.float32).astype(dt)
    if w2_EKN is None:
        return mm(w_EKN)
    return jax.nn.silu(mm(w_EKN)) * mm(w2_EKN)
