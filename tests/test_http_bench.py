"""The HTTP load test runs end to end on a tiny model: both systems serve every request completely."""
import json
import os

from infer.bench.experiment import EXPERIMENTS_DIR, load_experiment
from infer.bench.http_bench import run


def test_http_bench_serves_the_workload_over_http_and_in_process(tmp_path):
    spec = {"model": "tiny", "rates": [50.0],
            "workload": {"num_requests": 6, "input_len": {"dist": "uniform", "min": 2, "max": 12},
                         "output_len": {"dist": "uniform", "min": 2, "max": 8}, "shared_prefix": 0, "seed": 1},
            "num_pages": 32, "page_size": 8, "max_num_seqs": 4, "max_num_batched_tokens": 16, "max_model_len": 32,
            "max_inflight": 4, "name": "http_bench"}
    rows = run(spec, str(tmp_path))
    assert [r["system"] for r in rows] == ["http", "engine"]
    assert rows[0]["out_tokens"] == rows[1]["out_tokens"] > 0 and rows[0]["same_tokens"] == 1.0
    assert rows[0]["ttft_p50_ms"] > 0 and rows[0]["requests"] == 6
    saved = json.load(open(os.path.join(tmp_path, "http.json")))
    assert len(saved["rows"]) == 2 and os.path.exists(os.path.join(tmp_path, "http.md"))


def test_the_shipped_experiment_parses():
    exp = load_experiment(os.path.join(EXPERIMENTS_DIR, "http_bench.yaml"), size="cpu")
    assert exp.kind == "http_bench" and exp.spec["model"] == "small"
