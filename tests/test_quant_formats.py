"""Weight formats (pallas_kernels/matmul/formats.py): packing, round-to-nearest error bounds, and GGUF blocks decoded
bit for bit as the `gguf` package decodes them."""
import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from pallas_kernels.matmul.formats import (FORMATS, dequantize, from_gguf, get_format, pack_nibbles, quantize, unpack_nibbles,
                                  weight_bytes)

rng = np.random.default_rng(0)


@pytest.mark.parametrize("g", [32, 64, 128])
def test_int4_packing_round_trips_exactly(g):
    q = rng.integers(0, 16, size=(4 * g, 24)).astype(np.uint8)
    p = pack_nibbles(q, g)
    assert p.shape == (2 * g, 24) and p.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(unpack_nibbles(p, g)), q)
    # GGUF's block layout: byte j of a group = input j (low nibble) | input j + g/2 (high nibble)
    assert p[0, 0] == q[0, 0] | (q[g // 2, 0] << 4)


@pytest.mark.parametrize("name", ["int4-g32", "int4-g128", "q8_0", "q4_0"])
def test_a_ragged_last_group_is_stored_padded_and_decodes_to_the_real_rows(name):
    fmt = get_format(name)
    I, O = 176, 8  # 5.5 groups of 32, 1.375 of 128
    w = rng.standard_normal((I, O)).astype(np.float32)
    qw = quantize(w, fmt)
    I_s = fmt.stored_inputs(I)
    assert I_s % fmt.group == 0 and I_s - fmt.group < I < I_s
    assert qw["q"].shape[0] == (I_s // 2 if fmt.bits == 4 else I_s) and qw["scale"].shape == (I_s // fmt.group, O)
    assert weight_bytes(fmt, I, O) == sum(np.asarray(a).nbytes for a in qw.values())
    deq = np.asarray(dequantize(qw, fmt, in_features=I))
    assert deq.shape == (I, O)
    step = np.repeat(np.abs(np.asarray(qw["scale"], np.float32)), fmt.group, axis=0)[:I]
    tol = step / 2 + 1e-6 + 2e-3 * np.abs(w) * (fmt.scale_dtype == "float16")
    assert ((np.abs(deq - w) <= tol + step * (fmt.zero > 0)).mean()) > 0.99  # q4_0 may clip one side
    # the last group's range is the real rows' range (padding repeats the last row, adding no new extreme)
    np.testing.assert_array_equal(np.asarray(dequantize(qw, fmt))[I:], np.repeat(deq[I - 1:], I_s - I, axis=0))
    with pytest.raises(ValueError, match="in_features"):
        dequantize(qw, fmt, in_features=I_s - fmt.group)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_round_to_nearest_error_is_within_half_a_step(name):
    fmt = get_format(name)
    I, O = 256, 48
    w = rng.standard_normal((I, O)).astype(np.float32) * rng.uniform(0.01, 2.0, size=(1, O)).astype(np.float32)
    qw = quantize(w, fmt)
    deq = np.asarray(dequantize(qw, fmt))
    g = fmt.group or I
    step = np.repeat(np.abs(np.asarray(qw["scale"], np.float32)), g, axis=0)  # [I, O]: each weight's step
    err = np.abs(deq - w)
    slack = 1e-6 + 2e-3 * np.abs(w) * (fmt.scale_dtype == "float16")  # float16 scales/mins round the grid
    bound = step / 2 + slack + 1e-3 * step
    if fmt.zero:  # q4_0's grid is (q - 8) * d, q in 0..15: the largest magnitude sits on q = 0, so the opposite
        # extreme only reaches 7 steps: values beyond it clip, by at most one step
        assert (err <= step + slack).all() and (err <= bound).mean() > 0.99
    else:
        assert (err <= bound).all(), f"max err / step = {(err / step).max()}"
    if fmt.bits == 4:
        assert qw["q"].shape == (I // 2, O) and qw["q"].dtype == np.uint8
    else:
        assert qw["q"].shape == (I, O) and qw["q"].dtype == np.int8
    assert qw["scale"].shape == (I // g, O)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_decode_bit_for_bit_as_gguf_does(qtype):
    O, I = 40, 96
    w = (rng.standard_normal((O, I)) * 0.3).astype(np.float32)
    t = getattr(GGMLQuantizationType, qtype)
    raw = quants.quantize(w, t)  # GGUF's own blocks, row-major [O, I]
    want = quants.dequantize(raw, t)  # [O, I] float32
    ours = from_gguf(raw, qtype, (O, I))
    fmt = [f for f in FORMATS.values() if f.gguf_type == qtype][0]
    got = np.asarray(dequantize(ours, fmt))  # [I, O]
    np.testing.assert_array_equal(got.T.view(np.uint32), want.astype(np.float32).view(np.uint32))
    # the same bytes, re-laid out: the format's size is GGUF's size
    block, type_size = gguf.GGML_QUANT_SIZES[t]
    assert weight_bytes(fmt, I, O) == raw.nbytes == O * I // block * type_size
    assert sum(np.asarray(v).nbytes for v in ours.values()) == raw.nbytes


def test_formats_refuse_what_they_cannot_hold():
    with pytest.raises(ValueError, match="weight format 'int3'"):
        get_format("int3")
    with pytest.raises(ValueError, match="row length 48 is not a multiple of its block size 32"):
        from_gguf(np.zeros(4 * 2 * 20, np.uint8), "Q4_1", (4, 48))  # a GGUF row is whole blocks
    with pytest.raises(ValueError, match="natively supported"):
        from_gguf(np.zeros(10, np.uint8), "Q5_K", (1, 256))


def test_bytes_per_parameter():
    I, O = 4096, 4096
    assert weight_bytes("int8", I, O) == I * O + 4 * O
    assert weight_bytes("int4-g128", I, O) == I * O // 2 + (I // 128) * O * 8
    assert weight_bytes("q4_0", I, O) / (I * O) == 18 / 32


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_roofline_counts_the_bytes_the_format_stores(name):
    from infer.perf.roofline import WeightFormat
    for I, O in [(4096, 4096), (576, 1536)]:
        fmt = get_format(name)
        if I % (fmt.group or I):
            continue
        assert WeightFormat.get(name).kernel_bytes(I, O) == weight_bytes(name, I, O)
