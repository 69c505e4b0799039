"""The projection seam: every weight matmul in the model goes through `Linear`.

`Linear(in_shape, out_shape, in_axes, out_axes, dtype)(x)` contracts the trailing
len(in_shape) dims of x with a kernel [in..., out...] stored in `dtype`. With a
`weight_format` (pallas_kernels/matmul/formats.py) the weight is stored quantized instead, as the
format's pytree over the flattened [I, O] weight ("q", "scale", and "min" for affine
formats; I = prod(in_shape), O = prod(out_shape)); the call dequantizes it to the compute
dtype inside its matmul with float32 accumulation, so the storage format is separate from
the compute dtype: the Pallas kernels on GPU/TPU (pallas_kernels/matmul/), elsewhere XLA's
packed path (pallas_kernels/matmul/quant_xla.py: 4-bit weights decoded half-group by half-group straight
into two dots, never unpacked into a [I, O] copy).
Quantized parameters come from `infer.quantize` (or a GGUF file); `init` gives zeros.

Decode GEMV (a GPU target, <= 64 rows, a float weight, no bias; `decode_gemv`): the matmul is one Triton kernel
with no split-K (pallas_kernels/gemv/), where XLA's untuned GEMM tiles split K and reduce the partials in a second
launch. Given a PreNorm (layers/norm.py) instead of x, the call also runs the add + RMSNorm before the matmul and
returns (h, y): in that kernel on the GEMV path, else the norm first; `swiglu=True` reads the output columns as
[gate | up] and returns silu(gate) * up. INFER_DECODE_GEMV=0 turns the GEMV path off (XLA's GEMMs everywhere, as
before; read when a program is traced) so `make gpu-check` can time both.
"""
import math
import os
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from layers.norm import PreNorm
from pallas_kernels.gemv.dispatch import gemv, gemv_applies
from pallas_kernels.gemv.gemv_reference import swiglu_reference
from pallas_kernels.matmul.formats import get_format
from pallas_kernels.matmul.dispatch import quant_matmul
from pallas_kernels.platform import family

DECODE_GEMV_ENV = "INFER_DECODE_GEMV"  # "0": XLA's GEMMs for decode rows too (the GEMV kernel's off switch)


def decode_gemv(rows: int, I: int) -> bool:
    """Whether a float projection of `rows` rows over I inputs runs as the decode GEMV kernel here (a GPU target,
    no device mesh, rows <= 64, I a multiple of 16, INFER_DECODE_GEMV not "0")."""
    return os.environ.get(DECODE_GEMV_ENV, "1") != "0" and gemv_applies(rows, I)


def stored_shapes(weight_format: str, I: int, O: int) -> dict:
    """name -> (shape, dtype) of a quantized [I, O] weight's arrays."""
    fmt = get_format(weight_format)
    g = fmt.group_size(I)
    I = fmt.stored_inputs(I)  # padded to whole groups (pallas_kernels/matmul/formats.py)
    out = {"q": ((I // 2, O), jnp.uint8) if fmt.bits == 4 else ((I, O), jnp.int8),
           "scale": ((I // g, O), jnp.dtype(fmt.scale_dtype))}
    if fmt.has_min:
        out["min"] = ((I // g, O), jnp.dtype(fmt.scale_dtype))
    return out


# XLA's GPU algebraic simplifier rewrites a vector x matrix dot whose operands hold fewer elements than this into
# a multiply and a reduction (ShouldStrengthReduceDotToReduce, a fixed threshold): at decode batch 1 a small
# model's projections then write a float32 product the size of the weight and read it back (SmolLM2: 0.21 GB per
# step beside 0.27 GB of weights). Padding the one row to two keeps such a dot a GEMM fusion that reads the
# weight once (BENCHMARKS.md, "The GPU program"); larger dots are GEMMs already, and stay unpadded.
XLA_GPU_STRENGTH_REDUCED_BELOW = 10_000_000


class Linear(nn.Module):
    """y[..., out...] = sum_in x[..., in...] * W[in..., out...] (+ b[out...])."""

    in_shape: Sequence[int]
    out_shape: Sequence[int]
    in_axes: Sequence[str]
    out_axes: Sequence[str]
    dtype: jnp.dtype
    use_bias: bool = False
    out_dtype: Optional[jnp.dtype] = None  # default: dtype (the LM head asks for float32 logits)
    weight_format: Optional[str] = None  # None: a float kernel in dtype; else a pallas_kernels/matmul/formats.py format

    @nn.compact
    def __call__(self, x, swiglu: bool = False):
        """y for an array x; (h, y) for a PreNorm x (h = x + residual, y from RMSNorm(h)). swiglu: y =
        silu(gate) * up of the output columns [gate | up] (out_shape (2F,)), [..., F]."""
        n_in = len(self.in_shape)
        pre = x if isinstance(x, PreNorm) else None
        x_in = x.x if pre is not None else x
        if self.weight_format is None:
            fan_in = 1
            for s in self.in_shape:
                fan_in *= s
            init = nn.initializers.normal(stddev=fan_in ** -0.5)
            w = self.param("kernel", nn.with_logical_partitioning(init, tuple(self.in_axes) + tuple(self.out_axes)),
                           tuple(self.in_shape) + tuple(self.out_shape), self.dtype)
            I, O = math.prod(self.in_shape), math.prod(self.out_shape)
            if not self.use_bias and decode_gemv(x_in.size // I, I):  # one kernel (the norm, SwiGLU in it)
                lead = x_in.shape[:x_in.ndim - n_in]
                norm = None if pre is None else (pre.residual.reshape(lead + (I,)), pre.scale, pre.eps)
                out = gemv(x_in.reshape(lead + (I,)), w.reshape(I, O), norm, swiglu, self.out_dtype or self.dtype)
                y = out if pre is None else out[1]
                y = y if swiglu else y.reshape(lead + tuple(self.out_shape))
                return y if pre is None else (out[0].reshape(x_in.shape), y)
        h = None
        if pre is not None:
            h, x = pre.compute()
        y = self._quantized(x, n_in) if self.weight_format is not None else self._dense(x, w, n_in)
        if swiglu:
            y = swiglu_reference(y)
        return y if pre is None else (h, y)

    def _dense(self, x, w, n_in):
        # Accumulate in float32 whatever the storage dtype, then round once to the output dtype.
        xs = x.astype(self.dtype)
        one_row = x.size == math.prod(self.in_shape) and family() == "gpu" and \
            math.prod(self.in_shape) * (math.prod(self.out_shape) + 1) < XLA_GPU_STRENGTH_REDUCED_BELOW and \
            jax.sharding.get_abstract_mesh().empty
        if one_row:  # two rows (one of zeros): XLA keeps it a GEMM (see XLA_GPU_STRENGTH_REDUCED_BELOW)
            xs = jnp.pad(xs.reshape((1,) + tuple(self.in_shape)), ((0, 1),) + ((0, 0),) * n_in)
        y = jnp.tensordot(xs, w, axes=(tuple(range(xs.ndim - n_in, xs.ndim)), tuple(range(n_in))),
                          preferred_element_type=jnp.float32)
        if one_row:
            y = y[:1].reshape(x.shape[:x.ndim - n_in] + tuple(self.out_shape))
        if self.use_bias:
            b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.out_axes)),
                           tuple(self.out_shape), self.dtype)
            y = y + b.astype(jnp.float32)
        return y.astype(self.out_dtype or self.dtype)

    def _quantized(self, x, n_in):
        I, O = math.prod(self.in_shape), math.prod(self.out_shape)
        qw = {name: self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, (None, None)), shape, dt)
              for name, (shape, dt) in stored_shapes(self.weight_format, I, O).items()}
        lead = x.shape[:x.ndim - n_in]
        y = quant_matmul(x.reshape((math.prod(lead), I)), qw, self.weight_format,
                         compute_dtype=self.dtype).reshape(lead + (O,))
        if self.use_bias:
            b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.out_axes)),
                           tuple(self.out_shape), self.dtype)
            y = y + b.astype(jnp.float32).reshape(O)
        return y.reshape(y.shape[:-1] + tuple(self.out_shape)).astype(self.out_dtype or self.dtype)
