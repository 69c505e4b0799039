"""The per-block math of the quantized matmul kernels (backend-neutral jnp code, used inside kernel bodies).

A kernel program owns an output tile y[bm, bn] (float32) and walks the input dimension I in blocks of
bk inputs. One block of the stored weight is R = bk / P rows of "q" ([R, bn], P = 2 nibbles per byte for
4-bit formats, P = 1 for 8-bit) plus the Gs rows of "scale" (and "min") that cover those inputs:
Gs = bk / g groups when a block holds whole groups, Gs = 1 when the block lies inside one group
(per-channel int8, g = I).

4-bit blocks. Within each group of g inputs, byte j holds input j (low nibble) and input j + g/2 (high
nibble). Unpacking the [bk/2, bn] bytes into the [bk, bn] block is done as its two halves

    lo = byte & 0xF  ->  inputs j          of every group in the block   [bk/2, bn]
    hi = byte >> 4   ->  inputs j + g/2    of every group in the block   [bk/2, bn]

i.e. the unpacked block in "split order" (all low nibbles, then all high nibbles). Nothing is interleaved
in registers (Triton has no row concatenate and Mosaic would need sublane shuffles); instead x's columns
are permuted to the same order once, outside the kernel (quant_layout.split_x), and the block's partial
product is x_lo @ W_lo + x_hi @ W_hi. In the packed domain each group spans g/2 rows, so the group's
scale/min is repeated over g/2 rows of each half.

Decode order is formats.dequantize's (GGUF's): (q - zero) * scale for symmetric formats, q * scale + min
for affine ones, in float32; the partial dots accumulate in float32. Only ops the Triton and the Mosaic
TPU lowerings both accept are used: int32 bitwise and/shift, converts, a sublane broadcast + leading-dim reshape,
elementwise float32 math and 2-D dot_general.
"""
import jax
import jax.numpy as jnp


def unpack_block(q_RN, bits: int):
    """A stored block [R, bn] -> its integer parts, each [R, bn] int32: [q] (8-bit) or [lo, hi] (4-bit)."""
    v = q_RN.astype(jnp.int32)
    if bits == 8:
        return [v]
    return [v & 0x0F, jax.lax.shift_right_logical(v, 4)]  # bytes are 0..255 in int32: logical == arithmetic


def expand_rows(s_G1N, rows: int):
    """Per-group rows [Gs, 1, bn] -> per-row [Gs * rows, bn] ([1, bn] when Gs = 1: it broadcasts).

    The unit axis arrives from memory (quant_layout.scale_blocks), so the repeat is a sublane broadcast
    plus a reshape that merges a leading dim into a tile-aligned row dim (rows is a multiple of 8) --
    no op here has to move a row into its own tile.
    """
    Gs, _, N = s_G1N.shape
    if Gs == 1:
        return s_G1N.reshape(1, N)
    return jnp.broadcast_to(s_G1N, (Gs, rows, N)).reshape(Gs * rows, N)


def dequantize_part(q_RN, scale_RN, min_RN, zero: int):
    """Integers [R, bn] -> float32 weights in formats.dequantize's order ((q - zero) * scale | q * scale + min)."""
    qf = q_RN.astype(jnp.float32)
    if min_RN is not None:
        return qf * scale_RN + min_RN
    if zero:
        qf = qf - float(zero)
    return scale_RN * qf


def partial_dot(x_MR, w_RN, compute_dtype):
    """x [bm, R] @ w [R, bn] with float32 accumulation (float32 operands at full precision)."""
    cdt = jnp.dtype(compute_dtype)
    prec = jax.lax.Precision.HIGHEST if cdt == jnp.float32 else None
    return jax.lax.dot_general(x_MR.astype(cdt), w_RN.astype(cdt), (((1,), (0,)), ((), ())), precision=prec,
                               preferred_element_type=jnp.float32)


def block_update(acc_MN, x_parts, q_RN, scale_G1N, min_G1N, *, bits: int, zero: int, compute_dtype=jnp.float32):
    """acc + (the block's x columns) @ (the block's dequantized weights), float32.

    x_parts: [x] (8-bit) or [x_lo, x_hi] (4-bit), each [bm, R], in the order quant_layout.split_x makes;
    q_RN: the stored block; scale_G1N / min_G1N: the block's Gs scale (and min) rows [Gs, 1, bn], min None
    for symmetric formats.
    """
    R = q_RN.shape[0]
    rows = R // scale_G1N.shape[0]
    scale = expand_rows(scale_G1N.astype(jnp.float32), rows)
    mn = None if min_G1N is None else expand_rows(min_G1N.astype(jnp.float32), rows)
    for x_MR, part_RN in zip(x_parts, unpack_block(q_RN, bits)):
        acc_MN = acc_MN + partial_dot(x_MR, dequantize_part(part_RN, scale, mn, zero), compute_dtype)
    return acc_MN
