"""Pure-JAX quantized matmul: the twin every Pallas quantized-matmul kernel is tested against.

y[M, O] = x[M, I] @ W[I, O] where W is stored in a pallas_kernels/matmul/formats.py format (a dict of "q",
"scale" and, for affine formats, "min"). The twin is the definition: decode W with
`formats.dequantize` (GGUF's operation order, float32) and contract in float32 (precision HIGHEST,
float32 accumulation). x may carry leading batch dims ([..., I]); the result is always float32.
"""
import jax
import jax.numpy as jnp

from pallas_kernels.matmul.formats import dequantize, get_format


def quant_matmul_reference(x_MI, qw: dict, fmt) -> jax.Array:
    """x [..., I] (any float dtype) @ dequantize(qw, fmt, in_features=I) [I, O] -> float32 [..., O]."""
    fmt = get_format(fmt)
    x = jnp.asarray(x_MI)
    w_IO = dequantize(qw, fmt, jnp.float32)
    if fmt.stored_inputs(x.shape[-1]) == w_IO.shape[0]:  # a ragged last group: the stored rows past I are padding
        w_IO = w_IO[:x.shape[-1]]
    if x.shape[-1] != w_IO.shape[0]:
        raise ValueError(f"x: input dimension I={x.shape[-1]} does not match the weight's I={w_IO.shape[0]} "
                         f"(x {x.shape}, q {tuple(qw['q'].shape)}, format {fmt.name})")
    return jnp.matmul(x.astype(jnp.float32), w_IO, precision=jax.lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32)
