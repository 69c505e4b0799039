"""The KV write in one Triton kernel (contract: write_reference.py).

XLA runs the twin as four to six kernels per layer at decode (the keys' rotation, a slice of the values out of
the q|k|v product, and a select / dynamic-update-slice pair per pool). Here program (t, k) reads token t's key
and value rows for kv head k straight from their sources (the q|k|v GEMM's output, by head offset), rotates the
key in registers and stores both into the pools, which alias the outputs (in place; nothing else is read or
written). A padding token's (slot < 0) stores are masked off. Asked for the queries too (q = (x_q, q_head, N)), the
same program rotates kv head k's G = N / K query heads of token t and stores them in a third output [T, N, H]: the
queries' rotation rides in this launch instead of an XLA fusion of its own.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def _rotate(x_ref, row, c, s):
    """The two rotated halves (float32 math, cast back to x's dtype) of x_ref[row...] (rotate-half RoPE)."""
    R = c.shape[0]
    x1 = x_ref[row + (pl.ds(0, R),)].astype(jnp.float32)
    x2 = x_ref[row + (pl.ds(R, R),)].astype(jnp.float32)
    return (x1 * c - x2 * s).astype(x_ref.dtype), (x2 * c + x1 * s).astype(x_ref.dtype)


def _kernel(layer_ref, slot_ref, xk_ref, xv_ref, cos_ref, sin_ref, *refs, page_size, k_head, v_head, rotate,
            q_head, group):
    if group:  # the queries too: their source in, their rotation out
        xq_ref, k_pool_in, v_pool_in, k_pool, v_pool, q_out = refs
        del k_pool_in, v_pool_in  # the same buffers as k_pool / v_pool (aliased)
    else:
        k_pool_in, v_pool_in, k_pool, v_pool = refs
        del k_pool_in, v_pool_in
    t, kh = pl.program_id(0), pl.program_id(1)
    slot = slot_ref[t]
    valid = slot >= 0
    page = jnp.where(valid, slot // page_size, 0)
    off = jnp.where(valid, slot % page_size, 0)
    layer = layer_ref[0]
    H = xk_ref.shape[-1]
    R = H // 2
    if rotate:  # rotate-half RoPE on the two halves of the row, in float32 (write_reference.rotate_half)
        c, s = cos_ref[t, :], sin_ref[t, :]
        k1, k2 = _rotate(xk_ref, (t, k_head + kh), c, s)
        mask_R = jnp.full((R,), valid)
        plgpu.store(k_pool.at[layer, page, kh, off, pl.ds(0, R)], k1.astype(k_pool.dtype), mask=mask_R)
        plgpu.store(k_pool.at[layer, page, kh, off, pl.ds(R, R)], k2.astype(k_pool.dtype), mask=mask_R)
        for g in range(group):  # every token's queries (a padding token's are computed and never read)
            n = kh * group + g
            q1, q2 = _rotate(xq_ref, (t, q_head + n), c, s)
            q_out[t, n, pl.ds(0, R)] = q1
            q_out[t, n, pl.ds(R, R)] = q2
    else:
        plgpu.store(k_pool.at[layer, page, kh, off, :], xk_ref[t, k_head + kh, :].astype(k_pool.dtype),
                    mask=jnp.full((H,), valid))
    plgpu.store(v_pool.at[layer, page, kh, off, :], xv_ref[t, v_head + kh, :].astype(v_pool.dtype),
                mask=jnp.full((H,), valid))


def supported(H: int) -> bool:
    """Whether half a head's row (H / 2 values) is a Triton block (a power of two, at least 16)."""
    return H >= 32 and H & (H - 1) == 0


def write_pages_gpu(k_LPKZH, v_LPKZH, layer, xk_TXH, k_head: int, xv_TXH, v_head: int, slot_T, rope=None, q=None,
                    interpret: bool = False):
    """(k pool, v pool) with keys xk[:, k_head:k_head+K] (rotated by rope = (cos, sin) [T, H/2] if given) and
    values xv[:, v_head:v_head+K] stored at slot_T of `layer`; the pools are updated in place. With
    q = (x_q, q_head, N) also the queries x_q[:, q_head:q_head+N] rotated, [T, N, H]."""
    xq_TXH, q_head, N = q if q is not None else (None, 0, 0)
    return tuple(_write(k_LPKZH, v_LPKZH, layer, xk_TXH, k_head, xv_TXH, v_head, slot_T, rope, xq_TXH,
                        q_head=int(q_head), N=int(N), interpret=interpret))


@functools.partial(jax.jit, static_argnames=("k_head", "v_head", "q_head", "N", "interpret"))
def _write(k_LPKZH, v_LPKZH, layer, xk_TXH, k_head, xv_TXH, v_head, slot_T, rope, xq_TXH, q_head, N, interpret):
    """write_pages_gpu, the queries' source xq_TXH None (N = 0) when they are not asked for."""
    L, P, K, Z, H = k_LPKZH.shape
    T = xk_TXH.shape[0]
    if not supported(H):
        raise ValueError(f"write_pages_gpu: H={H} must be a power of two >= 32 (half a row is one Triton block)")
    if v_LPKZH.shape != k_LPKZH.shape or xk_TXH.shape[0::2] != (T, H) or xv_TXH.shape[0::2] != (T, H) or \
            xk_TXH.shape[1] < k_head + K or xv_TXH.shape[1] < v_head + K or slot_T.shape != (T,):
        raise ValueError(f"write_pages_gpu: pools {k_LPKZH.shape} / {v_LPKZH.shape}, keys {xk_TXH.shape} from "
                         f"head {k_head}, values {xv_TXH.shape} from head {v_head}, slots {slot_T.shape} do not "
                         f"match")
    queries = xq_TXH is not None
    if queries and rope is None:
        raise ValueError("write_pages_gpu: rotating the queries (q=...) needs the rotation (rope=(cos, sin))")
    if queries and (N <= 0 or N % K or xq_TXH.shape[0::2] != (T, H) or xq_TXH.shape[1] < q_head + N):
        raise ValueError(f"write_pages_gpu: queries {xq_TXH.shape} from head {q_head}, N={N}, do not match K={K} "
                         f"kv heads of width {H} and {T} tokens")
    cos_TR, sin_TR = rope if rope is not None else (jnp.zeros((T, H // 2), jnp.float32),) * 2
    ins = [jnp.reshape(layer, (1,)).astype(jnp.int32), slot_T.astype(jnp.int32), xk_TXH, xv_TXH,
           cos_TR.astype(jnp.float32), sin_TR.astype(jnp.float32)] + ([xq_TXH] if queries else []) + [k_LPKZH, v_LPKZH]
    outs = [jax.ShapeDtypeStruct(k_LPKZH.shape, k_LPKZH.dtype)] * 2 + (
        [jax.ShapeDtypeStruct((T, N, H), xq_TXH.dtype)] if queries else [])
    whole = pl.BlockSpec()
    return pl.pallas_call(
        functools.partial(_kernel, page_size=Z, k_head=k_head, v_head=v_head, rotate=rope is not None,
                          q_head=q_head, group=N // K if queries else 0),
        grid=(T, K), in_specs=[whole] * len(ins), out_specs=[whole] * len(outs), out_shape=outs,
        input_output_aliases={len(ins) - 2: 0, len(ins) - 1: 1},
        compiler_params=plgpu.CompilerParams(num_warps=1, num_stages=1), interpret=interpret,
        name=f"kv_write{'_q' if queries else ''}_K{K}{f'_G{N // K}' if queries else ''}_H{H}")(*ins)
