"""RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in float32."""
import flax.linen as nn
import jax.numpy as jnp

from layers import axes


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype
    axis_name: str = axes.EMBED

    @nn.compact
    def __call__(self, x):
        w = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), self.dtype)
        xf = x.astype(jnp.float32)
        xf = xf * jnp.reciprocal(jnp.sqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps))
        # Matches the Hugging Face Llama order: normalise in f32, cast, then scale.
        return w * xf.astype(self.dtype)
