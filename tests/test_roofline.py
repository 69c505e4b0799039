"""The roofline performance model: the lecture's numbers exactly, and the refined model against real pytrees."""
import math

import jax
import numpy as np
import pytest

from infer import init_cache, init_params, load_config
from infer.perf import roofline as rl
from infer.perf.hardware import HardwareError, HardwareProfile, available_hardware, load_hardware, profile_for_device_kind

# The table of lecture-facts.md: (K, B) -> params, KV/seq bytes, memory bytes, latency ms, throughput tok/s, fits.
LECTURE_TABLE = [
    (40, 1, 13_015_449_600, 838_860_800, 26_869_760_000, 8.0208, 124.68, True),
    (40, 64, 13_015_449_600, 838_860_800, 79_717_990_400, 23.7964, 2_689.48, True),
    (40, 256, 13_015_449_600, 838_860_800, 240_779_264_000, 71.8744, 3_561.77, False),
    (8, 64, 11_337_728_000, 167_772_160, 33_412_874_240, 9.9740, 6_416.69, True),
    (8, 256, 11_337_728_000, 167_772_160, 65_625_128_960, 19.5896, 13_068.16, True),
]


@pytest.mark.parametrize("K,B,params,kv_seq,memory,latency_ms,throughput,fits", LECTURE_TABLE)
def test_lecture_llama2_13b_table(K, B, params, kv_seq, memory, latency_ms, throughput, fits):
    h100 = load_hardware("h100")
    cfg = load_config("llama2-13b").replace(n_kv_heads=K)
    s = rl.lecture_stats(cfg, batch_size=B, seq_len=1024, bandwidth=3.35e12)
    assert s.num_params == params
    assert s.kv_bytes_per_seq == kv_seq
    assert s.memory == memory
    assert round(s.latency * 1e3, 4) == latency_ms
    assert round(s.throughput, 2) == throughput
    assert (s.memory <= h100.memory_bytes) is fits
    # A HardwareProfile gives the same answer as its bandwidth.
    assert rl.lecture_stats(cfg, B, 1024, h100) == s


@pytest.mark.parametrize("name,published", [("llama2-7b", 6.74e9), ("llama3-8b", 8.03e9), ("mistral-7b", 7.24e9)])
def test_param_count_matches_published_size(name, published):
    n = rl.num_params(load_config(name))
    assert abs(n - published) / published < 0.005, (name, n, published)


SMALL_VARIANTS = [
    ("tiny", {}),
    ("small", {}),
    ("tiny", {"tie_embeddings": True}),
    ("tiny", {"qkv_bias": True, "qk_norm": True}),
    ("tiny", {"n_kv_heads": 6}),  # MHA
    ("tiny", {"n_kv_heads": 1}),  # MQA
    ("tiny", {"dtype": "bfloat16"}),
]


@pytest.mark.parametrize("name,overrides", SMALL_VARIANTS)
def test_param_count_and_bytes_equal_init_params(name, overrides):
    cfg = load_config(name, **overrides)
    params = init_params(cfg, jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves(params)
    assert rl.num_params(cfg) == sum(int(x.size) for x in leaves)
    assert rl.param_bytes(cfg) == sum(int(x.nbytes) for x in leaves)


def _kernel_in_out(path, shape):
    """(in, out) features of a kernel leaf of init_params, from its name and the documented layout."""
    names = [getattr(k, "key", None) for k in path]
    if "lm_head" in names:
        return shape[0], shape[1]
    dims = shape[1:]  # drop L
    n_in = 2 if "o" in names else 1  # o: [L, N, H, D]; q/k/v: [L, D, N|K, H]; mlp: [L, D|F, F|D]
    return int(np.prod(dims[:n_in])), int(np.prod(dims[n_in:]))


@pytest.mark.parametrize("fmt,bits,group,scale", [("int8", 8, None, 4), ("int4", 4, 128, 4)])
@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True}])
def test_quantized_param_bytes_count_scale_overhead(fmt, bits, group, scale, overrides):
    cfg = load_config("tiny", **overrides)
    params = init_params(cfg, jax.random.PRNGKey(0))
    expected = 0.0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if getattr(path[-1], "key", None) == "kernel":
            L = 1 if any(getattr(k, "key", None) == "lm_head" for k in path) else x.shape[0]
            i, o = _kernel_in_out(path, x.shape)
            groups = 1 if group is None else -(-i // group)
            expected += L * (i * o * bits / 8 + groups * o * scale)
        else:  # embedding, norms, biases stay bf16
            expected += x.size * 2
    assert rl.param_bytes(cfg, fmt) == expected


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 6}, {"n_kv_heads": 1}, {"dtype": "bfloat16"}])
def test_kv_bytes_per_token_equal_cache_pytree(overrides):
    cfg = load_config("tiny", **overrides)
    B, S = 3, 20  # S rounds up to 2 pages of 16
    cache = init_cache(cfg, B, S)
    kv_nbytes = sum(int(x.nbytes) for x in cache["kv"].values())
    assert rl.kv_bytes_per_token(cfg) * B * 32 == kv_nbytes
    assert rl.kv_cache_bytes(cfg, B, S) == sum(int(x.nbytes) for x in jax.tree_util.tree_leaves(cache))
    assert rl.memory_bytes(cfg, B, S) == rl.param_bytes(cfg) + rl.kv_cache_bytes(cfg, B, S)


def test_int8_kv_bytes_per_token_equal_the_int8_cache_pytree():
    cfg = load_config("tiny")
    B, S = 3, 32
    cache = init_cache(cfg, B, S, dtype="int8")
    kv_nbytes = sum(int(x.nbytes) for x in cache["kv"].values())
    assert rl.kv_bytes_per_token(cfg, "int8") * B * S == kv_nbytes


def test_kv_formats():
    cfg = load_config("llama3-8b")
    L, K, H = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
    assert rl.kv_bytes_per_token(cfg, "bfloat16") == L * 2 * K * H * 2
    assert rl.kv_bytes_per_token(cfg, "float8_e4m3fn") == L * 2 * K * H
    # int8: one float32 scale per (layer, token, kv head) for k and for v, as cache.py documents.
    assert rl.kv_bytes_per_token(cfg, "int8") == L * 2 * K * (H + 4)


def test_refined_decode_differs_from_lecture_by_the_documented_terms():
    """Refined bytes/step - lecture memory = norms - (embedding table - gathered rows) + KV write of the new token."""
    h100 = load_hardware("h100")
    for name in ("llama2-13b", "llama3-8b"):
        cfg = load_config(name)
        D, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
        norms = 2 * D * L + D
        assert rl.num_params(cfg) - rl.lecture_num_params(cfg) == norms
        for B, S in ((1, 1024), (64, 1024), (256, 4096)):
            lec = rl.lecture_stats(cfg, B, S, h100)
            cost = rl.decode_cost(cfg, B, S, "bfloat16", "bfloat16")
            kv_tok = lec.kv_bytes_per_seq // S
            expected = lec.memory + 2 * norms - 2 * V * D + 2 * B * D + B * kv_tok
            assert cost.bytes == expected
            # Memory-bound decode: the refined time is bytes / bandwidth.
            pred = rl.predict_decode(cfg, h100, B, S)
            assert pred.bound == "memory"
            assert pred.time == pytest.approx(expected / h100.memory_bandwidth, rel=1e-12)
    # Tied embeddings: one table (counted once in params) that is read in full for the logits.
    cfg = load_config("llama2-13b", tie_embeddings=True)
    assert rl.lecture_num_params(cfg) - rl.num_params(cfg) == cfg.vocab_size * cfg.d_model - (2 * 5120 * 40 + 5120)
    untied = rl.decode_cost(cfg.replace(tie_embeddings=False), 8, 512)
    tied = rl.decode_cost(cfg, 8, 512)
    assert untied.weight_bytes == tied.weight_bytes  # lm_head [D, V] read either way


def test_mlp_and_attention_intensity_limits():
    h100 = load_hardware("h100")
    # X @ W: 2BDF / (2BD + 2DF + 2BF) -> B for B << D, F.
    m = rl.matmul_op(4, 8192, 28672)
    assert m.intensity == 2 * 4 * 8192 * 28672 / (2 * (4 * 8192 + 8192 * 28672 + 4 * 28672))
    assert m.intensity == pytest.approx(4, rel=2e-3)
    # SwiGLU MLP: 6BTDF / (4BTD + 4BTF + 6DF) -> BT.
    for B, T in ((1, 1), (8, 1), (2, 16)):
        op = rl.mlp_op(B, T, 65536, 262144)
        assert op.flops == 6 * B * T * 65536 * 262144
        assert op.bytes == 4 * B * T * 65536 + 4 * B * T * 262144 + 6 * 65536 * 262144
        assert op.intensity == pytest.approx(B * T, rel=1e-3)
    # Attention (MHA, D = NH): 4BSTD / (4BSD + 4BTD) = ST / (S + T), for any B.
    for B in (1, 64):
        for S, T in ((1024, 1024), (1024, 1), (4096, 1), (100, 7)):
            op = rl.attention_op(B, S, T, N=40, H=128)
            assert op.intensity == pytest.approx(S * T / (S + T), rel=1e-12)
    assert rl.attention_op(1, 2048, 2048, 40, 128).intensity == pytest.approx(1024)  # prefill: S/2
    assert rl.attention_op(256, 4096, 1, 40, 128).intensity < 1  # generation
    # Verdicts on H100 (intensity ~295).
    assert h100.intensity == pytest.approx(295, abs=0.5)
    cfg = load_config("llama2-13b")
    assert rl.attention_cost(cfg, 1, 1024, 1024).bound(h100) == "compute"
    assert rl.attention_cost(cfg, 256, 1024, 1).bound(h100) == "memory"
    assert rl.mlp_cost(cfg, 1, 1).bound(h100) == "memory"
    assert rl.mlp_cost(cfg, 1, 4096).bound(h100) == "compute"
    # GQA shrinks the KV bytes, not the FLOPs.
    gqa = rl.attention_cost(cfg.replace(n_kv_heads=8), 1, 1024, 1)
    assert gqa.flops == rl.attention_cost(cfg, 1, 1024, 1).flops
    assert gqa.intensity > rl.attention_cost(cfg, 1, 1024, 1).intensity


def test_prefill_compute_bound_decode_memory_bound():
    h100 = load_hardware("h100")
    cfg = load_config("llama2-13b")
    pre = rl.predict_prefill(cfg, h100, 1, 2048)
    dec = rl.predict_decode(cfg, h100, 1, 2048)
    assert pre.bound == "compute" and pre.time == pre.compute_time > pre.memory_time
    assert dec.bound == "memory" and dec.time == dec.memory_time > dec.compute_time
    assert dec.tokens_per_s == 1 / dec.time
    # Prefill FLOPs: 2·(matmul weights)·tokens + causal attention + logits of the last token only.
    blocks = sum(p.num_params for p in rl.param_groups(cfg) if p.kind == "linear" and p.name != "lm_head")
    S = 2048
    attn = cfg.n_layers * 4 * cfg.n_heads * cfg.head_dim * S * (S + 1) // 2
    assert pre.cost.flops == 2 * S * blocks + attn + 2 * cfg.d_model * cfg.vocab_size


def test_sliding_window_caps_attention_reads():
    cfg = load_config("mistral-7b")
    short, long_ = rl.decode_cost(cfg, 1, 4096), rl.decode_cost(cfg, 1, 16384)
    assert long_.kv_read_bytes == short.kv_read_bytes == 4096 * rl.kv_bytes_per_token(cfg)
    assert long_.flops == short.flops


def test_max_batch_size_is_the_largest_that_fits():
    h100 = load_hardware("h100")
    for name, S in (("llama2-13b", 1024), ("llama3-8b", 8192), ("llama2-70b", 1024)):
        cfg = load_config(name)
        b = rl.max_batch_size(cfg, h100, S)
        if b == 0:
            assert rl.param_bytes(cfg) + rl.kv_bytes_per_sequence(cfg, S) > h100.memory_bytes
            continue
        assert rl.memory_bytes(cfg, b, S) <= h100.memory_bytes < rl.memory_bytes(cfg, b + 1, S)
    assert rl.max_batch_size(load_config("llama2-70b"), h100, 1024) == 0  # 138 GB of bf16 weights


def test_utilization_of_a_measured_step():
    h100 = load_hardware("h100")
    cost = rl.decode_cost(load_config("llama3-8b"), 16, 2048)
    u = rl.utilization(cost, 0.010, h100)
    assert u.mbu == pytest.approx(cost.bytes / 0.010 / 3.35e12)
    assert u.mfu == pytest.approx(cost.flops / 0.010 / 989e12)
    # A step that takes exactly the predicted (memory-bound) time uses 100% of the bandwidth.
    assert rl.utilization(cost, cost.time(h100), h100).mbu == pytest.approx(1.0)
    with pytest.raises(ValueError, match="seconds"):
        rl.utilization(cost, 0.0, h100)


def test_hardware_profiles_validate_and_load():
    names = available_hardware()
    assert {"h100", "h200", "a100", "tpu-v5e", "tpu-v6e"} <= set(names)
    for n in names:
        hw = load_hardware(n)
        assert hw.intensity > 0
    with pytest.raises(HardwareError, match="memory_bandwidth"):
        HardwareProfile("x", 1e12, -1.0, 1e9)
    with pytest.raises(HardwareError, match="peak_flop"):
        HardwareProfile.from_dict({"name": "x", "peak_flop": 1, "memory_bandwidth": 1, "memory_bytes": 1})
    with pytest.raises(HardwareError, match="memory_bytes"):
        HardwareProfile.from_dict({"name": "x", "peak_flops_bf16": 1, "memory_bandwidth": 1})
    with pytest.raises(FileNotFoundError, match="h100"):
        load_hardware("no-such-device")
    assert profile_for_device_kind("NVIDIA H100 80GB HBM3").name == load_hardware("h100").name
    assert profile_for_device_kind("TPU v5 lite").name == load_hardware("tpu-v5e").name
    assert profile_for_device_kind("cpu") is None
    assert math.isclose(HardwareProfile.measured("cpu", 1e10, 1e11, 1e9).intensity, 10.0)


def test_formats_validate():
    with pytest.raises(ValueError, match="scale_bytes"):
        rl.WeightFormat("bad", 8)
    with pytest.raises(ValueError, match="unknown"):
        rl.WeightFormat.get("int3")
    with pytest.raises(ValueError, match="unknown"):
        rl.KVFormat.get("int2")
