"""The tensor-parallel cost model (infer/perf/parallel_cost.py), checked by hand-computed numbers."""
import pytest

from infer.config import ConfigError, load_config
from infer.perf.hardware import HardwareError, HardwareProfile, load_hardware
from infer.perf.roofline import decode_cost, kv_bytes_per_token
from infer.perf.parallel_cost import kv_heads_per_device, tp_step_cost, tp_table


def test_tp1_is_the_single_device_step_and_tp_splits_flops_kv_and_weights():
    cfg = load_config("llama3-8b")  # K = 8
    one = tp_step_cost(cfg, 1, 4, 1, 1024)
    assert one.per_device == decode_cost(cfg, 4, 1024)
    assert one.comm_time(load_hardware("h100")) == 0.0
    two = tp_step_cost(cfg, 2, 4, 1, 1024)
    assert two.per_device.flops == one.per_device.flops / 2
    assert two.per_device.kv_read_bytes == one.per_device.kv_read_bytes / 2
    norms = (2 * 32 + 1) * 4096 * 2  # attn_norm and mlp_norm per layer + final norm, bf16, replicated
    assert two.per_device.weight_bytes == pytest.approx((one.per_device.weight_bytes - norms) / 2 + norms)
    assert two.num_allreduces == 2 * 32 + 1 and two.allreduce_bytes == 4 * 4096 * 2


def test_kv_heads_replicate_past_k_and_stop_shrinking_the_cache():
    cfg = load_config("llama3-8b")
    assert [kv_heads_per_device(cfg, tp) for tp in (1, 2, 4, 8, 16)] == [8, 4, 2, 1, 1]
    c8, c16 = tp_step_cost(cfg, 8, 1, 1, 4096), tp_step_cost(cfg, 16, 1, 1, 4096)
    assert c16.per_device.kv_read_bytes == c8.per_device.kv_read_bytes  # one KV head per device either way
    assert c16.per_device.flops == c8.per_device.flops / 2


def test_ring_allreduce_time_by_hand():
    cfg = load_config("llama3-8b")
    hw = HardwareProfile("x", 1e15, 1e12, 80e9, interconnect_bandwidth=100e9, interconnect_latency=1e-5)
    c = tp_step_cost(cfg, 4, 2, 1, 128)
    one = 2 * 3 / 4 * (2 * 4096 * 2) / 100e9 + 1e-5
    assert c.comm_time(hw) == pytest.approx(65 * one)
    assert c.time(hw) == pytest.approx(c.per_device.time(hw) + 65 * one)


def test_tp_stops_paying_at_small_batch_and_a_model_too_big_for_one_device_is_marked():
    rows = tp_table(load_config("llama3-8b"), load_hardware("h100"), [1], [1, 2, 4, 8, 16], 4096)
    eff = [r["efficiency"] for r in rows]
    assert eff == sorted(eff, reverse=True) and eff[-1] < 0.5  # communication dominates past a few devices
    big = tp_table(load_config("llama3-70b"), load_hardware("h100"), [1], [1, 2], 4096)
    assert [r["fits"] for r in big] == [False, True]


def test_indivisible_degrees_and_missing_interconnect_are_refused_by_name():
    cfg = load_config("llama3-8b")
    with pytest.raises(ConfigError, match="n_heads: 32 is not divisible by the tensor-parallel degree 3"):
        tp_step_cost(cfg, 3, 1, 1, 16)
    # K = 12 on TP = 8: the runtime repeats the heads to lcm = 24, so the model predicts 3 per device (not a refusal)
    assert kv_heads_per_device(cfg.replace(n_heads=48, n_kv_heads=12), 8) == 3
    with pytest.raises(ConfigError, match="d_ff: 14344 is not divisible by the tensor-parallel degree 16"):
        tp_step_cost(cfg.replace(d_ff=14344), 16, 1, 1, 16)
    with pytest.raises(ConfigError, match="vocab_size"):
        tp_step_cost(cfg.replace(vocab_size=128257), 2, 1, 1, 16)
    with pytest.raises(ValueError, match="no interconnect_bandwidth"):
        tp_step_cost(cfg, 2, 1, 1, 16).comm_time(HardwareProfile("x", 1e15, 1e12, 80e9))
    with pytest.raises(HardwareError, match="interconnect_bandwidth"):
        HardwareProfile("x", 1e15, 1e12, 80e9, interconnect_bandwidth=0)


def test_mla_latent_is_replicated_on_every_device():
    v3 = load_config("deepseek-v3-dense")
    c = tp_step_cost(v3, 8, 1, 1, 4096)
    assert c.per_device.kv_read_bytes == decode_cost(v3, 1, 4096).kv_read_bytes
    assert kv_bytes_per_token(v3) == 576 * 61 * 2
