"""The benchmark runner: `python -m infer.bench --out results/bench` (see infer/bench/__init__.py)."""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import sys
import time
import traceback

from infer.bench import report
from infer.bench.experiment import EXPERIMENTS_DIR, default_size, discover, load_experiment

METRICS = """\
Metrics: TTFT = prefill of B prompts of S tokens + the first token (ms). step = one decode step for B
rows at context S, blocked (median, ms). multi_ms_per_tok = a run of decode steps blocked once, per
step; gen_ms_per_tok = the same from `infer.generation.batch` (on-device loop). tok_s = B / multi_ms_per_tok.
`*_pred` = the refined roofline model (`infer.perf.roofline`): max(bytes / bandwidth, FLOPs / peak). GB_s =
(weights + KV bytes the step must move) / step time. MBU = GB_s / the profile's bandwidth (datasheet on
GPU/TPU, the probed read bandwidth on CPU); mbu_probe = against the probed read bandwidth; MFU = step
FLOPs / time / the profile's FLOP/s. `lecture_*` = the lecture's exact model (memory / bandwidth). AI =
arithmetic intensity (FLOPs per byte) of the decode MLP / attention and of the hardware; bound = which
of memory and compute time is larger. Other experiments define their own columns in their sections.
"""


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m infer.bench", description=__doc__)
    p.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only experiments with this name or kind (repeatable)")
    p.add_argument("--experiments", default=EXPERIMENTS_DIR, help="folder of experiment YAMLs")
    p.add_argument("--size", choices=("auto", "cpu", "full"), default="auto",
                   help="apply the YAML's cpu: block (auto: on the CPU backend only)")
    p.add_argument("--list", action="store_true", help="print the experiments and their resolved specs, run nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    size = default_size() if args.size == "auto" else args.size
    paths = discover(args.experiments)
    exps, failures = [], []
    for path in paths:
        try:
            exps.append(load_experiment(path, size))
        except Exception as e:  # a broken YAML is a failed experiment, not a crashed runner
            name = os.path.splitext(os.path.basename(path))[0]
            failures.append((name, f"{type(e).__name__}: {e}"))
    if args.only:
        wanted = set(args.only)
        exps = [e for e in exps if e.name in wanted or e.kind in wanted]
        failures = [f for f in failures if f[0] in wanted]
        missing = wanted - {e.name for e in exps} - {e.kind for e in exps} - {f[0] for f in failures}
        if missing:
            print(f"error: --only {sorted(missing)} matched no experiment in {args.experiments}", file=sys.stderr)
            return 2
    if args.list:
        for e in exps:
            print(f"{e.name} (kind: {e.kind}): {e.spec}")
        for name, err in failures:
            print(f"{name}: INVALID: {err}")
        return 1 if failures else 0

    from infer.bench.device_probe import describe, device_info
    info = device_info()
    command = "python -m infer.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"device: {describe(info)}; JAX {info['jax_version']}; size: {size}; {len(exps)} experiments", flush=True)
    results = []
    for i, e in enumerate(exps, 1):
        print(f"[{i}/{len(exps)}] {e.name} (kind: {e.kind})", flush=True)
        t0 = time.perf_counter()
        out = {"experiment": e.name, "kind": e.kind, "description": e.description, "spec": e.spec,
               "size": size, "device": info, "command": command,
               "started": datetime.datetime.now().isoformat(timespec="seconds")}
        columns = None
        try:
            module = importlib.import_module(f"infer.bench.{e.kind}")
            columns = getattr(module, "MARKDOWN_COLUMNS", None)
            exp_dir = os.path.join(args.out, e.name)
            os.makedirs(exp_dir, exist_ok=True)
            rows = module.run(dict(e.spec), exp_dir)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise TypeError(f"infer.bench.{e.kind}.run must return a list of dicts, got {type(rows).__name__}")
            out.update(status="ok", rows=rows)
        except Exception as ex:
            traceback.print_exc()
            out.update(status="failed", error=f"{type(ex).__name__}: {ex}", rows=[])
            failures.append((e.name, out["error"]))
        out["elapsed_s"] = time.perf_counter() - t0
        report.write_json(out, os.path.join(args.out, f"{e.name}.json"))
        out["columns"] = columns
        results.append(out)
        print(f"  {out['status']} in {out['elapsed_s']:.1f}s, {len(out['rows'])} rows", flush=True)
        if out["rows"]:
            print(report.markdown_table(out["rows"], columns), flush=True)

    summary = render_summary(results, failures, info, command, size)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    print(f"wrote {os.path.join(args.out, 'summary.md')}")
    if failures:
        print(f"FAILED: {', '.join(n for n, _ in failures)}", file=sys.stderr)
        return 1
    return 0


def render_summary(results, failures, info, command, size) -> str:
    from infer.bench.device_probe import describe
    lines = [
        "# Benchmark results", "",
        f"- command: `{command}`",
        f"- device: {describe(info)}",
        f"- JAX {info['jax_version']} (jaxlib {info['jaxlib_version']}), Python {info['python']}",
        f"- sizes: {size} (`cpu:` blocks of the experiment YAMLs {'applied' if size == 'cpu' else 'not applied'})",
        f"- date: {datetime.date.today().isoformat()}", "",
        METRICS,
    ]
    for r in results:
        lines += [f"## {r['experiment']} (`kind: {r['kind']}`)", ""]
        if r.get("description"):
            lines += [r["description"], ""]
        if r["status"] != "ok":
            lines += [f"**FAILED**: {r['error']}", ""]
        else:
            lines += [f"{len(r['rows'])} rows in {r['elapsed_s']:.1f}s.", "", report.markdown_table(r["rows"], r["columns"])]
    ran = {r["experiment"] for r in results}
    for name, err in failures:
        if name not in ran:
            lines += [f"## {name}", "", f"**INVALID**: {err}", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
