"""RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in float32.

With `residual` it also adds the residual first and returns both, (h = x + residual, RMSNorm(h)): on a GPU one
kernel instead of XLA's three (pallas_kernels/norm/), elsewhere the same math in XLA.
"""
import flax.linen as nn
import jax.numpy as jnp

from layers import axes
from pallas_kernels.norm.add_rms_norm_reference import rms_norm_reference
from pallas_kernels.norm.dispatch import add_rms_norm


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype
    axis_name: str = axes.EMBED

    @nn.compact
    def __call__(self, x, residual=None):
        w = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), self.dtype)
        if residual is not None:
            return add_rms_norm(x, residual, w, self.eps)
        # Matches the Hugging Face Llama order: normalise in f32, cast, then scale.
        return rms_norm_reference(x, w, self.eps)
