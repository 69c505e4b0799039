"""RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in float32.

With `residual` it also adds the residual first and returns both, (h = x + residual, RMSNorm(h)): on a GPU one
kernel instead of XLA's three (pallas_kernels/norm/), elsewhere the same math in XLA.

With `residual` and `defer=True` it computes nothing and returns a PreNorm (x, residual, its scale, eps): the
projection that consumes it runs the add + RMSNorm inside its own kernel (a GPU decode step's q|k|v and gate|up,
layers/linear.py), or calls PreNorm.compute() first where it cannot.
"""
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from layers import axes
from pallas_kernels.norm.add_rms_norm_reference import rms_norm_reference
from pallas_kernels.norm.dispatch import add_rms_norm


class PreNorm(NamedTuple):
    """An add + RMSNorm not yet computed: h = x + residual, RMSNorm(h) * scale."""

    x: object
    residual: object
    scale: object
    eps: float

    def compute(self):
        """(h, RMSNorm(h) * scale), as RMSNorm(...)(x, residual) computes them."""
        return add_rms_norm(self.x, self.residual, self.scale, self.eps)


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype
    axis_name: str = axes.EMBED

    @nn.compact
    def __call__(self, x, residual=None, defer: bool = False):
        w = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), self.dtype)
        if residual is not None:
            pre = PreNorm(x, residual, w, self.eps)
            return pre if defer else pre.compute()
        # Matches the Hugging Face Llama order: normalise in f32, cast, then scale.
        return rms_norm_reference(x, w, self.eps)
