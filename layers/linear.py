"""The projection seam: every weight matmul in the model goes through `Linear`.

A quantized variant (int8 per-channel, int4 group-wise) replaces this module
by keeping the same call signature: `Linear(out_shape, in_axes_names,
out_axes_names)(x)` contracts the trailing `len(in_shape)` dims of x.
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp


class Linear(nn.Module):
    """y[..., out...] = sum_in x[..., in...] * W[in..., out...] (+ b[out...])."""

    in_shape: Sequence[int]
    out_shape: Sequence[int]
    in_axes: Sequence[str]
    out_axes: Sequence[str]
    dtype: jnp.dtype
    use_bias: bool = False
    out_dtype: Optional[jnp.dtype] = None  # default: dtype (the LM head asks for float32 logits)

    @nn.compact
    def __call__(self, x):
        n_in = len(self.in_shape)
        fan_in = 1
        for s in self.in_shape:
            fan_in *= s
        init = nn.initializers.normal(stddev=fan_in ** -0.5)
        w = self.param("kernel", nn.with_logical_partitioning(init, tuple(self.in_axes) + tuple(self.out_axes)),
                       tuple(self.in_shape) + tuple(self.out_shape), self.dtype)
        # Accumulate in float32 whatever the storage dtype, then round once to the output dtype.
        y = jnp.tensordot(x.astype(self.dtype), w, axes=(tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))),
                          preferred_element_type=jnp.float32)
        if self.use_bias:
            b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.out_axes)),
                           tuple(self.out_shape), self.dtype)
            y = y + b.astype(jnp.float32)
        return y.astype(self.out_dtype or self.dtype)
