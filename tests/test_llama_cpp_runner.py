"""The llama.cpp baseline of the CPU benchmarks (infer/bench/llama_cpp_runner.py).

Without llama-cpp-python (CI: it only builds from source) the benchmark says how to get it; with it, the
batched runner's greedy tokens equal this stack's on SmolLM2 row by row, so its batching (one sequence per
row, positions, which logits are read) is right.
"""
import importlib.util

import pytest

from infer.bench import cpu_chat_bench
from infer.bench.llama_cpp_runner import child_env

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def test_llama_cpp_children_get_openmps_default_wait_policy(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what cpu_chat_bench sets for torch
    env = child_env()
    assert "OMP_WAIT_POLICY" not in env and env["PATH"]


def test_without_llama_cpp_the_bench_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(cpu_chat_bench, "llama_cpp_version", lambda: "not installed")
    rows = cpu_chat_bench.run_llama_cpp_rows(["f32"], [1], {1: [[1, 2, 3]]}, 4, 1, "/nonexistent")
    assert len(rows) == 1 and "pip install llama-cpp-python" in rows[0]["skipped"]
    assert cpu_chat_bench.run_llama_cpp_rows([], [1], {}, 4, 1, "/nonexistent") == []


@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed (it builds llama.cpp from source, "
                                               "~10 min): `pip install llama-cpp-python diskcache`")
def test_batched_llama_cpp_greedy_tokens_equal_ours_row_by_row(tmp_path):
    import infer
    from infer.bench.llama_cpp_runner import run_llama_cpp
    from infer.io.gguf_convert import write_dequantized
    name = "smollm2-135m-instruct"
    tok = infer.load_tokenizer(name)
    prompts = [tok.encode(t, add_special_tokens=False) for t in
               ("def fibonacci(n):", "The capital of France is", "1, 2, 3, 4,")]
    path = write_dequantized(name, str(tmp_path / "f32.gguf"), "f32")  # Q4_1 as stored would run quantized
    got = run_llama_cpp(path, prompts, 6, 1)["tokens"]
    cfg, params = infer.load_model_dir(name)
    want = infer.generate(params, cfg, prompts, infer.SamplingParams(temperature=0.0, max_new_tokens=6)).tokens
    assert got == want


@pytest.mark.parametrize("bench", ["cpu_chat_bench", "cpu_head_to_head"])
def test_an_unknown_llama_cpp_file_kind_is_refused_before_anything_runs(bench, capsys):
    import importlib
    with pytest.raises(SystemExit):
        importlib.import_module(f"infer.bench.{bench}").main(["--llama-cpp", "f32,q8"])
    assert "--llama-cpp 'f32,q8': kinds are q4_1, f32, f16" in capsys.readouterr().err
