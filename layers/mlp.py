"""SwiGLU MLP: down(silu(gate(x)) * up(x)); 6*B*T*D*F FLOPs."""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from layers import axes
from layers.linear import Linear


class SwiGLU(nn.Module):
    d_model: int
    d_ff: int
    dtype: object
    weight_format: Optional[str] = None  # pallas_kernels/matmul/formats.py; None: float kernels in dtype
    fused: bool = False  # gate|up as one [D, 2F] kernel "gate_up" (ModelConfig.fused_projections)

    @nn.compact
    def __call__(self, x_BTD):
        mk = lambda i, o, ia, oa, name: Linear(i, o, ia, oa, self.dtype, weight_format=self.weight_format, name=name)
        if self.fused:  # one GEMM, then the two halves
            gate_BTF, up_BTF = jnp.split(mk((self.d_model,), (2 * self.d_ff,), (axes.EMBED,), (None,),
                                            "gate_up")(x_BTD), 2, axis=-1)
        else:
            gate_BTF = mk((self.d_model,), (self.d_ff,), (axes.EMBED,), (axes.MLP,), "gate")(x_BTD)
            up_BTF = mk((self.d_model,), (self.d_ff,), (axes.EMBED,), (axes.MLP,), "up")(x_BTD)
        return mk((self.d_ff,), (self.d_model,), (axes.MLP,), (axes.EMBED,), "down")(jax.nn.silu(gate_BTF) * up_BTF)
