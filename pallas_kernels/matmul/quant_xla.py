"""The XLA path of a quantized matmul: y [M, O] = x [M, I] @ W [I, O] (float32 accumulation) from the stored format.

4-bit weights are never unpacked into their [I, O] order: within a group of g inputs the
low nibbles hold inputs 0 .. g/2-1 and the high nibbles inputs g/2 .. g-1, so

    y = x_lo @ decode(q & 0xF) + x_hi @ decode(q >> 4)

where x_lo / x_hi are the matching halves of each group of x. Each half decodes elementwise
((q - zero) * scale, or q * scale + min, per group) straight into its dot, which XLA fuses
with the byte loads; measured on the CPU inside the layer scan (SmolLM2 shapes, one row):
2.7 ms for 30 [576, 1536] weights vs 3.3 ms in float32 and 18 ms unpacking to [I, O] first.
8-bit weights decode as q * scale per group into the dot. The result equals
`x @ dequantize(qw)` up to float32 summation order.
"""
import jax.numpy as jnp

from pallas_kernels.matmul.formats import WeightFormat, get_format, pad_inputs


def _decode(q, scale, mn, fmt: WeightFormat, dtype):
    """Per-group decode of q [G, r, O] with scale / min [G, O] (GGUF's operation order), in dtype."""
    s = scale.astype(jnp.float32)[:, None]
    qf = q.astype(jnp.float32)
    if fmt.has_min:
        w = qf * s + mn.astype(jnp.float32)[:, None]
    else:
        w = s * (qf - fmt.zero) if fmt.zero else s * qf
    return w.astype(dtype)


def quant_matmul(x_MI, qw: dict, fmt, dtype=jnp.float32):
    """x [M, I] times the stored weight [I, O], computed in `dtype` with float32 accumulation -> [M, O] float32."""
    fmt = get_format(fmt)
    x_MI = pad_inputs(x_MI, qw, fmt)  # a ragged last group: zeros against the padded rows
    q = qw["q"]
    O = q.shape[-1]
    I = q.shape[0] * (2 if fmt.bits == 4 else 1)
    g = fmt.group_size(I)
    G = I // g
    mn = qw.get("min")
    x = x_MI.astype(dtype)
    M = x.shape[0]
    if fmt.bits == 8:
        w = _decode(q.reshape(G, g, O), qw["scale"], mn, fmt, dtype).reshape(I, O)
        return jnp.dot(x, w, preferred_element_type=jnp.float32)
    p = q.reshape(G, g // 2, O)
    xs = x.reshape(M, G, 2, g // 2)
    lo = _decode(p & 0x0F, qw["scale"], mn, fmt, dtype).reshape(I // 2, O)
    hi = _decode(p >> 4, qw["scale"], mn, fmt, dtype).reshape(I // 2, O)
    return (jnp.dot(xs[:, :, 0].reshape(M, I // 2), lo, preferred_element_type=jnp.float32)
            + jnp.dot(xs[:, :, 1].reshape(M, I // 2), hi, preferred_element_type=jnp.float32))
