"""`make gpu-check`: the Pallas kernels compiled for real, then decode, profile, attention, quantization and chat benchmarks.

    python -m infer.bench.gpu_check [--size full|cpu] [--out results/gpu-check] [--stages a,b] [--budget S]

Stages, each a subprocess of this Python with a time limit (one hang cannot eat the budget), in
this order (the most wanted first: a lease that runs short loses the last ones):

1. device: backend, device kind, JAX version. In `full` size a backend other than GPU stops the
   check (the kernels would silently run nowhere).
2. `pytest -m gpu -n 4` over the test files that carry the mark (tests/test_gpu_kernels.py): the
   Triton kernels compiled with interpret=False, compared with their pure-JAX references.
3. program: `python -m infer.perf.gpu_program --targets device,h100`: what Llama 3 8B's decode, engine and
   generation-loop programs launch per step on this GPU beside the same programs compiled deviceless for an H100
   (the CPU CI's view), and XLA's GEMM autotuning results (program/autotune/, for `--autotune-load`).
4. `python -m infer.bench --experiments configs/experiments/gpu_check --only decode_llama3_8b` (stacked and
   unrolled parameter layouts, each layout's optimized step HLO written beside the rows)
5. profile: `python -m infer.bench.step_profile --model llama3-8b --context 1024`: Llama 3 8B's decode
   step at batch 1 in both layouts under `jax.profiler`, its device time by op (slice/copy, matmul,
   attention, other) beside the wall-clock step; profile_xla_gemm: the unrolled layout (the GPU's) again with
   INFER_DECODE_GEMV=0, its decode projections XLA's GEMMs instead of the decode GEMV kernels
   (pallas_kernels/gemv/): the two paths side by side (the GEMV kernels' speed has not been measured on a GPU);
   profile_dsf: the stacked layout again with `--xla_gpu_enable_dynamic_slice_fusion=true` (cuBLAS reading a
   scanned weight's slice in place).
6. `python -m infer.bench --experiments configs/experiments/gpu_check --only attention_llama3_8b`
7. `python -m infer.bench --experiments configs/experiments/gpu_check --only quant_llama3_8b`: decode in
   bfloat16 / int8 / int4-g128 / q4_0 at Llama 3 8B's matrix shapes (issue 15's GPU goal).
8. sampling: `python -m infer.bench.sampling_bench --dtype bfloat16 --loop-batches 1,8,64`: the sort-free
   top-k / top-p filters against the two-sort reference, and SmolLM2's decode step per sampling setting.
9. chat: `python -m infer.bench.gpu_chat_bench` (issue 12's GPU table, measured on the first run):
   SmolLM2-135M's shapes, this stack vs transformers on the same random weights, bfloat16 and
   float32, batch 1 and 8.

`--budget` (seconds, default 570: the device tool's 10-minute call less a margin) bounds the whole
check: each stage's limit is cut to what is left, and a stage that would get under 20 s is skipped
and says so, so summary.md is always written. `--stages` runs a subset (the device stage always
runs): a second call on a warm machine can pick up what the first had to skip.

Writes <out>/summary.md (device, JAX version, the exact commands, each stage's status and time,
the benchmark tables), <out>/gpu_check.json (the same, machine-readable), each stage's log
<out>/<stage>.log and the benchmarks' own JSON and summaries under <out>/<stage>/.

Size `cpu` (GPU_CHECK_SIZE=cpu in the Makefile) runs the same stages on the CPU backend at the
YAMLs' `cpu:` sizes (the gpu tests skip; the chat stage at the tiny model's shapes): the pipeline
end to end on any machine. Nothing is installed; this process never initializes a JAX backend
itself (on a GPU that would reserve the memory the stages need).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shlex
import subprocess
import sys
import time

from infer.bench import report
from infer.config.paths import REPO_ROOT

EXPERIMENTS = os.path.join("configs", "experiments", "gpu_check")
# seconds each stage may run at most (the --budget cuts them further)
# pytest: the 29 GPU tests took 263 s serially on one H200 (2026-11-26, mostly Triton compiles of the quantized
# matmuls at Llama 3 8B's MLP shapes), so they run in PYTEST_WORKERS processes (compiles are CPU work).
LIMITS = {"device": 30, "pytest": 200, "program": 90, "decode": 220, "profile": 120, "profile_xla_gemm": 80,
          "profile_dsf": 90, "attention": 130, "quant": 120, "sampling": 60, "chat": 180}
STAGES = tuple(LIMITS)  # run order
BENCHES = {"attention": "attention_llama3_8b", "decode": "decode_llama3_8b", "quant": "quant_llama3_8b"}
MIN_STAGE_S = 20  # a stage that would get less is skipped
MARGIN_S = 10  # kept back from the budget for writing the summary
PYTEST_WORKERS = 4
# The chat stage runs torch beside JAX in one process: JAX must not reserve the memory torch needs; the pytest
# workers share one GPU: none may reserve it.
STAGE_ENV = {"chat": {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.4"}, "pytest": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
             "profile_xla_gemm": {"INFER_DECODE_GEMV": "0"}}  # layers/linear.py: XLA's GEMMs at decode


def _env(size: str) -> dict:
    env = dict(os.environ)
    if size == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    else:
        # tests/conftest.py defaults JAX_PLATFORMS to cpu: name the GPU explicitly (unless the caller did).
        env.setdefault("JAX_PLATFORMS", "cuda")
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")  # the decode bench's B=64 cache needs the room
    return env


def _commands(size: str, out: str) -> dict:
    py = sys.executable
    gpu_tests = sorted(os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, "tests", "test_*.py"))
                       if "pytest.mark.gpu" in open(p).read())
    cmds = {
        "device": [py, "-c", "import json; from infer.bench.device_probe import device_info; "
                             "print(json.dumps(device_info()))"],
        "pytest": [py, "-m", "pytest", "-q", "-rs", "-n", str(PYTEST_WORKERS if size == "full" else 1), "-p",
                   "no:cacheprovider", "--durations=5", "-m", "gpu", *gpu_tests],
    }
    cmds["sampling"] = [py, "-m", "infer.bench.sampling_bench", "--out", os.path.join(out, "sampling")] + (
        ["--vocab", "512", "--batches", "1,3", "--model", "tiny", "--loop-batches", "2", "--new-tokens", "4",
         "--repeats", "1"] if size == "cpu" else ["--dtype", "bfloat16", "--loop-batches", "1,8,64"])
    cmds["chat"] = [py, "-m", "infer.bench.gpu_chat_bench", "--out", os.path.join(out, "chat")] + (
        ["--shapes", "tiny", "--prompt-len", "8", "--new-tokens", "8", "--repeats", "1"] if size == "cpu" else
        ["--repeats", "3"])
    model = (["--model", "small", "--dtype", "float32", "--context", "64"] if size == "cpu" else
             ["--model", "llama3-8b", "--context", "1024"])
    cmds["profile"] = [py, "-m", "infer.bench.step_profile", "--out", os.path.join(out, "profile"), "--steps", "5",
                       "--repeats", "5", *model]
    # the GPU's layout again with the decode GEMV kernels off (XLA's GEMMs; STAGE_ENV): the two paths side by side
    cmds["profile_xla_gemm"] = [py, "-m", "infer.bench.step_profile", "--out", os.path.join(out, "profile_xla_gemm"),
                                "--layouts", "unrolled", "--steps", "5", "--repeats", "5", *model]
    # the stacked layout again with XLA's dynamic-slice fusion (cuBLAS reading a scanned weight's slice in place)
    cmds["profile_dsf"] = [py, "-m", "infer.bench.step_profile", "--out", os.path.join(out, "profile_dsf"),
                           "--layouts", "stacked", "--steps", "5", "--repeats", "5",
                           "--xla-flags=--xla_gpu_enable_dynamic_slice_fusion=true", *model]
    # what the GPU really runs per step beside the deviceless H100 compile of the same programs (infer/perf/
    # gpu_program.py), and XLA's GEMM autotuning results, which deviceless compiles can load (--autotune-load)
    cmds["program"] = [py, "-m", "infer.perf.gpu_program", "--out", os.path.join(out, "program"), "--programs",
                       "decode,engine_decode,generate"] + (
        ["--model", "tiny", "--dtype", "float32", "--context", "64", "--targets", "h100"] if size == "cpu" else
        ["--model", "llama3-8b", "--context", "1024", "--targets", "device,h100",
         "--autotune-dump", os.path.join(out, "program", "autotune")])
    for stage, name in BENCHES.items():
        cmds[stage] = [py, "-m", "infer.bench", "--experiments", EXPERIMENTS, "--only", name, "--size", size,
                       "--out", os.path.join(out, stage)]
    return cmds


def _run_stage(stage: str, cmd: list, env: dict, out: str, limit: float) -> dict:
    log = os.path.join(out, f"{stage}.log")
    print(f"[{stage}] {shlex.join(cmd)}  (limit {limit:.0f} s, log {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO_ROOT, env={**env, **STAGE_ENV.get(stage, {})}, stdout=f,
                                stderr=subprocess.STDOUT, timeout=limit).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            rc, status = None, f"timed out after {limit:.0f} s"
    with open(log) as f:
        lines = f.read().splitlines()
    seconds = time.perf_counter() - t0
    print("\n".join(f"  {line}" for line in lines[-15:]), flush=True)
    print(f"[{stage}] {status} in {seconds:.1f} s", flush=True)
    # the line that says how it went: the runner's "ok in ..., N rows" for a benchmark, else the last line
    result = [line.strip() for line in lines if line.startswith("  ok in ") or line.startswith("  failed in ")
              or line.startswith("[gpu_chat_bench] total") or line.startswith("[step_profile] done")
              or line.startswith("[sampling_bench] done")]
    return {"stage": stage, "command": shlex.join(cmd), "status": status, "exit_code": rc, "seconds": seconds,
            "log": os.path.relpath(log, out), "result": (result or lines or [""])[-1]}


def _describe(info: dict) -> str:
    if not info:
        return "unknown (the device stage failed)"
    kind = "CPU" if info["backend"] == "cpu" else info["device_kind"]
    return (f"{info['device_count']} x {kind} ({info['backend']}; {info['cpu_count']} CPU cores visible), "
            f"JAX {info['jax_version']} (jaxlib {info['jaxlib_version']}), Python {info['python']}")


def render_summary(size: str, info: dict, stages: list, out: str, invocation: str) -> str:
    lines = ["# GPU check", "",
             f"- invocation: `{invocation}` (size: {size})",
             f"- device: {_describe(info)}",
             f"- date: {datetime.date.today().isoformat()}",
             f"- total: {sum(s['seconds'] for s in stages):.1f} s", "",
             "| stage | status | seconds | result (from its log) |", "|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.1f} | {report.fmt(s['result'])} |" for s in stages]
    lines += ["", "Commands (run from the repository root, in this order):", "", "```"]
    lines += [s["command"] for s in stages] + ["```", ""]
    for s in stages:
        bench_summary = os.path.join(out, s["stage"], "summary.md")
        chat_summary = os.path.join(out, s["stage"], "gpu_chat.md")
        if s["stage"] in BENCHES and os.path.exists(bench_summary):
            with open(bench_summary) as f:
                body = f.read().split("\n", 1)[1]  # drop its title
            lines += [f"## {s['stage']}: `{BENCHES[s['stage']]}`", "", body.replace("\n## ", "\n### ")]
        elif s["stage"] == "chat" and os.path.exists(chat_summary):
            with open(chat_summary) as f:
                lines += ["## chat: `infer.bench.gpu_chat_bench`", "", f.read()]
        elif s["stage"] == "sampling" and os.path.exists(os.path.join(out, s["stage"], "sampling_bench.md")):
            with open(os.path.join(out, s["stage"], "sampling_bench.md")) as f:
                lines += ["## sampling: `infer.bench.sampling_bench`", "", f.read()]
        elif s["stage"] == "program" and os.path.exists(os.path.join(out, s["stage"], "report.md")):
            with open(os.path.join(out, s["stage"], "report.md")) as f:
                lines += ["## program: `infer.perf.gpu_program` (launches, copies, submissions per step)", "",
                          f.read()]
        elif s["stage"].startswith("profile") and os.path.exists(os.path.join(out, s["stage"], "step_profile.md")):
            with open(os.path.join(out, s["stage"], "step_profile.md")) as f:
                lines += [f"## {s['stage']}: `infer.bench.step_profile`", "", f.read()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m infer.bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("full", "cpu"), default="full",
                   help="full: Llama 3 8B shapes on the GPU; cpu: every stage at CPU sizes on the CPU backend")
    p.add_argument("--out", default="results/gpu-check", help="output folder (default results/gpu-check)")
    p.add_argument("--stages", default=",".join(STAGES[1:]),
                   help=f"comma list of stages after device, run in the check's order ({', '.join(STAGES[1:])})")
    p.add_argument("--budget", type=float, default=570.0, help="seconds for the whole check (default 570)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    wanted = [x.strip() for x in args.stages.split(",") if x.strip()]
    if set(wanted) - set(STAGES):
        p.error(f"--stages {args.stages!r}: stages are {', '.join(STAGES[1:])}")
    deadline = time.perf_counter() + args.budget - MARGIN_S
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    env = _env(args.size)
    cmds = _commands(args.size, out)
    invocation = "python -m infer.bench.gpu_check " + shlex.join(sys.argv[1:] if argv is None else argv)
    stages = [_run_stage("device", cmds["device"], env, out, min(LIMITS["device"], args.budget))]
    info = {}
    if stages[0]["status"] == "ok":
        info = json.loads(stages[0]["result"])
        stages[0]["result"] = _describe(info)
        print(f"device: {stages[0]['result']}", flush=True)
        if args.size == "full" and info["backend"] != "gpu":
            stages[0]["status"] = f"failed: backend is {info['backend']}, not gpu (GPU_CHECK_SIZE=cpu checks on CPU)"
    if stages[0]["status"] == "ok":
        for stage in (s for s in STAGES[1:] if s in wanted):
            left = deadline - time.perf_counter()
            if left < MIN_STAGE_S:
                stages.append({"stage": stage, "command": shlex.join(cmds[stage]), "exit_code": None, "seconds": 0.0,
                               "status": f"skipped: {left:.0f} s of the --budget {args.budget:.0f} s left",
                               "log": "", "result": ""})
                print(f"[{stage}] {stages[-1]['status']}", flush=True)
                continue
            stages.append(_run_stage(stage, cmds[stage], env, out, min(LIMITS[stage], left)))
    report.write_json({"size": args.size, "device": info, "invocation": invocation, "stages": stages,
                       "env": {k: env.get(k) for k in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION")}},
                      os.path.join(out, "gpu_check.json"))
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(render_summary(args.size, info, stages, out, invocation))
    print(f"wrote {os.path.join(out, 'summary.md')}")
    failed = [s["stage"] for s in stages if s["status"] != "ok"]  # a skipped stage counts: it did not run
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
