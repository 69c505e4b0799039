"""Benchmarks: every experiment in configs/experiments/, run by one command.

    python -m infer.bench --out results/bench             # all experiments (make bench)
    python -m infer.bench --only decode_bench --out ...   # a subset (repeatable; name or kind)
    python -m infer.bench --list                          # what would run, with the resolved specs

Protocol: an experiment is `configs/experiments/<name>.yaml` with `kind: X`. The runner
imports `infer.bench.X` and calls `run(spec: dict, out_dir: str) -> list[dict]`, where spec is
the YAML's fields (its `cpu:` block applied on the CPU backend) plus "name" and "kind", and
out_dir is a folder for that experiment's extra files (plots). The module may define
`MARKDOWN_COLUMNS` (the columns the summary shows; the JSON keeps every key). Parse the
spec with `infer.bench.experiment.parse_spec(YourFrozenSpec, spec)`.

Outputs: <out>/<name>.json (device, JAX version, command, spec, rows, status) and
<out>/summary.md (all tables). A failing experiment is reported and the rest still run;
the exit status is non-zero if any failed.

Shared helpers:
- infer.bench.timing: `time_fn(fn, warmup=, repeats=, setup=)` -> Timing (median_s, min_s, samples),
  `timed(fn, *args)`, `block(pytree)`: warm up, block_until_ready, medians.
- infer.bench.device_probe: `measure_bandwidth`, `measure_matmul_flops`, `device_info`.
- infer.bench.report: `markdown_table(rows, columns)`, `write_json(obj, path)`.
- infer.bench.experiment: `parse_spec`, `require`, `positive_ints`, `SpecError`.
"""
