"""The residual add and the RMSNorm after it, as the model computes them (the kernels' twin and contract).

    h_MD = x_MD + delta_MD                                   (in x's dtype: the residual stream)
    y_MD = w_D * (h / sqrt(mean(h^2) + eps)).astype(dtype)   (normalized in float32, cast, then scaled,
                                                              Hugging Face Llama's order)
"""
import jax.numpy as jnp


def rms_norm_reference(h_MD, w_D, eps: float):
    """RMSNorm of h over its last axis in float32, cast to w's dtype, then scaled by w."""
    hf = h_MD.astype(jnp.float32)
    hf = hf * jnp.reciprocal(jnp.sqrt(jnp.mean(hf * hf, axis=-1, keepdims=True) + eps))
    return w_D * hf.astype(w_D.dtype)


def add_rms_norm_reference(x_MD, delta_MD, w_D, eps: float):
    """(h = x + delta, RMSNorm(h) * w)."""
    h_MD = x_MD + delta_MD
    return h_MD, rms_norm_reference(h_MD, w_D, eps)
