"""The TP/DP benchmark runs end to end on a tiny model: measured rows beside predictions, "not measured" rows for
layouts past the devices, the subprocess with forced host devices, and the shipped YAML parses."""
import json
import os

import jax
import pytest

from infer.bench.experiment import EXPERIMENTS_DIR, SpecError, load_experiment, parse_spec
from infer.bench.parallel_bench import MARKDOWN_COLUMNS, ParallelBenchSpec, run, split_batch, with_host_devices

TINY = {
    "name": "parallel_bench", "kind": "parallel_bench", "model": "tiny",
    "model_overrides": {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "d_ff": 128,
                        "vocab_size": 256},
    "dtype": "float32", "batch_sizes": [3], "context_lens": [16], "warmup": 1, "repeats": 1,
    "probe_bytes": 8 << 20, "probe_matmul": 128, "plot": True,
}


def _check_outputs(rows, tmp_path, cpu=True):
    md = open(tmp_path / "parallel.md").read()
    assert "| " + " | ".join(MARKDOWN_COLUMNS) + " |" in md  # every column present (CPU: all of them)
    assert "share the same cores" in md
    report = json.load(open(tmp_path / "parallel.json"))
    assert len(report["rows"]) == len(rows) and report["hardware"]["interconnect_bandwidth"] > 0
    assert report["caveat"] and all(r["caveat"] == report["caveat"] for r in rows)
    assert os.path.exists(tmp_path / "parallel.png")
    for r in rows:  # every row has a prediction, measured or not
        assert r["step_pred_ms"] > 0 and r["tok_s_pred"] > 0 and r["step_pred_shared_ms"] >= r["step_pred_ms"] * 0.99
        assert r["comm_pred_ms"] == 0 if r["tp"] == 1 else r["comm_pred_ms"] > 0
    return report


def test_rows_past_the_devices_are_marked_not_measured(tmp_path):
    n = jax.device_count()
    spec = {**TINY, "layouts": [[1, 1], [2 * n, 1], [1, 2 * n]], "host_devices": 0}
    rows = run(spec, str(tmp_path))
    assert [(r["tp"], r["dp"]) for r in rows] == [(1, 1), (2 * n, 1), (1, 2 * n)]
    ok, tp_row, dp_row = rows
    assert ok["status"] == "ok" and ok["step_ms"] > 0 and ok["tok_s"] == pytest.approx(3 / ok["step_ms"] * 1e3)
    assert ok["speedup"] == 1.0 and ok["pred_speedup"] == 1.0
    for r in (tp_row, dp_row):
        assert r["status"] == f"not measured (needs {2 * n} devices, {n} available)", r
        assert r.get("step_ms") is None and r["pred_speedup"] > 0
    assert dp_row["B_replica"] == max(split_batch(3, 2 * n)) and tp_row["B_replica"] == 3
    _check_outputs(rows, tmp_path)


def test_tp_and_dp_in_a_subprocess_with_host_devices(tmp_path):
    if jax.default_backend() != "cpu" or jax.device_count() >= 4:
        pytest.skip("the subprocess path is for a CPU backend with fewer devices than the layouts need")
    spec = {**TINY, "layouts": [[1, 1], [2, 1], [1, 2], [2, 2], [4, 2]], "host_devices": 4}
    rows = run(spec, str(tmp_path))
    by = {(r["tp"], r["dp"]): r for r in rows}
    for lay in ((1, 1), (2, 1), (1, 2), (2, 2)):
        r = by[lay]
        assert r["status"] == "ok" and r["step_ms"] > 0 and r["tok_s"] > 0 and r["speedup"] > 0, r
        assert r["devices_available"] == 4
    assert by[(1, 2)]["B_replica"] == 2 and by[(1, 2)]["replicas_active"] == 2 and by[(1, 2)]["step_seq_ms"] > 0
    assert by[(2, 1)].get("step_seq_ms") is None
    assert by[(4, 2)]["status"] == "not measured (needs 8 devices, 4 available)"
    report = _check_outputs(rows, tmp_path)
    assert report["measured_in"] == "subprocess with 4 forced host devices"


def test_spec_checks_and_helpers():
    with pytest.raises(SpecError, match=r"layouts\[1\]"):
        parse_spec(ParallelBenchSpec, {**TINY, "layouts": [[1, 1], [2, 0]]})
    with pytest.raises(SpecError, match=r"layouts"):
        parse_spec(ParallelBenchSpec, {**TINY, "layouts": [[2, 1], [2, 1]]})
    assert split_batch(5, 2) == [3, 2] and split_batch(1, 2) == [1, 0]
    assert with_host_devices("--a=1 --xla_force_host_platform_device_count=2", 8) == \
        "--a=1 --xla_force_host_platform_device_count=8"


@pytest.mark.parametrize("size", ["cpu", "full"])
def test_the_shipped_experiment_parses(size):
    exp = load_experiment(os.path.join(EXPERIMENTS_DIR, "parallel_bench.yaml"), size=size)
    s = parse_spec(ParallelBenchSpec, exp.spec)
    cfg = s.model_config()
    assert exp.kind == "parallel_bench" and s.max_devices == 8 and (1, 1) in s.layouts
    if size == "cpu":
        assert (cfg.d_model, cfg.n_layers, cfg.dtype, s.host_devices) == (256, 4, "float32", 8)
    else:
        assert cfg.name.startswith("llama3-8b") or cfg.d_model == 4096
