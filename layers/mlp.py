"""SwiGLU MLP: down(silu(gate(x)) * up(x)); 6*B*T*D*F FLOPs."""
from typing import Optional

import flax.linen as nn
import jax

from layers import axes
from layers.linear import Linear


class SwiGLU(nn.Module):
    d_model: int
    d_ff: int
    dtype: object
    weight_format: Optional[str] = None  # pallas_kernels/matmul/formats.py; None: float kernels in dtype

    @nn.compact
    def __call__(self, x_BTD):
        mk = lambda i, o, ia, oa, name: Linear(i, o, ia, oa, self.dtype, weight_format=self.weight_format, name=name)
        gate_BTF = mk((self.d_model,), (self.d_ff,), (axes.EMBED,), (axes.MLP,), "gate")(x_BTD)
        up_BTF = mk((self.d_model,), (self.d_ff,), (axes.EMBED,), (axes.MLP,), "up")(x_BTD)
        return mk((self.d_ff,), (self.d_model,), (axes.MLP,), (axes.EMBED,), "down")(jax.nn.silu(gate_BTF) * up_BTF)
