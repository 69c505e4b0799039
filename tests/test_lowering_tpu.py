"""Every Mosaic TPU Pallas kernel lowers for TPU, and compiles for a v5p, on this CPU-only machine at Llama-3-8B shapes (bfloat16, N = 32
query heads, K = 8 KV heads, H = 128), with bfloat16 and int8 caches.

`jax.export` with platforms=["tpu"] runs the whole TPU lowering, the Pallas -> Mosaic kernel lowering
included (block-shape rules, every in-kernel op's Mosaic lowering rule), and serialises the kernel into a
`tpu_custom_call`; the custom-call safety check is disabled because exporting a Mosaic kernel is what we
want here. Each program is then compiled by the TPU compiler itself for a v5p chip without one (libtpu's
deviceless topology, tests/gpu_aot.py): Mosaic's own checks (VMEM, tiling, vector types: GGUF's float16 scales
failed them until quant_tpu widened them) run here. Checked about each lowered
program:

- exactly one tpu_custom_call, named after the kernel: the attention is the kernel, not an XLA fallback;
- the caches / page pools (and int8 value pools) reach the kernel whole and untouched: in the jaxpr no op
  other than the pallas_call reads them, so no slice, gather or copy of the layer-stacked cache or pool
  happens outside the kernel and the work is proportional to the pages the kernel fetches.

The quantized matmul is checked the same way at Llama-3-8B's MLP decode shapes (M = 8): one kernel, and the
packed weight read by nothing but the pallas_call (its scales only go through a free reshape first).
"""
import jax
import jax.numpy as jnp
import pytest
from jax import export
from gpu_aot import compile_for, tpu_sharding

from pallas_kernels.matmul.formats import get_format
from lowering_helpers import readers
from pallas_kernels.attention.decode_tpu import decode_attention_tpu, paged_decode_attention_tpu
from pallas_kernels.attention.ragged_tpu import ragged_paged_attention_tpu
from pallas_kernels.matmul.quant_tpu import quant_matmul_tpu

L, N, K, H = 32, 32, 8, 128  # Llama-3-8B attention
P = 4096  # pages in the pool
BF16, I8, F32, I32 = jnp.bfloat16, jnp.int8, jnp.float32, jnp.int32


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def _lower_tpu(fn, args):
    exported = export.export(jax.jit(fn), platforms=["tpu"],
                             disabled_checks=[export.DisabledSafetyCheck.custom_call("tpu_custom_call")])(*args)
    compile_for(tpu_sharding(), fn, *args)  # Mosaic compiled for a v5p chip: its limits apply
    return exported.mlir_module()


def _check(fn, args, pool_positions, kernel_name):
    text = _lower_tpu(fn, args)
    assert text.count("stablehlo.custom_call @tpu_custom_call") == 1
    assert kernel_name in text
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    for i in pool_positions:
        assert readers(jaxpr, jaxpr.invars[i]) == {"pallas_call"}, (i, args[i].shape)


@pytest.mark.parametrize("dtype", [BF16, I8])
def test_contiguous_decode_lowers(dtype):
    B, S = 8, 8192
    q, kv = _sds((B, N, H), BF16), _sds((L, B, K, S, H), dtype)
    if dtype == I8:
        sc = _sds((L, B, K, S), F32)
        fn = lambda q, k, v, ks, vs, n, layer: decode_attention_tpu(q, k, v, n, layer=layer, k_scale=ks,
                                                                    v_scale=vs, num_splits=4, sliding_window=4096)
        args = (q, kv, kv, sc, sc, _sds((B,), I32), _sds((), I32))
    else:
        fn = lambda q, k, v, n, layer: decode_attention_tpu(q, k, v, n, layer=layer, num_splits=4, softcap=30.0)
        args = (q, kv, kv, _sds((B,), I32), _sds((), I32))
    _check(fn, args, (1, 2), "decode_attn_tpu_dense")


@pytest.mark.parametrize("Z", [16, 64])
@pytest.mark.parametrize("dtype", [BF16, I8])
def test_paged_decode_lowers(dtype, Z):
    B, M = 32, 8192 // Z
    q, pool = _sds((B, N, H), BF16), _sds((L, P, K, Z, H), dtype)
    tables, lens = _sds((B, M), I32), _sds((B,), I32)
    if dtype == I8:
        sc = _sds((L, P, K, Z), F32)
        fn = lambda q, k, v, ks, vs, t, n, layer: paged_decode_attention_tpu(q, k, v, t, n, layer=layer, k_scale=ks,
                                                                             v_scale=vs, num_splits=2)
        args = (q, pool, pool, sc, sc, tables, lens, _sds((), I32))
    else:
        fn = lambda q, k, v, t, n, layer: paged_decode_attention_tpu(q, k, v, t, n, layer=layer, sliding_window=4096)
        args = (q, pool, pool, tables, lens, _sds((), I32))
    # the int8 scale pools go through a [.., Z] -> [.., Z, 1] reshape before this kernel: only k/v are checked
    _check(fn, args, (1, 2), "decode_attn_tpu_paged")


@pytest.mark.parametrize("Z", [16, 64])
@pytest.mark.parametrize("dtype", [BF16, I8])
@pytest.mark.parametrize("R,T,max_q_len", [(64, 64, 1), (16, 1024, 512)])  # decode-only step, mixed step
def test_ragged_paged_attention_lowers(dtype, Z, R, T, max_q_len):
    M = 8192 // Z
    q, pool = _sds((T, N, H), BF16), _sds((L, P, K, Z, H), dtype)
    meta = (_sds((R, M), I32), _sds((R,), I32), _sds((R,), I32), _sds((R,), I32), _sds((), I32))
    if dtype == I8:
        sc = _sds((L, P, K, Z), F32)
        fn = lambda q, k, v, ks, vs, t, s, ql, kl, layer: ragged_paged_attention_tpu(
            q, k, v, t, s, ql, kl, max_q_len=max_q_len, layer=layer, k_scale=ks, v_scale=vs, sliding_window=4096,
            softcap=30.0)
        args, pools = (q, pool, pool, sc, sc, *meta), (1, 2, 3, 4)
    else:
        fn = lambda q, k, v, t, s, ql, kl, layer: ragged_paged_attention_tpu(q, k, v, t, s, ql, kl,
                                                                              max_q_len=max_q_len, layer=layer)
        args, pools = (q, pool, pool, *meta), (1, 2)
    _check(fn, args, pools, "ragged_paged_attn_tpu")


@pytest.mark.parametrize("I,O", [(4096, 14336), (14336, 4096)])  # Llama-3-8B gate/up and down
@pytest.mark.parametrize("fmt", ["int8", "int4-g128", "q4_0", "q8_0"])
def test_quant_matmul_lowers(fmt, I, O):
    f = get_format(fmt)
    g = f.group or I
    sdt = jnp.dtype(f.scale_dtype)
    q = _sds((I // 2, O), jnp.uint8) if f.bits == 4 else _sds((I, O), I8)
    sc = _sds((I // g, O), sdt)
    if f.has_min:
        fn = lambda x, q, s, m: quant_matmul_tpu(x, {"q": q, "scale": s, "min": m}, fmt)
        args = (_sds((8, I), BF16), q, sc, sc)
    else:
        fn = lambda x, q, s: quant_matmul_tpu(x, {"q": q, "scale": s}, fmt)
        args = (_sds((8, I), BF16), q, sc)
    _check(fn, args, (1,), "quant_matmul_tpu")
    assert jax.eval_shape(fn, *args).shape == (8, O)
