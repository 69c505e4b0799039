"""Where a decode step's time goes: the compiled step's ops by device time, from a `jax.profiler` trace.

    python -m infer.bench.step_profile --model llama3-8b --batch 1 --context 1024 --layouts stacked,unrolled
    python -m infer.bench.step_profile --model small --dtype float32          # any configs/models name

For each layout (infer/model/layout.py) the model's decode step (`infer.model.rows.decode_step`,
random weights: time does not depend on values) is compiled and warmed up, its median blocked
step time is measured, then `--steps` steps run under `jax.profiler.trace`. The trace is read
back with `jax.profiler.ProfileData` and every op event is summed by name:

- on a GPU/TPU, the device plane's "XLA Ops" line (each HLO op's device time; the kernels of a
  custom call or a Pallas kernel are one op), or its stream lines when there is no such line (each
  kernel, labelled "<HLO op>: <kernel>" when the trace names the op);
- on the CPU, the XLA thunks on the host's XLA threads, less the executor and loop wrappers that
  contain other ops.

Each op gets a category by its name (`CATEGORIES`: slice/copy, matmul, attention, other), so the
table answers "how much of a step is weight-slice copies / matmuls / attention / the rest", and
"op time / step" says how much of the wall-clock step the device was busy (well under 1: launch
or host gaps). Writes <out>/step_profile.md and .json (the top `--top` ops of each layout and the
category totals); the raw traces stay under <out>/trace_<layout>/ for TensorBoard / Perfetto.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import time
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp

# First match wins, on the lower-cased op name (XLA names ops by kind: CPU `dot.3`, `dynamic-slice_bitcast_fusion`;
# GPU `cublas-gemm.1`, `gemm_fusion_dot.2`, `loop_dynamic_slice_fusion`; a Pallas call carries its kernel's name, the
# decode GEMV kernels `gemv_*` (pallas_kernels/gemv/) count as matmuls;
# CPU `ynn_fusion` / `xnn_fusion` are dots XLA hands to YNNPACK / XNNPACK, e.g. the reference attention's einsums).
# A custom call named only `custom-call.N` lands in "other": read its name in the op table.
CATEGORIES = (
    ("slice/copy", re.compile(r"dynamic.slice|dynamic_slice|copy|transpose|gather")),
    ("matmul", re.compile(r"gemm|gemv|dot|matmul|cublas|convolution|ynn_fusion|xnn_fusion")),
    ("attention", re.compile(r"pallas|triton|mosaic|ragged|decode|attention|softmax")),
)
# CPU host-thread events that contain other ops (counting them would count their ops twice)
WRAPPERS = re.compile(r"^(ThunkExecutor|while|call|conditional|Thunk|PjRt|Execute)", re.I)


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, rx in CATEGORIES if rx.search(low)), "other")


def op_times(trace_dir: str) -> Tuple[Dict[str, float], Dict[str, int], str]:
    """({op name: total ns}, {op name: count}, source) from the newest xplane.pb under trace_dir."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}: the profiler wrote no trace")
    data = jax.profiler.ProfileData.from_file(files[-1])
    planes = list(data.planes)
    devices = [p for p in planes if p.name.startswith(("/device:GPU", "/device:TPU"))]
    total: Dict[str, float] = collections.Counter()
    count: Dict[str, int] = collections.Counter()
    if devices:
        plane = devices[0]
        lines = [ln for ln in plane.lines if ln.name == "XLA Ops"]
        source = f"{plane.name} XLA Ops"
        if not lines:
            lines = [ln for ln in plane.lines if ln.name.startswith("Stream")]
            source = f"{plane.name} streams"
    else:
        plane = next(p for p in planes if p.name == "/host:CPU")
        lines = [ln for ln in plane.lines if ln.name.startswith("tf_XLA")]
        source = "/host:CPU XLA threads"
    for line in lines:
        for ev in line.events:
            if not devices and WRAPPERS.match(ev.name):
                continue
            label = _label(ev)
            total[label] += ev.duration_ns
            count[label] += 1
    return dict(total), dict(count), source


def _label(ev) -> str:
    """An event's name; a GPU kernel's as "<its HLO op>: <kernel>" when the trace says which op launched it
    (cuBLAS kernels are named by tile shape, the op by its kind: together they say what ran)."""
    try:
        op = dict(ev.stats).get("hlo_op")
    except (TypeError, ValueError):
        op = None
    return f"{op}: {ev.name}" if op and op != ev.name else ev.name


def profile_layout(cfg, layout: str, B: int, S: int, steps: int, repeats: int, trace_dir: str) -> dict:
    """Median blocked step time and the per-op device time of `steps` profiled steps, in one layout."""
    from infer.bench.decode_bench import synthetic_cache
    from infer.bench.timing import block
    from infer.model.params import init_params
    from infer.model.rows import decode_step
    cfg = cfg.replace(scan_layers=layout == "stacked")
    params = block(init_params(cfg, jax.random.PRNGKey(0)))
    cache = synthetic_cache(cfg, B, S, S + repeats + steps + 4)
    tok = jnp.zeros((B,), jnp.int32)
    for _ in range(2):  # compile + warm up
        _, cache = block(decode_step(params, cfg, tok, cache))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, cache = block(decode_step(params, cfg, tok, cache))
        samples.append(time.perf_counter() - t0)
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            _, cache = decode_step(params, cfg, tok, cache)
        block(cache)
    total, count, source = op_times(trace_dir)
    step_ms = statistics.median(samples) * 1e3
    per_step = {name: ns / steps / 1e6 for name, ns in total.items()}  # ms per step
    busy = sum(per_step.values())
    ops = sorted(({"op": n, "category": category(n), "ms_per_step": ms, "calls_per_step": count[n] / steps,
                   "share_of_op_time": ms / busy if busy else 0.0} for n, ms in per_step.items()),
                 key=lambda r: -r["ms_per_step"])
    cats = collections.Counter()
    for r in ops:
        cats[r["category"]] += r["ms_per_step"]
    del params, cache
    return {"layout": layout, "B": B, "S": S, "step_ms": step_ms, "op_ms_per_step": busy,
            "busy_fraction": busy / step_ms if step_ms else 0.0, "source": source,
            "categories": {c: cats.get(c, 0.0) for c in ("slice/copy", "matmul", "attention", "other")}, "ops": ops}


def render(model: str, dtype: str, results: List[dict], top: int) -> str:
    lines = [f"Decode step of `{model}` ({dtype}, random weights); op times from `jax.profiler` "
             f"({results[0]['source']}), per step.", "",
             "| layout | B | S | step ms (wall, median) | op ms per step | busy | slice/copy ms | matmul ms "
             "| attention ms | other ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["categories"]
        lines.append(f"| {r['layout']} | {r['B']} | {r['S']} | {r['step_ms']:.3f} | {r['op_ms_per_step']:.3f} | "
                     f"{r['busy_fraction']:.0%} | {c['slice/copy']:.3f} | {c['matmul']:.3f} | {c['attention']:.3f} | "
                     f"{c['other']:.3f} |")
    for r in results:
        lines += ["", f"Top {top} ops, {r['layout']}:", "", "| op | category | ms per step | calls per step | share |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{o['op'][:80]}` | {o['category']} | {o['ms_per_step']:.4f} | {o['calls_per_step']:.1f} | "
                  f"{o['share_of_op_time']:.1%} |" for o in r["ops"][:top]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m infer.bench.step_profile", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama3-8b", help="configs/models name (random weights)")
    ap.add_argument("--dtype", default=None, help="override the config's dtype")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=1024, help="S: cached tokens per row")
    ap.add_argument("--layouts", default="stacked,unrolled")
    ap.add_argument("--steps", type=int, default=10, help="profiled steps")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps (median) before profiling")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default="results/step-profile")
    ap.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before the backend starts (e.g. "
                    "--xla_gpu_enable_dynamic_slice_fusion=true: cuBLAS reads a scanned weight's slice in place)")
    args = ap.parse_args(argv)
    if args.xla_flags:  # read when the backend is created, which nothing above has done
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    from infer.config import load_config
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if not layouts or set(layouts) - {"stacked", "unrolled"}:
        ap.error(f"--layouts {args.layouts!r}: stacked and/or unrolled")
    cfg = load_config(args.model, **({"dtype": args.dtype} if args.dtype else {}))
    if args.context + args.repeats + args.steps + 4 > cfg.max_seq_len:
        ap.error(f"--context {args.context}: past the model's max_seq_len {cfg.max_seq_len} with the steps")
    os.makedirs(args.out, exist_ok=True)
    results = []
    for layout in layouts:
        print(f"[step_profile] {args.model} {layout} B={args.batch} S={args.context} ...", file=sys.stderr, flush=True)
        results.append(profile_layout(cfg, layout, args.batch, args.context, args.steps, args.repeats,
                                      os.path.join(args.out, f"trace_{layout}")))
    md = render(args.model, cfg.dtype, results, args.top)
    if args.xla_flags:
        md = f"XLA_FLAGS: `{os.environ['XLA_FLAGS']}`\n\n" + md
    with open(os.path.join(args.out, "step_profile.md"), "w") as f:
        f.write(md)
    summary = {"model": args.model, "dtype": cfg.dtype, "device": str(jax.devices()[0]), "jax": jax.__version__,
               "xla_flags": os.environ.get("XLA_FLAGS", ""),
               "command": "python -m infer.bench.step_profile " + " ".join(argv if argv is not None else sys.argv[1:]),
               "results": [{**r, "ops": r["ops"][:args.top]} for r in results]}
    with open(os.path.join(args.out, "step_profile.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(md)
    print("[step_profile] done: " + "; ".join(
        f"{r['layout']} step {r['step_ms']:.3f} ms, op time {r['op_ms_per_step']:.3f} ms of which slice/copy "
        f"{r['categories']['slice/copy']:.3f}" for r in results), flush=True)
    return summary


if __name__ == "__main__":
    main()
