"""Every GPU Pallas kernel lowers for CUDA, and compiles for an H100, on this CPU-only machine, at Llama-3-8B shapes.

jax.export with platforms=["cuda"] runs the real Triton lowering (not interpret
mode) on abstract arguments, so no memory is allocated for the multi-GiB pools.
The Triton custom call is not on jax.export's list of stable targets ("Triton IR
does not guarantee stability"), so its safety check is disabled by name: jaxlib
<= 0.10.2 emits "__gpu$xla.gpu.triton" (Triton IR, compiled by XLA), newer jaxlib
compiles the kernel at lowering time and emits "triton_kernel_call_ffi".

Checked on the lowered module: exactly one kernel call, and no op but that call
touches the page pools or the cache (no slice, transpose, gather or copy of them:
the kernels compute layer/page addresses themselves). The quantized matmul is
checked the same way at Llama-3-8B's MLP decode shapes: the packed weight reaches
the kernel untouched (never dequantized or copied by XLA).

Each exported function is also compiled by XLA's CUDA pipeline for sm_90a without a GPU (tests/gpu_aot.py):
Triton runs, so a block that does not fit the H100's shared memory fails here, as the last test shows.
"""
import re

import jax
import jax.numpy as jnp
import pytest
from jax import export
from gpu_aot import compile_for, h100_sharding

from pallas_kernels.matmul.formats import get_format
from pallas_kernels.attention.decode_gpu import decode_attention_gpu, paged_decode_attention_gpu
from pallas_kernels.attention.ragged_gpu import RAGGED_TARGET_PROGRAMS, ragged_paged_attention_gpu
from pallas_kernels.attention.splits import choose_num_splits
from pallas_kernels.matmul.quant_gpu import quant_matmul_gpu

TRITON_TARGETS = ("__gpu$xla.gpu.triton", "triton_kernel_call_ffi")
# Llama-3-8B attention: 32 query heads over 8 KV heads of dim 128, 32 layers
L, N, K, H = 32, 32, 8, 128
Z, P = 16, 4096  # page size, pool pages (2 GiB of bf16 keys per pool)
S = jax.ShapeDtypeStruct
i32 = jnp.int32


def _export(fn, *args):
    exp = export.export(jax.jit(fn), platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call(t) for t in TRITON_TARGETS])(*args)
    assert exp.platforms == ("cuda",)
    compile_for(h100_sharding(), fn, *args)  # Triton -> PTX -> cubin for sm_90a: limits are checked here
    return exp, exp.mlir_module()


def _tensor_type(shape, dtype):
    mlir_dtype = {"bfloat16": "bf16", "int8": "i8", "float32": "f32", "uint8": "ui8",
                  "float16": "f16"}[jnp.dtype(dtype).name]
    return f"tensor<{'x'.join(map(str, shape))}x{mlir_dtype}>"


def _check_kernel_only_user(text, *arrays):
    """One Triton kernel call, and it is the only op that reads any of `arrays` (by their tensor types)."""
    calls = [ln for ln in text.splitlines() if re.search(r"custom_call @(\S+)\(", ln)]
    kernel_calls = [ln for ln in calls if any(f"@{t}(" in ln for t in TRITON_TARGETS)]
    assert len(kernel_calls) == 1, [ln[:120] for ln in calls]
    for a in arrays:
        ty = _tensor_type(a.shape, a.dtype)
        uses = [ln for ln in text.splitlines() if ty in ln and "func.func" not in ln]
        allowed = kernel_calls + [ln for ln in uses if re.search(r"\bcall @|\breturn\b", ln)]
        assert uses and all(ln in allowed for ln in uses), [ln[:160] for ln in uses]
    return kernel_calls[0]


def _pools(dtype, lead):
    """k, v (and int8 scales) of shape lead + (K, Z_or_S, H), as abstract arrays."""
    k = S(lead + (H,), dtype)
    scales = [S(lead, jnp.float32)] * 2 if dtype == jnp.int8 else []
    return [k, k] + scales


@pytest.mark.parametrize("pool_dtype", [jnp.bfloat16, jnp.int8])
def test_contiguous_decode_lowers(pool_dtype):
    B, Sx = 8, 4096
    arrays = _pools(pool_dtype, (L, B, K, Sx))

    def fn(q, lens, layer, k, v, *scales):
        ks, vs = scales or (None, None)
        return decode_attention_gpu(q, k, v, lens, layer=layer, k_scale=ks, v_scale=vs, sliding_window=1024)

    exp, text = _export(fn, S((B, N, H), jnp.bfloat16), S((B,), i32), S((), i32), *arrays)
    assert exp.out_avals[0].shape == (B, N, H) and exp.out_avals[0].dtype == jnp.bfloat16
    _check_kernel_only_user(text, *arrays)


@pytest.mark.parametrize("pool_dtype", [jnp.bfloat16, jnp.int8])
def test_paged_decode_lowers(pool_dtype):
    B, M = 32, 512  # 8k-token tables
    arrays = _pools(pool_dtype, (L, P, K, Z))

    def fn(q, tables, lens, layer, k, v, *scales):
        ks, vs = scales or (None, None)
        return paged_decode_attention_gpu(q, k, v, tables, lens, layer=layer, k_scale=ks, v_scale=vs, softcap=50.0)

    exp, text = _export(fn, S((B, N, H), jnp.bfloat16), S((B, M), i32), S((B,), i32), S((), i32), *arrays)
    assert exp.out_avals[0].shape == (B, N, H)
    _check_kernel_only_user(text, *arrays)


@pytest.mark.parametrize("pool_dtype,R,T,max_q_len", [
    (jnp.bfloat16, 64, 64, 1),  # a decode-only step
    (jnp.bfloat16, 16, 2048, 512),  # mixed prefill chunks and decode rows
    (jnp.int8, 8, 1024, 1024),
])
def test_ragged_lowers(pool_dtype, R, T, max_q_len):
    M = 512
    arrays = _pools(pool_dtype, (L, P, K, Z))

    def fn(q, table, start, q_len, kv_len, layer, k, v, *scales):
        ks, vs = scales or (None, None)
        return ragged_paged_attention_gpu(q, k, v, table, start, q_len, kv_len, max_q_len=max_q_len, layer=layer,
                                          k_scale=ks, v_scale=vs, sliding_window=4096, softcap=50.0)

    exp, text = _export(fn, S((T, N, H), jnp.bfloat16), S((R, M), i32), S((R,), i32), S((R,), i32), S((R,), i32),
                        S((), i32), *arrays)
    assert exp.out_avals[0].shape == (T, N, H) and exp.out_avals[0].dtype == jnp.bfloat16
    call = _check_kernel_only_user(text, *arrays)
    # the grid is (query blocks, K, R): 64 packed rows = 16 tokens of G = 4 heads per program (1 when decoding)
    assert re.search(rf"grid_y = {K} : i32, grid_z = {R} : i32", call), call[:300]
    assert f"grid_x = {-(-max_q_len // 16)} : i32" in call
    # the output is the aliased zero buffer (padding rows stay zero): one output aliased to an operand
    assert "output_operand_aliases" in call


def test_ragged_split_k_lowers_for_a_small_grid():
    # two sequences of a mixed step, one decoding a long context: 2 query blocks x K x R = 32 programs, under the
    # 132 SMs, so the kernel cuts each program's keys into J = 5 parts (splits.choose_num_splits toward one program
    # per SM) and merges them
    R, T, max_q_len, M = 2, 64, 32, 512
    arrays = _pools(jnp.bfloat16, (L, P, K, Z))

    def fn(q, table, start, q_len, kv_len, layer, k, v):
        return ragged_paged_attention_gpu(q, k, v, table, start, q_len, kv_len, max_q_len=max_q_len, layer=layer)

    exp, text = _export(fn, S((T, N, H), jnp.bfloat16), S((R, M), i32), S((R,), i32), S((R,), i32), S((R,), i32),
                        S((), i32), *arrays)
    assert exp.out_avals[0].shape == (T, N, H) and exp.out_avals[0].dtype == jnp.bfloat16
    call = _check_kernel_only_user(text, *arrays)
    J = choose_num_splits(2 * K * R, M * Z // 64, target_programs=RAGGED_TARGET_PROGRAMS)
    assert J == 5 and f"grid_x = {2 * J} : i32" in call and re.search(rf"grid_y = {K} : i32, grid_z = {R} : i32", call)
    assert "_splits5" in call  # the kernel's name says it


# Llama-3-8B MLP at decode (M = 8 rows): gate/up [4096 -> 14336] and down [14336 -> 4096]
MLP_SHAPES = [(4096, 14336), (14336, 4096)]


def _quant_weight(name, I, O):
    """A format's pytree for a [I, O] weight, as abstract arrays."""
    fmt = get_format(name)
    g = fmt.group or I
    sdt = jnp.dtype(fmt.scale_dtype)
    qw = {"q": S((I // 2, O), jnp.uint8) if fmt.bits == 4 else S((I, O), jnp.int8), "scale": S((I // g, O), sdt)}
    if fmt.has_min:
        qw["min"] = S((I // g, O), sdt)
    return qw


@pytest.mark.parametrize("I,O", MLP_SHAPES)
@pytest.mark.parametrize("fmt", ["int8", "int4-g128", "q4_0", "q8_0"])
def test_quant_matmul_lowers(fmt, I, O):
    M = 8
    qw = _quant_weight(fmt, I, O)
    exp, text = _export(lambda x, w: quant_matmul_gpu(x, w, fmt), S((M, I), jnp.bfloat16), qw)
    assert exp.out_avals[0].shape == (M, O) and exp.out_avals[0].dtype == jnp.float32
    call = _check_kernel_only_user(text, qw["q"])  # the packed bytes go to the kernel as they are stored
    grid = [int(re.search(rf"grid_{a} = (\d+) : i32", call).group(1)) for a in "xyz"]
    # (M blocks, O blocks of 128, I splits): enough programs for the H100's 132 SMs, even for O = 4096
    assert grid[0] == 1 and grid[1] == O // 128 and grid[0] * grid[1] * grid[2] >= 132, grid


def test_an_oversized_block_fails_to_compile_for_the_h100():
    """256 pages of 16 keys per block: k and v tiles of 4096 x 128 bf16 need 3.3 MB of shared memory, past the
    H100's 227 KB; the compile is refused (lowering alone would accept it). The default block compiles."""
    arrays = _pools(jnp.bfloat16, (L, P, K, Z))
    args = (S((8, N, H), jnp.bfloat16), S((8, 512), i32), S((8,), i32), *arrays)
    fn = lambda ppb: lambda q, t, n, k, v: paged_decode_attention_gpu(q, k, v, t, n, pages_per_block=ppb,
                                                                      num_splits=1)
    compile_for(h100_sharding(), fn(None), *args)
    with pytest.raises(Exception, match="[Ss]hared memory size limit exceeded"):
        compile_for(h100_sharding(), fn(256), *args)


# Llama-3-8B's decode projections at one row: q|k|v [4096 -> 6144] with the attention norm folded in, o [4096 ->
# 4096], gate|up [4096 -> 2 x 14336] with the MLP norm and SwiGLU folded in, down [14336 -> 4096]
GEMV_SHAPES = [(4096, 6144, "norm"), (4096, 4096, ""), (4096, 2 * 14336, "norm_swiglu"), (14336, 4096, "")]


@pytest.mark.parametrize("K,N,fold", GEMV_SHAPES)
def test_decode_gemv_lowers(K, N, fold):
    """One kernel call, the only reader of the weight (no split-K partials, no reduction after it), its grid about
    one program per SM and, compiled for sm_90a, within the H100's shared memory."""
    from pallas_kernels.gemv.gemv_gpu import choose_block_n, gemv_gpu
    bf = jnp.bfloat16
    w = S((K, N), bf)
    if fold:
        fn = lambda x, w, r, wn: gemv_gpu(x, w, r, wn, eps=1e-5, swiglu="swiglu" in fold)
        exp, text = _export(fn, S((1, K), bf), w, S((1, K), bf), S((K,), bf))
        assert [a.shape for a in exp.out_avals] == [(1, K), (1, N // 2 if "swiglu" in fold else N)]  # h, y
    else:
        exp, text = _export(lambda x, w: gemv_gpu(x, w), S((1, K), bf), w)
        assert exp.out_avals[0].shape == (1, N) and exp.out_avals[0].dtype == bf
    call = _check_kernel_only_user(text, w)
    n_cols = N // 2 if "swiglu" in fold else N
    assert f"grid_x = {n_cols // choose_block_n(n_cols)} : i32" in call and n_cols // choose_block_n(n_cols) >= 132
    assert f"gemv{'_' + fold if fold else ''}_K{K}_N{N}" in call
