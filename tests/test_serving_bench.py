"""The serving benchmark: the workload generator's statistics and determinism, and the kind end to end at tiny size.

No timing is asserted: only that the workload is what its spec says and that every system serves it completely.
"""
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from infer.bench import serving_bench
from infer.bench.experiment import EXPERIMENTS_DIR, SpecError, load_experiment, parse_spec
from infer.bench.workload import (LengthDist, WorkloadSpec, generate_workload, parse_workload, shared_prefix_ids,
                                  workload_stats)


def _spec(**kw):
    d = dict(num_requests=20_000, rate=5.0, seed=3,
             input_len={"dist": "uniform", "min": 3, "max": 9},
             output_len={"dist": "lognormal", "mean": 40.0, "sigma": 0.5, "min": 1, "max": 100_000})
    d.update(kw)
    return parse_workload(d, "t.workload")


def test_poisson_arrivals_and_length_distributions():
    spec = _spec()
    reqs = generate_workload(spec, vocab_size=50)
    arr = np.array([r.arrival_s for r in reqs])
    gaps = np.diff(np.concatenate([[0.0], arr]))
    assert np.all(gaps >= 0) and len(reqs) == 20_000
    assert gaps.mean() == pytest.approx(1 / 5.0, rel=0.03)  # exponential gaps: mean 1 / rate ...
    assert gaps.std() == pytest.approx(1 / 5.0, rel=0.05)  # ... and std = mean
    p = np.array([len(r.prompt_ids) for r in reqs])
    assert p.min() == 3 and p.max() == 9 and p.mean() == pytest.approx(6.0, abs=0.1)  # uniform [3, 9]
    o = np.array([r.max_new_tokens for r in reqs])
    assert o.min() >= 1 and o.mean() == pytest.approx(40.0, rel=0.03)  # lognormal with mean 40
    assert np.log(o).std() == pytest.approx(0.5, rel=0.05)
    assert all(0 <= t < 50 for r in reqs[:200] for t in r.prompt_ids)
    st = workload_stats(reqs)
    assert st["requests"] == 20_000 and st["output_tokens"] == o.sum()
    assert st["mean_gap_s"] == pytest.approx(gaps.mean())


def test_lengths_are_clipped_and_the_shared_prefix_is_present():
    spec = _spec(num_requests=400, output_len={"dist": "lognormal", "mean": 30.0, "sigma": 1.5, "min": 4, "max": 64},
                 shared_prefix=7, shared_fraction=0.5)
    reqs = generate_workload(spec, vocab_size=1000)
    prefix = shared_prefix_ids(spec, 1000)
    assert len(prefix) == 7
    o = [r.max_new_tokens for r in reqs]
    assert min(o) == 4 and max(o) == 64  # sigma 1.5 reaches both bounds: clipped, never outside
    with_prefix = [r for r in reqs if r.prompt_ids[:7] == prefix]
    assert 150 < len(with_prefix) < 250  # about half
    assert all(10 <= len(r.prompt_ids) <= 16 for r in with_prefix)  # 7 + uniform [3, 9]
    assert workload_stats(reqs, prefix)["with_shared_prefix"] == len(with_prefix)
    everyone = generate_workload(dataclasses.replace(spec, shared_fraction=1.0), 1000)
    assert all(r.prompt_ids[:7] == prefix for r in everyone)


def test_workload_is_deterministic_and_rates_only_scale_arrivals():
    spec = _spec(num_requests=50, shared_prefix=4)
    a, b = generate_workload(spec, 100), generate_workload(spec, 100)
    assert a == b
    fast = generate_workload(dataclasses.replace(spec, rate=20.0), 100)
    assert [r.prompt_ids for r in fast] == [r.prompt_ids for r in a]
    assert [r.max_new_tokens for r in fast] == [r.max_new_tokens for r in a]
    assert np.allclose([4 * r.arrival_s for r in fast], [r.arrival_s for r in a])
    assert all(r.arrival_s == 0 for r in generate_workload(dataclasses.replace(spec, rate=math.inf), 100))
    assert generate_workload(dataclasses.replace(spec, seed=4), 100) != a


def test_workload_spec_names_the_bad_field():
    with pytest.raises(SpecError, match=r"t\.workload\.output_len\.max"):
        _spec(output_len={"dist": "uniform", "min": 5, "max": 2})
    with pytest.raises(SpecError, match=r"t\.workload\.input_len\.mean"):
        _spec(input_len={"dist": "lognormal", "min": 1, "max": 9})
    with pytest.raises(SpecError, match=r"t\.workload\.input_len\.dist"):
        _spec(input_len={"dist": "zipf", "min": 1, "max": 9})
    with pytest.raises(SpecError, match=r"t\.workload\.rate"):
        _spec(rate=0.0)
    with pytest.raises(SpecError, match=r"t\.workload\.shared_fraction"):
        _spec(shared_fraction=1.5)
    with pytest.raises(SpecError, match=r"t\.workload\.bogus: unknown field"):
        _spec(bogus=1)
    assert LengthDist("uniform", 2, 2).sample(np.random.default_rng(0), 3).tolist() == [2, 2, 2]


@pytest.mark.parametrize("size", ["cpu", "full"])
def test_shipped_experiment_parses(size):
    e = load_experiment(os.path.join(EXPERIMENTS_DIR, "serving_bench.yaml"), size)
    s = parse_spec(serving_bench.ServingBenchSpec, e.spec)
    assert isinstance(s.workload, WorkloadSpec) and set(s.systems) == set(serving_bench.SYSTEMS)
    assert s.workload.output_len.dist == "lognormal"
    with pytest.raises(SpecError, match=r"serving_bench\.systems"):
        parse_spec(serving_bench.ServingBenchSpec, {**e.spec, "systems": ["engine", "vllm"]})


def test_static_batches_fit_the_memory():
    cfg = type("Cfg", (), {"max_seq_len": 2048})()
    W = lambda p, o: generate_workload(_spec(num_requests=1, input_len={"dist": "uniform", "min": p, "max": p},
                                             output_len={"dist": "uniform", "min": o, "max": o}), 10)[0]
    short, long_ = W(10, 10), W(10, 100)  # generate reserves S = 32 and S = 256 positions per row
    assert serving_bench.fit_batch(cfg, [short] * 9, 256) == 8  # 8 rows * 32 slots
    assert serving_bench.fit_batch(cfg, [short] * 9, 255) == 4  # bucket(5..7) = 8 rows would not fit
    assert serving_bench.fit_batch(cfg, [short, long_, short], 512) == 2  # the long one sets S = 256 for the batch
    assert serving_bench.fit_batch(cfg, [long_], 128) == 0
    assert serving_bench.fit_batch(cfg, [short] * 9, 256, max_batch=1) == 1
    # kv waste bookkeeping: 1 row, prompt 10, 3 outputs -> 2 decode steps holding 10, 11, 12 tokens of 32 slots
    held, reserved, end = serving_bench.kv_waste_of_batch([W(10, 3)], 1, 32, 2)
    assert (held, reserved, end) == (33, 96, 12)


def test_serving_bench_runs_every_system_to_the_same_tokens(tmp_path):
    spec = {"name": "t", "kind": "serving_bench", "model": "tiny", "rates": [200.0, math.inf],
            "workload": {"num_requests": 6, "input_len": {"dist": "uniform", "min": 2, "max": 8},
                         "output_len": {"dist": "lognormal", "mean": 6.0, "sigma": 0.8, "min": 1, "max": 12},
                         "shared_prefix": 8, "shared_fraction": 1.0, "seed": 0},
            "num_pages": 16, "page_size": 8, "max_num_seqs": 4, "max_num_batched_tokens": 4}
    rows = serving_bench.run(spec, str(tmp_path))
    expected = sum(r.max_new_tokens for r in generate_workload(parse_workload(spec["workload"]), 256))
    assert [(r["rate"], r["system"]) for r in rows] == [(rate, s) for rate in (200.0, math.inf)
                                                        for s in serving_bench.SYSTEMS]
    for r in rows:
        assert r["requests"] == 6 and r["out_tokens"] == expected and r["complete"], r
        assert r["same_output"] == 1.0, r  # greedy float32: every system produces the same ids
        assert 0 <= r["kv_waste"] < 1 and r["ttft_p99_ms"] >= r["ttft_p50_ms"] > 0
        assert r["kv_slots"] == 128 and r["tok_s"] > 0
    engine = [r for r in rows if r["system"] == "engine"]
    assert all(r["prefix_hit"] > 0 for r in engine)  # the 8-token prefix is one full page, cached after the first
    assert all(r["prefix_hit"] == 0 and r["preempt"] == 0 for r in rows if r["system"] != "engine")
    assert all(r["batch_mean"] == 1.0 for r in rows if r["system"] == "one_at_a_time")
    static = {r["rate"]: r for r in rows if r["system"] == "static"}
    assert static[math.inf]["batch_max"] > 1 and static[math.inf]["vs_static"] == 1.0
    assert sorted(os.listdir(tmp_path)) == ["serving.json", "serving.md", "serving.png"]
    saved = json.loads((tmp_path / "serving.json").read_text())
    assert len(saved["rows"]) == 6 and "kv_waste" in saved["definitions"]
    assert len(saved["per_request"]["200.0/engine"]) == 6
    md = (tmp_path / "serving.md").read_text()
    assert "| rate | system |" in md and "TTFT" in md
