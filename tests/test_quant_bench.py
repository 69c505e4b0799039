"""The quantization benchmark runs end to end (tiny random model: no perplexity) and writes its report."""
import json
import os

from infer.bench.experiment import EXPERIMENTS_DIR, load_experiment
from infer.bench.quant_bench import run


def test_quant_bench_reports_every_variant_and_batch(tmp_path):
    rows = run({"model": "tiny", "variants": ["float32", "int8", "float32+kv-int8"], "batch_sizes": [1, 2],
                "prompt_len": 4, "new_tokens": 4, "bandwidth_probe_mb": 8, "plot": True, "name": "quant_bench"},
               str(tmp_path))
    assert [(r["variant"], r["batch"]) for r in rows] == [(v, b) for v in ("float32", "int8", "float32+kv-int8")
                                                          for b in (1, 2)]
    f32, i8 = rows[0], rows[2]
    assert i8["param_MB"] < f32["param_MB"] and i8["weights"] == "int8" and rows[4]["kv"] == "int8"
    assert all(r["tok_s"] > 0 and r["ppl"] is None for r in rows)
    assert os.path.exists(tmp_path / "quant.png") and len(json.load(open(tmp_path / "quant.json"))["rows"]) == 6


def test_the_shipped_experiment_parses():
    exp = load_experiment(os.path.join(EXPERIMENTS_DIR, "quant_bench.yaml"), size="cpu")
    assert exp.kind == "quant_bench" and "native" in exp.spec["variants"]
