"""The quantization benchmark runs end to end (tiny random model: no perplexity) and writes its report."""
import json
import os

import pytest

from infer.bench.experiment import EXPERIMENTS_DIR, SpecError, load_experiment, parse_spec
from infer.bench.quant_bench import QuantBenchSpec, load_variant, run


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


def test_gpu_check_variant_is_a_shortened_bfloat16_model():
    """The gpu-check experiment's quantized variants: the named config with n_layers replaced, quantized, and
    bfloat16 everywhere the format leaves floating point; a checkpoint cannot be shortened."""
    exp = load_experiment(os.path.join(EXPERIMENTS_DIR, "gpu_check", "quant_llama3_8b.yaml"), size="full")
    full = parse_spec(QuantBenchSpec, exp.spec)
    assert full.model == "llama3-8b" and full.n_layers == 4 and full.quant_dtype == "bfloat16"
    s = QuantBenchSpec(model="tiny", variants=("int8",), n_layers=1, quant_dtype="bfloat16")
    cfg, params, _ = load_variant(s, "int8")
    assert cfg.n_layers == 1 and cfg.dtype == "bfloat16" and cfg.weight_format == "int8"
    assert params["layers"]["mlp"]["up"]["q"].shape[0] == 1 and params["embed"]["embedding"].dtype.name == "bfloat16"
    with pytest.raises(SpecError, match="n_layers"):
        load_variant(QuantBenchSpec(model="models/target", n_layers=1), "int8")
