"""Both absorbed-MLA decode kernels lower on this CPU-only machine at DeepSeek-V3 shapes, in bfloat16: N = 128
heads, C = kv_lora_rank = 512, E = qk_rope_head_dim = 64, L = 61 layers, a pool of P = 2048 pages of Z tokens.

`jax.export` runs the real lowering on abstract arguments (jax.ShapeDtypeStruct: nothing is allocated):
platforms=["cuda"] the Triton lowering of the GPU kernel, platforms=["tpu"] the Pallas -> Mosaic lowering of
the TPU kernel. The kernels' custom calls are not on jax.export's stable list, so that check is disabled by
name (see test_lowering_gpu.py / test_lowering_tpu.py for why). Checked about each lowered program:

- exactly one kernel custom call: the attention is the kernel, not an XLA fallback;
- the latent pools reach the kernel whole and untouched: in the jaxpr no op but the pallas_call reads them,
  and (GPU) no line of the lowered module but the kernel call uses their tensor types, so no slice of the
  layer, gather of pages or copy of a pool happens in XLA;
- the grid: every sequence x head block (x split) on GPU, the pages-per-step choice on TPU.
"""
import re

import jax
import jax.numpy as jnp
import pytest
from jax import export
from gpu_aot import compile_for, h100_sharding, tpu_sharding

from lowering_helpers import readers
from pallas_kernels.attention.dispatch import mla_ragged_paged_attention
from pallas_kernels.attention.mla_gpu import mla_paged_decode_attention_gpu
from pallas_kernels.attention.mla_tpu import mla_paged_decode_attention_tpu

L, N, C, E = 61, 128, 512, 64  # DeepSeek-V3: layers, heads, kv_lora_rank, qk_rope_head_dim
P = 2048  # pool pages
SCALE = 0.1352  # the value does not matter for lowering
TRITON_TARGETS = ("__gpu$xla.gpu.triton", "triton_kernel_call_ffi")  # jaxlib <= 0.10.2, newer
BF16, I32 = jnp.bfloat16, jnp.int32


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def _export(fn, args, platform):
    targets = TRITON_TARGETS if platform == "cuda" else ("tpu_custom_call",)
    exp = export.export(jax.jit(fn), platforms=[platform],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call(t) for t in targets])(*args)
    # and compiled for an H100 / a v5p without one (tests/gpu_aot.py): Triton's and Mosaic's limits apply
    compile_for(h100_sharding() if platform == "cuda" else tpu_sharding(), fn, *args)
    return exp, exp.mlir_module()


def _kernel_call(text, targets):
    """The one kernel call line of the module (asserts there is exactly one custom call, and it is the kernel)."""
    calls = [ln for ln in text.splitlines() if re.search(r"custom_call @(\S+)\(", ln)]
    assert len(calls) == 1 and any(f"@{t}(" in calls[0] for t in targets), [ln[:120] for ln in calls]
    return calls[0]


def _check_pools_only_read_by_kernel(fn, args, pool_positions):
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    for i in pool_positions:
        assert readers(jaxpr, jaxpr.invars[i]) == {"pallas_call"}, (i, args[i].shape)


def _tensor_type(shape, dtype):
    mlir_dtype = {"bfloat16": "bf16", "float32": "f32"}[jnp.dtype(dtype).name]
    return f"tensor<{'x'.join(map(str, shape))}x{mlir_dtype}>"


def _decode_args(R, M, Z):
    """q_c, q_r, c_pages, kr_pages, page_table, lengths, layer (abstract)."""
    return (_sds((R, N, C), BF16), _sds((R, N, E), BF16), _sds((L, P, Z, C), BF16), _sds((L, P, Z, E), BF16),
            _sds((R, M), I32), _sds((R,), I32), _sds((), I32))


@pytest.mark.parametrize("R,M", [(64, 512), (1, 8192)])  # a decode batch at 8k context, one 128k-token sequence
def test_gpu_kernel_lowers(R, M):
    Z = 16
    args = _decode_args(R, M, Z)
    fn = lambda q_c, q_r, c, kr, t, n, layer: mla_paged_decode_attention_gpu(q_c, q_r, c, kr, t, n, scale=SCALE,
                                                                             layer=layer)
    exp, text = _export(fn, args, "cuda")
    assert exp.out_avals[0].shape == (R, N, C) and exp.out_avals[0].dtype == BF16
    call = _kernel_call(text, TRITON_TARGETS)
    for pool in args[2:4]:  # only the kernel call (and the function signature) mention the pools' types
        ty = _tensor_type(pool.shape, pool.dtype)
        uses = [ln for ln in text.splitlines() if ty in ln and "func.func" not in ln]
        assert uses and all(ln == call or re.search(r"\bcall @|\breturn\b", ln) for ln in uses), uses
    _check_pools_only_read_by_kernel(fn, args, (2, 3))
    grid = [int(re.search(rf"grid_{a} = (\d+) : i32", call).group(1)) for a in "xyz"]
    # (sequences, head blocks of 16, splits): enough programs for the H100's 132 SMs, even for one sequence
    assert grid[:2] == [R, N // 16] and grid[0] * grid[1] * grid[2] >= 132, grid


@pytest.mark.parametrize("Z", [16, 64])
def test_tpu_kernel_lowers(Z):
    R, M = 32, 8192 // Z
    args = _decode_args(R, M, Z)
    fn = lambda q_c, q_r, c, kr, t, n, layer: mla_paged_decode_attention_tpu(q_c, q_r, c, kr, t, n, scale=SCALE,
                                                                             layer=layer)
    exp, text = _export(fn, args, "tpu")
    assert exp.out_avals[0].shape == (R, N, C) and exp.out_avals[0].dtype == BF16
    _kernel_call(text, ("tpu_custom_call",))
    assert f"mla_decode_attn_tpu_paged_N{N}_Z{Z}_P{256 // Z}_J1" in text  # 256 keys of pages per grid step
    _check_pools_only_read_by_kernel(fn, args, (2, 3))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_dispatch_decode_step_lowers(platform):
    """The model's entry point (a decode-only ragged step, padding rows included) is the kernel and nothing else
    touches the pools."""
    R, T, Z = 64, 72, 16
    M = 8192 // Z
    args = (_sds((T, N, C), BF16), _sds((T, N, E), BF16), _sds((L, P, Z, C), BF16), _sds((L, P, Z, E), BF16),
            _sds((R, M), I32), _sds((R,), I32), _sds((R,), I32), _sds((R,), I32), _sds((), I32))
    fn = lambda q_c, q_r, c, kr, t, s, ql, kl, layer: mla_ragged_paged_attention(
        q_c, q_r, c, kr, t, s, ql, kl, max_q_len=1, scale=SCALE, layer=layer, platform=platform)
    exp, text = _export(fn, args, platform)
    assert exp.out_avals[0].shape == (T, N, C) and exp.out_avals[0].dtype == BF16
    _kernel_call(text, TRITON_TARGETS if platform == "cuda" else ("tpu_custom_call",))
    _check_pools_only_read_by_kernel(fn, args, (2, 3))
