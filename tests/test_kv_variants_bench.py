"""The KV-variants benchmark runs end to end on a tiny model: matched params, exact KV bytes, ordered capacity."""
import json
import os

import pytest

from infer.bench.experiment import EXPERIMENTS_DIR, SpecError, load_experiment, parse_spec
from infer.bench.kv_variants_bench import KVVariantsBenchSpec, match_d_ff, run
from infer.perf import roofline

TINY = {
    "name": "kv_variants_bench", "kind": "kv_variants_bench", "model": "tiny",
    "model_overrides": {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "d_ff": 128,
                        "vocab_size": 256},
    "dtype": "float32",
    "variants": {"mha": {"n_kv_heads": 4}, "gqa": {},
                 "mla": {"kv_lora_rank": 16, "qk_nope_head_dim": 12, "qk_rope_head_dim": 4, "v_head_dim": 16,
                         "n_kv_heads": 4}},
    "d_ff_multiple": 8, "batch_sizes": [1], "context_lens": [8, 16], "warmup": 1, "repeats": 1,
    "memory_budget_gb": 0.01, "memory_context": 64, "probe_bytes": 8 << 20, "probe_matmul": 128, "plot": True,
}


def test_kv_variants_bench_compares_every_variant(tmp_path):
    rows = run(dict(TINY), str(tmp_path))
    assert [(r["variant"], r["S"]) for r in rows] == [(v, S) for v in ("mha", "gqa", "mla") for S in (8, 16)]
    assert all(r["status"] == "ok" and r["step_ms"] > 0 and r["step_pred_ms"] > 0 for r in rows)
    by = {r["variant"]: r for r in rows if r["S"] == 16}
    for r in rows:
        assert abs(r["params_vs_ref"] - 1) < 0.03, r  # d_ff re-chosen: parameters matched within 3 %
        assert r["kv_B_tok_pools"] == r["kv_B_tok"], r  # the real pools take exactly the roofline's bytes
    assert by["mha"]["step_vs_ref"] == 1.0 and by["mla"]["step_vs_ref"] > 0
    assert by["mla"]["kv_B_tok"] < by["gqa"]["kv_B_tok"] < by["mha"]["kv_B_tok"]
    assert by["mla"]["fit_B"] > by["gqa"]["fit_B"] > by["mha"]["fit_B"] > 0
    assert by["mla"]["cache"] == "C=16+E=4" and by["gqa"]["cache"] == "K=2xH=16"
    report = json.load(open(tmp_path / "kv_variants.json"))
    assert [v["params"] for v in report["variants"]] == [v["params_roofline"] for v in report["variants"]]
    assert len(report["rows"]) == 6 and os.path.exists(tmp_path / "kv_variants.png")
    assert "## Variants" in open(tmp_path / "kv_variants.md").read()


def test_match_d_ff_picks_the_closest_multiple():
    s = parse_spec(KVVariantsBenchSpec, TINY)
    cfgs = s.variant_configs()
    target = roofline.num_params(cfgs["mha"])
    for v in ("gqa", "mla"):
        assert match_d_ff(cfgs[v], target, 8) == cfgs[v]
        best = abs(roofline.num_params(cfgs[v]) - target)
        assert cfgs[v].d_ff % 8 == 0
        for f in (cfgs[v].d_ff - 8, cfgs[v].d_ff + 8):  # neither neighbour is closer
            assert abs(roofline.num_params(cfgs[v].replace(d_ff=f)) - target) >= best
    assert cfgs["mha"].d_ff == 128  # the reference keeps the base's d_ff


def test_spec_names_bad_variants():
    with pytest.raises(SpecError, match=r"variants\.gqa"):
        parse_spec(KVVariantsBenchSpec, {**TINY, "variants": {"mha": {}, "gqa": {"n_kv_head": 2}}})
    with pytest.raises(SpecError, match=r"reference"):
        parse_spec(KVVariantsBenchSpec, {**TINY, "reference": "mqa"})
    with pytest.raises(SpecError, match=r"memory_overrides"):
        parse_spec(KVVariantsBenchSpec, {**TINY, "memory_overrides": {"mqa": {}}})


@pytest.mark.parametrize("size", ["cpu", "full"])
def test_the_shipped_experiment_parses(size):
    exp = load_experiment(os.path.join(EXPERIMENTS_DIR, "kv_variants_bench.yaml"), size=size)
    s = parse_spec(KVVariantsBenchSpec, exp.spec)
    assert exp.kind == "kv_variants_bench" and list(s.variants)[:3] == ["mha", "gqa", "mla"]
    cfgs, mem = s.variant_configs(), s.memory_configs()
    assert cfgs["mla"].is_mla and mem["mla"].is_mla
    assert all(abs(roofline.num_params(c) / roofline.num_params(cfgs["mha"]) - 1) < 0.03 for c in cfgs.values())
    fit = {v: roofline.max_batch_size(c, _budget(s), s.memory_context) for v, c in mem.items()}
    assert fit["mla"] > fit["gqa"] > fit["mha"]


def _budget(s):
    from infer.perf.hardware import HardwareProfile
    return HardwareProfile("budget", 1.0, 1.0, s.memory_budget_gb * 1e9)
