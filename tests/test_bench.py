"""The benchmark harness: timing helper, experiment specs, the runner, and both experiment kinds at tiny sizes.

No test here asserts a speed; they check that the harness measures what it says it does.
"""
import importlib
import json
import os
import types

import pytest
import yaml

from infer import load_config
from infer.perf import roofline as rl
from infer.bench import report
from infer.bench.__main__ import main as bench_main
from infer.bench.experiment import EXPERIMENTS_DIR, SpecError, discover, load_experiment, parse_spec
from infer.bench.timing import Timing, time_fn


def test_time_fn_discards_warmup_and_does_not_time_setup(monkeypatch):
    # A fake clock (no sleeps, no wall-clock bands): setup advances it by 200 "seconds", each call of fn by
    # its call number, so the samples say exactly which calls were timed and that setup was not.
    from infer.bench import timing
    clock = {"now": 0.0}
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    calls = {"fn": 0, "setup": 0}

    def setup():
        calls["setup"] += 1
        clock["now"] += 200.0
        return (calls["setup"],)

    def fn(i):
        calls["fn"] += 1
        clock["now"] += calls["fn"]
        return i

    t = time_fn(fn, warmup=2, repeats=3, setup=setup)
    assert calls == {"fn": 5, "setup": 5}
    assert t.n == 3
    assert t.samples == (3.0, 4.0, 5.0)  # calls 3-5: the 2 warm-up calls and the 200 s setups are not in them
    assert t.median_s == 4.0 and t.min_s == 3.0
    assert Timing((3.0, 1.0, 2.0)).median_s == 2.0
    with pytest.raises(ValueError):
        time_fn(fn, repeats=0)


def _write(path, d):
    with open(path, "w") as f:
        yaml.safe_dump(d, f)
    return str(path)


def test_cpu_override_applies_only_on_cpu(tmp_path):
    p = _write(tmp_path / "x.yaml", {"kind": "roofline_table", "models": ["llama2-7b"], "hardware": ["h100"],
                                     "seq_lens": [1024], "batch_sizes": [64], "cpu": {"batch_sizes": [1]}})
    assert load_experiment(p, "full").spec["batch_sizes"] == [64]
    cpu = load_experiment(p, "cpu")
    assert cpu.spec["batch_sizes"] == [1] and cpu.name == "x" and cpu.kind == "roofline_table"
    bad = _write(tmp_path / "bad.yaml", {"kind": "roofline_table", "cpu": {"kind": "decode_bench"}})
    with pytest.raises(SpecError, match="bad.cpu.kind"):
        load_experiment(bad, "cpu")


def test_parse_spec_names_the_bad_field():
    from infer.bench.decode_bench import DecodeBenchSpec
    ok = {"name": "e", "kind": "decode_bench", "model": "tiny", "batch_sizes": [1, 2], "context_lens": 8}
    s = parse_spec(DecodeBenchSpec, ok)
    assert s.batch_sizes == (1, 2) and s.context_lens == (8,)
    with pytest.raises(SpecError, match=r"e\.batch_size: unknown field"):
        parse_spec(DecodeBenchSpec, {**ok, "batch_size": [1]})
    with pytest.raises(SpecError, match=r"e\.model: required"):
        parse_spec(DecodeBenchSpec, {k: v for k, v in ok.items() if k != "model"})
    with pytest.raises(SpecError, match=r"e\.repeats: expected an int"):
        parse_spec(DecodeBenchSpec, {**ok, "repeats": "3"})
    with pytest.raises(SpecError, match=r"e\.batch_sizes"):
        parse_spec(DecodeBenchSpec, {**ok, "batch_sizes": [0]})


@pytest.mark.parametrize("size", ["cpu", "full"])
def test_shipped_experiments_parse(size):
    paths = discover()
    names = {os.path.basename(p) for p in paths}
    assert {"roofline_llama2_13b_h100.yaml", "decode_bench.yaml", "attention_bench.yaml", "step_scaling.yaml"} <= names
    gpu_check = discover(os.path.join(EXPERIMENTS_DIR, "gpu_check"))  # `make gpu-check`'s sizes, not in the default run
    assert sorted(os.path.basename(p) for p in gpu_check) == ["attention_llama3_8b.yaml", "decode_llama3_8b.yaml",
                                                               "quant_llama3_8b.yaml"]
    specs = {"roofline_table": "RooflineTableSpec", "decode_bench": "DecodeBenchSpec",
             "attention_bench": "AttentionBenchSpec", "step_scaling": "StepScalingSpec"}
    for p in paths + gpu_check:
        e = load_experiment(p, size)
        module = importlib.import_module(f"infer.bench.{e.kind}")
        assert callable(module.run), e.kind
        if e.kind in specs:
            s = parse_spec(getattr(module, specs[e.kind]), e.spec)
            if e.kind in ("decode_bench", "step_scaling"):
                s.model_config()


def test_roofline_table_experiment_reproduces_the_lecture(tmp_path):
    from infer.bench import roofline_table
    e = load_experiment(os.path.join(os.path.dirname(discover()[0]), "roofline_llama2_13b_h100.yaml"), "cpu")
    rows = roofline_table.run({**e.spec, "plots": False}, str(tmp_path))
    by_case = {(r["K"], r["B"]): r for r in rows}
    assert by_case[(40, 256)]["lecture_memory_GB"] * 1e9 == pytest.approx(240_779_264_000)
    assert by_case[(40, 256)]["lecture_fits"] is False
    assert by_case[(8, 256)]["lecture_tok_s"] == pytest.approx(13_068.16, abs=0.01)
    assert by_case[(8, 64)]["lecture_latency_ms"] == pytest.approx(9.9740, abs=1e-4)


def test_decode_bench_runs_and_predicts_with_the_roofline(tmp_path):
    from infer.bench import decode_bench
    spec = {"name": "t", "kind": "decode_bench", "model": "tiny", "batch_sizes": [2], "context_lens": [8, 600],
            "single_steps": 2, "decode_steps": 2, "warmup": 1, "repeats": 1, "prefill_max_tokens": 16,
            "probe_bytes": 1 << 20, "probe_matmul": 64}
    rows = decode_bench.run(spec, str(tmp_path))
    ok, skipped = rows
    assert ok["status"] == "ok" and ok["B"] == 2 and ok["S"] == 8 and ok["attn"] == "auto -> reference"
    assert ok["step_ms"] > 0 and ok["multi_ms_per_tok"] > 0 and ok["ttft_ms"] > 0 and ok["gen_ms_per_tok"] > 0
    assert ok["tok_s"] == pytest.approx(2 / (ok["multi_ms_per_tok"] / 1e3))
    # The prediction is the roofline's on the probed profile, at the run's mean context.
    cost = rl.decode_cost(load_config("tiny"), 2, 8 + 1)
    assert ok["step_bytes"] == cost.bytes
    assert ok["mbu"] == pytest.approx(cost.bytes / (ok["step_ms"] / 1e3) / (ok["probe_GB_s"] * 1e9))
    # S + steps beyond the model's max_seq_len (512) is reported, not crashed on.
    assert skipped["S"] == 600 and skipped["status"].startswith("skipped")
    assert ok["layout"] == skipped["layout"] == "stacked"  # the default


def test_decode_bench_times_each_parameter_layout(tmp_path):
    from infer.bench import decode_bench
    spec = {"name": "t", "kind": "decode_bench", "model": "tiny", "batch_sizes": [2], "context_lens": [8],
            "layouts": ["stacked", "unrolled"], "single_steps": 2, "decode_steps": 2, "warmup": 1, "repeats": 1,
            "prefill_max_tokens": 0, "probe_bytes": 1 << 20, "probe_matmul": 64, "dump_hlo": True}
    stacked, unrolled = decode_bench.run(spec, str(tmp_path))
    assert (stacked["layout"], unrolled["layout"]) == ("stacked", "unrolled")
    assert stacked["status"] == unrolled["status"] == "ok" and unrolled["step_bytes"] == stacked["step_bytes"]
    # The dumped step: the scan slices one layer's weights out of the stacked arrays at run time, the unrolled
    # program slices none (only KV-cache rows). tiny's layer: norms, q/k/v/o, gate/up/down in float32.
    D, N, K, H, F = 48, 6, 2, 8, 96
    layer_MB = 4 * (2 * D + 2 * D * N * H + 2 * D * K * H + 3 * D * F) / 1e6
    assert stacked["hlo_sliced_MB"] >= 0.9 * layer_MB and unrolled["hlo_sliced_MB"] < 0.1 * layer_MB
    assert sorted(os.listdir(tmp_path)) == ["decode_step_stacked_B2_S8.hlo.txt", "decode_step_unrolled_B2_S8.hlo.txt"]
    with pytest.raises(SpecError, match="layouts"):
        decode_bench.run({**spec, "layouts": ["scanned"]}, str(tmp_path))


def test_dynamic_slice_bytes_reads_hlo_shapes():
    from infer.bench.decode_bench import dynamic_slice_bytes
    hlo = ("  %ds.1 = bf16[1,768,256]{2,1,0} dynamic-slice(%p0, %i, %c, %c), dynamic_slice_sizes={1,768,256}\n"
           "  %ds.2 = s32[]{} dynamic-slice(%p1, %i)\n  %dot = f32[1,256]{1,0} dot(%a, %b)\n"
           "  %ds.3 = f32[4]{0} dynamic-slice(%p2, %i), dynamic_slice_sizes={4}\n")
    assert dynamic_slice_bytes(hlo) == 2 * 768 * 256 + 4 + 16


def test_attention_bench_times_every_impl_against_the_reference(tmp_path):
    from infer.bench import attention_bench
    spec = {"name": "t", "kind": "attention_bench", "batch_sizes": [2], "context_lens": [40], "query_lens": [1, 5],
            "kv_heads": [2], "n_heads": 4, "head_dim": 16, "page_size": 16, "kv_dtypes": ["float32", "int8"],
            "q_dtype": "float32", "impls": ["auto", "ragged", "decode", "reference", "xla", "cudnn"],
            "warmup": 0, "repeats": 1, "probe_bytes": 1 << 20}
    rows = attention_bench.run(spec, str(tmp_path))
    assert len(rows) == 2 * 2 * 6  # dtypes x query lengths x impls
    by = {(r["kv_dtype"], r["Q"], r["impl"]): r for r in rows}
    for (dt, Q, impl), r in by.items():
        if impl == "cudnn" or (impl == "decode" and Q > 1):
            assert r["status"].startswith("skipped"), r
            continue
        assert r["status"] == "ok", r
        # bytes: the 2 sequences' K and V pages (3 pages of 16 positions each), plus q and the output
        kv = 2 * 2 * 48 * 2 * 16 * (1 if dt == "int8" else 4) + (2 * 2 * 48 * 2 * 4 if dt == "int8" else 0)
        assert r["kv_bytes"] == kv and r["bytes"] == kv + 2 * 2 * Q * 4 * 16 * 4
        assert r["GB_s"] == pytest.approx(r["bytes"] / (r["ms"] / 1e3) / 1e9)
        if impl != "reference":
            assert r["err_vs_ref"] < 1e-5, r
    assert by[("float32", 1, "auto")]["kernel"] == "auto -> reference"  # what the model runs on CPU


def test_step_scaling_sweeps_pool_and_context(tmp_path):
    from infer.bench import step_scaling
    spec = {"name": "t", "kind": "step_scaling", "model": "tiny", "rows": 2, "fixed_context": 20,
            "pool_multipliers": [1, 8], "context_lens": [20, 100], "warmup": 1, "repeats": 1,
            "probe_bytes": 1 << 20, "probe_matmul": 64}
    rows = step_scaling.run(spec, str(tmp_path))
    pool = [r for r in rows if r["sweep"] == "pool"]
    ctx = [r for r in rows if r["sweep"] == "context"]
    assert [r["P"] for r in pool] == [4, 32] and pool[1]["pool_MB"] == pytest.approx(8 * pool[0]["pool_MB"])
    # The same step on a pool 8x larger: same pages per sequence, prediction and compiled FLOPs.
    assert pool[0]["M"] == pool[1]["M"] and pool[0]["pred_ms"] == pool[1]["pred_ms"]
    assert pool[1]["GFLOP"] == pytest.approx(pool[0]["GFLOP"], rel=0.05)
    # A longer context at a fixed pool: more pages per sequence, more predicted time and FLOPs.
    assert ctx[0]["P"] == ctx[1]["P"] == 32 and ctx[1]["M"] > ctx[0]["M"]
    assert ctx[1]["pred_ms"] > ctx[0]["pred_ms"] and ctx[1]["GFLOP"] > ctx[0]["GFLOP"]
    assert all(r["status"] == "ok" and r["step_ms"] > 0 for r in rows)
    assert pool[0]["vs_first"] == 1.0 and ctx[1]["vs_first"] == pytest.approx(ctx[1]["step_ms"] / ctx[0]["step_ms"])


def test_gpu_check_stops_without_a_gpu_and_says_so(tmp_path):
    from infer.bench import gpu_check
    assert gpu_check.main(["--size", "full", "--out", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["stage"] for s in result["stages"]] == ["device"]
    assert "not gpu" in result["stages"][0]["status"]
    summary = (tmp_path / "summary.md").read_text()
    assert "not gpu" in summary and "JAX " in summary and "device_info" in summary  # the exact command is listed


def test_gpu_check_budget_skips_what_does_not_fit_and_says_so(tmp_path):
    from infer.bench import gpu_check
    # 25 s less the 10 s kept for the summary leaves under the 20 s a stage needs once the device stage has run
    assert gpu_check.main(["--size", "cpu", "--out", str(tmp_path), "--stages", "chat,quant", "--budget", "25"]) == 1
    stages = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["device", "quant", "chat"]  # the check's order, not the argument's
    assert stages[0]["status"] == "ok" and all(s["status"].startswith("skipped: ") for s in stages[1:])
    assert "--budget 25 s" in (tmp_path / "summary.md").read_text()
    with pytest.raises(SystemExit):
        gpu_check.main(["--size", "cpu", "--out", str(tmp_path), "--stages", "pytest,nonsense"])


def test_gpu_chat_bench_runs_both_engines_on_the_same_random_weights(tmp_path):
    from infer.bench import gpu_chat_bench
    r = gpu_chat_bench.main(["--out", str(tmp_path), "--shapes", "tiny", "--dtypes", "float32", "--batches", "2",
                             "--prompt-len", "6", "--new-tokens", "6", "--repeats", "1", "--check-tokens", "6"])
    rows = {row["engine"]: row for row in r["results"]}
    assert set(rows) == {"this stack", "transformers"}
    # one checkpoint, two loaders: float32 greedy tokens agree row by row (the weights really are the same)
    assert rows["this stack"]["same_greedy"] == "2/2" and rows["transformers"]["ratio_to_ours"] > 0
    V, D, N, K, H, F, L = 256, 48, 6, 2, 8, 96, 2  # configs/models/tiny.yaml (untied head)
    per_layer = 2 * D + D * N * H + 2 * D * K * H + N * H * D + 3 * D * F
    assert rows["this stack"]["weights_bytes"] == 4 * (2 * V * D + D + L * per_layer)
    assert "| this stack | float32 | 2 |" in (tmp_path / "gpu_chat.md").read_text()


def test_runner_continues_past_a_failure_and_writes_results(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    _write(exp / "good.yaml", {"kind": "roofline_table", "models": ["tiny"], "hardware": ["h100"], "seq_lens": [64],
                               "batch_sizes": [1, 2], "plots": False})
    _write(exp / "broken.yaml", {"kind": "roofline_table", "models": ["tiny"], "hardware": ["h100"],
                                 "seq_lens": [64], "batch_sizes": [1], "no_such_field": 1})
    _write(exp / "missing_kind_module.yaml", {"kind": "no_such_bench"})
    out = tmp_path / "out"
    rc = bench_main(["--experiments", str(exp), "--out", str(out)])
    assert rc == 1
    good = json.loads((out / "good.json").read_text())
    assert good["status"] == "ok" and len(good["rows"]) == 2 and good["device"]["jax_version"]
    broken = json.loads((out / "broken.json").read_text())
    assert broken["status"] == "failed" and "no_such_field" in broken["error"]
    summary = (out / "summary.md").read_text()
    assert "## good" in summary and "**FAILED**" in summary and "no_such_bench" in summary
    # --only picks one experiment; it succeeds on its own.
    assert bench_main(["--experiments", str(exp), "--out", str(tmp_path / "o2"), "--only", "good"]) == 0
    assert sorted(os.listdir(tmp_path / "o2")) == ["good", "good.json", "summary.md"]
    assert bench_main(["--experiments", str(exp), "--out", str(tmp_path / "o3"), "--only", "nothing"]) == 2


def test_markdown_table_formats_rows():
    rows = [{"a": 1234, "b": 0.5, "c": True}, {"a": 1, "d": None}]
    t = report.markdown_table(rows, ["a", "b", "d"])
    assert t.splitlines()[0] == "| a | b | d |"
    assert t.splitlines()[2] == "| 1,234 | 0.5000 | — |"
    assert report.markdown_table([]) == "_(no rows)_\n"



def test_step_profile_attributes_the_stacked_layouts_slice_copies(tmp_path):
    from infer.bench import step_profile
    assert [step_profile.category(n) for n in ("dynamic-slice_bitcast_fusion.2", "loop_dynamic_slice_fusion",
                                               "cublas-gemm.1", "gemm_fusion_dot.3", "dot.46", "ynn_fusion.59",
                                               "ragged_gpu", "custom-call.4", "fusion.12")] == \
        ["slice/copy", "slice/copy", "matmul", "matmul", "matmul", "matmul", "attention", "other", "other"]
    s = step_profile.main(["--model", "small", "--dtype", "float32", "--context", "32", "--steps", "3",
                           "--repeats", "3", "--out", str(tmp_path)])
    stacked, unrolled = s["results"]
    assert (stacked["layout"], unrolled["layout"]) == ("stacked", "unrolled")
    for r in (stacked, unrolled):
        assert r["step_ms"] > 0 and 0 < r["op_ms_per_step"] and r["ops"]
        assert sum(r["categories"].values()) == pytest.approx(r["op_ms_per_step"])
    # XLA's CPU backend copies each layer's weight slices out of the stacked arrays; the unrolled program has none
    assert stacked["categories"]["slice/copy"] > 5 * unrolled["categories"]["slice/copy"]
    assert "| stacked | 1 | 32 |" in (tmp_path / "step_profile.md").read_text()


def test_sampling_bench_times_both_filters_and_the_decode_loop_as_a_gpu_check_stage(tmp_path):
    # one run of the bench at CPU size, through gpu-check's stage (its command: --vocab 512 --batches 1,3 --model
    # tiny --loop-batches 2 --new-tokens 4 --repeats 1)
    from infer.bench import gpu_check, sampling_bench
    assert gpu_check.main(["--size", "cpu", "--out", str(tmp_path), "--stages", "sampling"]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| sampling | ok |" in summary and "## sampling: `infer.bench.sampling_bench`" in summary
    assert "[sampling_bench] done" in summary  # the stage's result line is the bench's own
    out = json.loads((tmp_path / "sampling" / "sampling_bench.json").read_text())
    assert [(r["V"], r["B"]) for r in out["filters"]] == [(512, 1), (512, 3)]
    assert all(r["equal_rows"] == r["B"] and r["sorted_ms"] > 0 and r["threshold_ms"] > 0 for r in out["filters"])
    assert [r["setting"] for r in out["loop"]] == [name for name, _ in sampling_bench.LOOP_SETTINGS]
    assert all(r["ms_step"] > 0 for r in out["loop"])
    md = (tmp_path / "sampling" / "sampling_bench.md").read_text()
    assert "threshold_keep ms" in md and "| tiny | float32 | 2 | top_p 0.95 |" in md
    assert out["command"].startswith("python -m infer.bench")
    with pytest.raises(SystemExit):  # a bad list is refused at parse time, naming the option
        sampling_bench.main(["--loop-batches", "0"])
    assert sampling_bench.main(["--vocab", "", "--model", "", "--out", str(tmp_path / "none")])["filters"] == []
