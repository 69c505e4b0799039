"""The quantized matmul kernels equal their pure-JAX twin for every weight format: the Triton kernel in
Pallas interpret mode, the Mosaic TPU kernel in TPU interpret mode (out-of-bounds reads raise,
uninitialised memory is NaN); the twin itself equals x @ dequantize(W) in numpy float64.

Weights are random floats quantized with formats.quantize; shapes are small (I = 256 or 512, O = 256 or
384) but cut into several I and O blocks (and I splits), so the block loop, per-block group scales,
the nibble halves and the split-K sum are all exercised. The GPU kernel pads rows to 16 and the TPU
kernel to 8, so M in {1, 3, 8} share one compiled kernel per format.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.matmul.formats import FORMATS, dequantize, get_format, quantize
from pallas_kernels.matmul import quant_block_math, quant_gpu
from pallas_kernels.matmul.dispatch import pick_impl, quant_matmul
from pallas_kernels.matmul.quant_gpu import quant_matmul_gpu
from pallas_kernels.matmul.quant_reference import quant_matmul_reference
from pallas_kernels.matmul.quant_tpu import interpret_params, quant_matmul_tpu
from pallas_kernels.testing import TOLERANCE, rel_err

NAMES = sorted(FORMATS)
TIGHT = 1e-5
# GPU-style kernel: I = 256 in 4 (8-bit) or 2 (4-bit) I blocks, O = 384 in 3 O blocks, 2 I splits
GPU_SHAPE, GPU_KW = (256, 384), {"block_n": 128, "num_splits": 2}
# TPU kernel: x's column block must be a multiple of 128, so a 4-bit block holds 256 inputs: I = 512 gives
# 2 I blocks (4 for 8-bit; per-channel int8 then reads one scale row from 4 blocks), O = 256 in 2 O blocks
TPU_SHAPE, TPU_KW = (512, 256), {"block_n": 128}


def _block_k(name, gpu):
    bits = get_format(name).bits
    return (64 if bits == 8 else 128) if gpu else (128 if bits == 8 else 256)


def _case(name, I, O, M, seed=0, x_dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    # per-column magnitudes and an offset, so scales and mins differ between groups and columns
    w = (rng.standard_normal((I, O)) * rng.uniform(0.05, 2.0, (1, O)) + rng.uniform(-0.5, 0.5, (1, O)))
    qw = {k: jnp.asarray(v) for k, v in quantize(w.astype(np.float32), name).items()}
    x = jnp.asarray(rng.standard_normal((M, I)).astype(np.float32), x_dtype)
    return x, qw


def _float64(x, qw, name):
    """The independent check: dequantize(W) and x, both in numpy float64."""
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64) @ np.asarray(dequantize(qw, name), np.float64)


def _gpu(x, qw, name, **kw):
    return quant_matmul_gpu(x, qw, name, interpret=True, **{"block_k": _block_k(name, True), **GPU_KW, **kw})


def _tpu(x, qw, name, **kw):
    return quant_matmul_tpu(x, qw, name, interpret=True, **{"block_k": _block_k(name, False), **TPU_KW, **kw})


def test_tpu_interpret_mode_is_strict():
    p = interpret_params(True)
    assert p.out_of_bounds_reads == "raise" and p.uninitialized_memory == "nan"


@pytest.mark.parametrize("M", [1, 3, 8])
@pytest.mark.parametrize("name", NAMES)
def test_gpu_kernel_equals_reference(name, M):
    x, qw = _case(name, *GPU_SHAPE, M, seed=M)
    out, ref = _gpu(x, qw, name), quant_matmul_reference(x, qw, name)
    assert out.shape == (M, GPU_SHAPE[1]) and out.dtype == jnp.float32
    assert rel_err(out, ref) <= TIGHT
    assert rel_err(ref, _float64(x, qw, name)) <= TIGHT
    assert rel_err(out, _float64(x, qw, name)) <= TIGHT


@pytest.mark.parametrize("M", [1, 3, 8])
@pytest.mark.parametrize("name", NAMES)
def test_tpu_kernel_equals_reference(name, M):
    x, qw = _case(name, *TPU_SHAPE, M, seed=10 + M)
    out, ref = _tpu(x, qw, name), quant_matmul_reference(x, qw, name)
    assert out.shape == (M, TPU_SHAPE[1]) and out.dtype == jnp.float32
    assert rel_err(out, ref) <= TIGHT
    assert rel_err(ref, _float64(x, qw, name)) <= TIGHT
    assert rel_err(out, _float64(x, qw, name)) <= TIGHT


@pytest.mark.parametrize("name", ["int8", "q4_1"])
def test_tpu_split_i_axis(name):
    x, qw = _case(name, *TPU_SHAPE, 3, seed=4)
    assert rel_err(_tpu(x, qw, name, num_splits=2), quant_matmul_reference(x, qw, name)) <= TIGHT


@pytest.mark.parametrize("name,num_splits", [("int8", 3), ("q4_0", None), ("int4-g64", 1)])
def test_gpu_default_blocks_uneven_splits_bf16_input(name, num_splits):
    # default blocks (block_k picked from I and the group); int8: 3 splits asked over 4 I blocks -> 2 + 2;
    # q4_0: the split count picked for 2 I blocks; x in bfloat16
    x, qw = _case(name, 512, 256, 5, seed=5, x_dtype=jnp.bfloat16)
    out = quant_matmul_gpu(x, qw, name, num_splits=num_splits, interpret=True)
    assert rel_err(out, quant_matmul_reference(x, qw, name)) <= TIGHT
    assert rel_err(out, _float64(x, qw, name)) <= TIGHT


@pytest.mark.parametrize("kernel", ["gpu", "tpu"])
def test_bfloat16_compute(kernel):
    name = "int4-g32"
    x, qw = _case(name, *(GPU_SHAPE if kernel == "gpu" else TPU_SHAPE), 3, seed=6)
    fn = _gpu if kernel == "gpu" else _tpu
    out = fn(x, qw, name, compute_dtype=jnp.bfloat16)
    assert out.dtype == jnp.float32
    err = rel_err(out, quant_matmul_reference(x, qw, name))
    assert 0 < err <= TOLERANCE[jnp.bfloat16]  # rounded operands: close, but not the float32 result


# ---- the comparisons above can fail: a kernel with one wrong piece of block math is caught -------------------
def _swap_nibbles(q, bits):
    lo, hi = _ORIG["unpack_block"](q, bits)
    return [hi, lo]


def _tile_rows(s, rows):  # group rows tiled (g0 g1 g0 g1 ..) instead of repeated (g0 g0 .. g1 g1 ..)
    Gs, _, N = s.shape
    return s.reshape(1, N) if Gs == 1 else jnp.tile(s.reshape(Gs, N), (rows, 1))


def _ignore_zero(q, scale, mn, zero):
    return _ORIG["dequantize_part"](q, scale, mn, 0)


_ORIG = {k: getattr(quant_block_math, k) for k in ("unpack_block", "expand_rows", "dequantize_part")}


@pytest.mark.parametrize("attr,mutant,name", [("unpack_block", _swap_nibbles, "q4_1"),
                                              ("expand_rows", _tile_rows, "int4-g32"),
                                              ("dequantize_part", _ignore_zero, "q4_0")])
def test_a_wrong_kernel_fails_the_comparison(monkeypatch, attr, mutant, name):
    x, qw = _case(name, *GPU_SHAPE, 3, seed=7)
    ref = quant_matmul_reference(x, qw, name)
    monkeypatch.setattr(quant_block_math, attr, mutant)
    quant_gpu._run.clear_cache()
    try:
        assert rel_err(_gpu(x, qw, name), ref) > 1e-2
    finally:
        monkeypatch.undo()
        quant_gpu._run.clear_cache()
    assert rel_err(_gpu(x, qw, name), ref) <= TIGHT


# ---- argument checks name the dimension that is wrong --------------------------------------------------------
def test_errors_name_the_dimension():
    x, qw = _case("q4_0", 384, 384, 2)
    with pytest.raises(ValueError, match=r"I=384 is not a multiple of the I block block_k=256"):
        quant_matmul_gpu(x, qw, "q4_0", block_k=256, interpret=True)
    with pytest.raises(ValueError, match=r"O=384 is not a multiple of the O block block_n=256"):
        quant_matmul_gpu(x, qw, "q4_0", block_n=256, interpret=True)
    with pytest.raises(ValueError, match=r"I=256 does not match the weight's I=384"):
        quant_matmul_gpu(x[:, :256], qw, "q4_0", interpret=True)
    with pytest.raises(ValueError, match=r"I=384 is not a multiple of the I block block_k=256"):
        quant_matmul_tpu(x, qw, "q4_0", block_k=256, interpret=True)
    with pytest.raises(ValueError, match=r"block_n: TPU blocks need a multiple of 128"):
        quant_matmul_tpu(x, qw, "q4_0", block_n=64, interpret=True)
    x, qw = _case("int4-g128", 256, 200, 2)
    with pytest.raises(ValueError, match=r"output dimension O=200 is not a multiple of 16"):
        quant_matmul_gpu(x, qw, "int4-g128", interpret=True)
    with pytest.raises(ValueError, match=r"needs a 'min' array"):
        quant_matmul_gpu(x, {"q": qw["q"], "scale": qw["scale"]}, "int4-g128", interpret=True)
    with pytest.raises(ValueError, match=r"scale: expected shape \[I/g, O\] = \(2, 200\)"):
        quant_matmul_tpu(x, {**qw, "scale": qw["scale"][:1]}, "int4-g128", interpret=True)
    x, qw = _case("int4-g128", 256, 256, 2)
    with pytest.raises(ValueError, match=r"block_k=64 < g=128"):  # a group's nibble halves must share a block
        quant_matmul_gpu(x, qw, "int4-g128", block_k=64, interpret=True)
    with pytest.raises(ValueError, match=r"q: format int4-g128 stores uint8, got int8"):
        quant_matmul_gpu(x, {**qw, "q": qw["q"].astype(jnp.int8)}, "int4-g128", interpret=True)


def test_dispatch():
    assert pick_impl("auto", "cpu") == ("xla", False) and pick_impl("reference", "cpu") == ("reference", False)
    assert pick_impl("auto", "cuda") == ("gpu", False) and pick_impl("auto", "tpu") == ("tpu", False)
    assert pick_impl("gpu", "cpu") == ("gpu", True) and pick_impl("tpu", "cpu") == ("tpu", True)
    with pytest.raises(ValueError, match="impl"):
        pick_impl("triton")
    name = "q8_0"
    x, qw = _case(name, *GPU_SHAPE, 6, seed=8)
    x3 = x.reshape(2, 3, -1)  # leading dims are flattened for the kernels and restored
    ref = quant_matmul(x3, qw, name, impl="reference")
    assert ref.shape == (2, 3, GPU_SHAPE[1])
    np.testing.assert_array_equal(np.asarray(ref), np.asarray(quant_matmul_reference(x3, qw, name)))
    xla = quant_matmul(x3, qw, name)  # this CPU backend: XLA's packed path
    assert xla.shape == ref.shape and rel_err(xla, ref) <= TIGHT
    out = jax.jit(lambda a, w: quant_matmul(a, w, name, impl="gpu", block_k=64, block_n=128))(x3, qw)
    assert out.shape == ref.shape and rel_err(out, ref) <= TIGHT


@pytest.mark.parametrize("impl", ["gpu", "tpu", "xla"])
def test_a_ragged_last_group_is_padded_before_the_kernels(impl):
    """I = 448 = 3.5 groups of 128 (SmolLM2's 576 is 4.5): dispatch pads x with zeros to the stored 512 rows,
    so each kernel sees whole groups; the result is x @ the real rows of the dequantized weight."""
    name, I = "int4-g128", 448
    x, qw = _case(name, I, TPU_SHAPE[1], 3, seed=7)
    assert qw["q"].shape[0] * 2 == 512
    kw = {"block_k": 256, "block_n": 128} if impl != "xla" else {}
    out = quant_matmul(x, qw, name, impl=impl, **kw)
    want = np.asarray(x, np.float64) @ np.asarray(dequantize(qw, name, in_features=I), np.float64)
    assert rel_err(out, want) <= TIGHT and rel_err(quant_matmul_reference(x, qw, name), want) <= TIGHT
