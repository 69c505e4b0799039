"""SwiGLU MLP: down(silu(gate(x)) * up(x)); 6*B*T*D*F FLOPs.

Given a PreNorm (layers/norm.py) instead of x it returns (h = x + residual, the MLP's output): with fused gate|up
the projection computes the norm and silu(gate) * up itself (one kernel on a GPU decode step, layers/linear.py).
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from layers import axes
from layers.linear import Linear
from layers.norm import PreNorm


class SwiGLU(nn.Module):
    d_model: int
    d_ff: int
    dtype: object
    weight_format: Optional[str] = None  # pallas_kernels/matmul/formats.py; None: float kernels in dtype
    fused: bool = False  # gate|up as one [D, 2F] kernel "gate_up" (ModelConfig.fused_projections)

    @nn.compact
    def __call__(self, x_BTD):
        mk = lambda i, o, ia, oa, name: Linear(i, o, ia, oa, self.dtype, weight_format=self.weight_format, name=name)
        prenorm, h_BTD = isinstance(x_BTD, PreNorm), None
        if prenorm and not self.fused:
            h_BTD, x_BTD = x_BTD.compute()
        if self.fused and prenorm:  # gate|up with the norm before it and silu(gate) * up after it
            h_BTD, act_BTF = mk((self.d_model,), (2 * self.d_ff,), (axes.EMBED,), (None,), "gate_up")(x_BTD,
                                                                                                     swiglu=True)
        elif self.fused:  # one GEMM, then the two halves
            gate_BTF, up_BTF = jnp.split(mk((self.d_model,), (2 * self.d_ff,), (axes.EMBED,), (None,),
                                            "gate_up")(x_BTD), 2, axis=-1)
            act_BTF = jax.nn.silu(gate_BTF) * up_BTF
        else:
            gate_BTF = mk((self.d_model,), (self.d_ff,), (axes.EMBED,), (axes.MLP,), "gate")(x_BTD)
            up_BTF = mk((self.d_model,), (self.d_ff,), (axes.EMBED,), (axes.MLP,), "up")(x_BTD)
            act_BTF = jax.nn.silu(gate_BTF) * up_BTF
        out_BTD = mk((self.d_ff,), (self.d_model,), (axes.MLP,), (axes.EMBED,), "down")(act_BTF)
        return (h_BTD, out_BTD) if prenorm else out_BTD
