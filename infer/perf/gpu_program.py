"""The GPU program report: what our jitted programs launch on an H100, compiled here without a GPU.

    python -m infer.perf.gpu_program --model llama3-8b --batch 1 --context 1024
    python -m infer.perf.gpu_program --model smollm2-135m --programs decode,generate --layout stacked

Each program is traced for the GPU (target_platform("gpu"): the Pallas kernels, the GPU layout), compiled by
XLA's CUDA pipeline against configs/hardware/h100.target.txtpb (infer/perf/aot_target.py), and read back from
the compiler's dump (infer/perf/thunks.py): kernel launches per step and per layer, kernels by family (XLA
fusions, Triton GEMMs, cuBLAS, Pallas), copies and the bytes they move (weight-sized ones flagged), host
submissions (a command buffer is one), the largest float32 buffer a kernel writes, and temp memory.

Programs (all at --batch rows, a cache of --context positions, --weights in the model's dtype or quantized):
    decode          one decode step over a static batch of rows (infer.decode_step's program)
    verify          a speculative verify: k+1 tokens per row, logits at every one (--spec-k)
    generate        the on-device generation loop (per token: one trip of its while loop)
    engine_decode   the engine's step (page copies, ragged step, sampling) with --batch decode tokens
    engine_mixed    the engine's step with one prefill chunk beside --batch - 1 decode tokens
Without a GPU there are no timings and GEMM tiles are XLA's untuned defaults; the same report from a real GPU
(`make gpu-check`'s program stage) says how far the two differ.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig, SamplingParams, load_config
from infer.config.sampling_params import batch_arrays
from infer.config.xla_flags import LOOP_COMPILER_OPTIONS
from infer.kv.metadata import SequenceStep, build_metadata
from infer.kv.pool import init_pools
from infer.perf.aot_target import abstract, gpu_topology, replicated
from infer.perf.thunks import ProgramReport, read_dump
from pallas_kernels.platform import target_platform

PROGRAMS = ("decode", "verify", "generate", "engine_decode", "engine_mixed")
LAYOUT_CHOICES = ("auto", "stacked", "unrolled")
PAGE_SIZE = 16


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """What to compile: a model config, a layout, rows, context, weights, and the speculative k for verify."""

    cfg: ModelConfig
    layout: str = "auto"
    batch: int = 1
    context: int = 1024
    spec_k: int = 4
    generate_tokens: int = 64

    def __post_init__(self):
        if self.layout not in LAYOUT_CHOICES:
            raise ValueError(f"layout {self.layout!r}: expected one of {', '.join(LAYOUT_CHOICES)}")
        for name in ("batch", "context", "spec_k", "generate_tokens"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ValueError(f"{name}: must be an int > 0, got {getattr(self, name)!r}")
        if self.context + self.spec_k + self.generate_tokens > self.cfg.max_seq_len:
            raise ValueError(f"context: {self.context} (+ {self.spec_k} verify / {self.generate_tokens} generated "
                             f"tokens) exceeds the model's max_seq_len={self.cfg.max_seq_len}")


def decode_params(cfg: ModelConfig, layout: str, engine: bool = False):
    """(cfg, abstract params) in the layout `layout` resolves to for the target (for_decode's rule, or
    for_engine's for the engine's programs)."""
    from infer.model.layout import for_decode, for_engine
    from infer.model.params import init_params
    stacked = jax.eval_shape(lambda: init_params(cfg.replace(scan_layers=True), jax.random.PRNGKey(0)))
    holder = {}

    def convert(p):
        dcfg, out = (for_engine if engine else for_decode)(cfg.replace(scan_layers=True), p, layout)
        holder["cfg"] = dcfg
        return out
    params = jax.eval_shape(convert, stacked)
    return holder["cfg"], params


def _rows_cache(cfg, B, max_len):
    from infer.model.rows import init_cache
    return jax.eval_shape(lambda: init_cache(cfg, B, max_len, page_size=PAGE_SIZE))


def build_program(name: str, spec: ProgramSpec) -> Tuple[Callable, tuple, Tuple[int, ...], dict]:
    """(function, concrete-or-abstract arguments, donated argument numbers, compiler options) of program `name`,
    as the stack compiles it for a GPU."""
    from infer.model.rows import extend_rows
    cfg, params = decode_params(spec.cfg, spec.layout, engine=name.startswith("engine"))
    B, S = spec.batch, spec.context
    if name in ("decode", "verify"):
        T = 1 if name == "decode" else spec.spec_k + 1
        cache = _rows_cache(cfg, B, S + T)
        which = "last" if name == "decode" else "all"
        fn = lambda p, t, n, c: extend_rows(p, cfg, t, n, c, which)
        return fn, (params, jax.ShapeDtypeStruct((B, T), jnp.int32), jax.ShapeDtypeStruct((B,), jnp.int32),
                    cache), (3,), {}
    if name == "generate":
        from infer.generation.batch import decode_loop
        cache = _rows_cache(cfg, B, S + spec.generate_tokens)
        samp = batch_arrays([SamplingParams(temperature=0.0, max_new_tokens=spec.generate_tokens)], B)
        fn = lambda p, first, c, active, sp: decode_loop(p, cfg, first, c, active, sp, spec.generate_tokens)
        return fn, (params, jax.ShapeDtypeStruct((B,), jnp.int32), cache, jax.ShapeDtypeStruct((B,), jnp.bool_),
                    samp), (2,), LOOP_COMPILER_OPTIONS
    if name in ("engine_decode", "engine_mixed"):
        from infer.engine.device_step import run_engine_step
        from infer.engine.engine import sampling_arrays
        M = -(-(S + 1) // PAGE_SIZE)
        P = B * M + 1
        prefill = min(S, 256) if name == "engine_mixed" else 0
        seqs = [SequenceStep(tokens=[1] * (prefill if (prefill and r == 0) else 1),
                             pages=list(range(r * M, (r + 1) * M)), cached=0 if (prefill and r == 0) else S)
                for r in range(B)]
        # the engine's own step shapes (Engine.step_shapes): a decode-only step runs one row per sequence
        rows = 1 << (B - 1).bit_length()
        shapes = dict(num_tokens=rows, num_seqs=rows, num_logits=rows, max_q_len=1) if not prefill else \
            dict(prefill_rows=1)
        tokens_T, meta = build_metadata(seqs, page_size=PAGE_SIZE, num_pages=P, **shapes)
        R = meta.query_start_R.shape[0]
        kv = jax.eval_shape(lambda: init_pools(cfg, P, PAGE_SIZE))
        samp = sampling_arrays([], [], R, -(-cfg.vocab_size // 32))  # greedy padding rows, as the engine pads a
        # step, and its token bitmask (all ones: no constrained row)
        fn = lambda p, t, m, k, src, dst, rows, pos, sp: run_engine_step(p, cfg, t, m, k, src, dst, rows, pos, sp)
        ints = lambda n, fill=0: np.full((n,), fill, np.int32)
        return fn, (params, tokens_T, meta, kv, ints(R), ints(R, P), ints(R), ints(R, S), samp), (3,), \
            LOOP_COMPILER_OPTIONS
    raise ValueError(f"program {name!r}: expected one of {', '.join(PROGRAMS)}")


def target_sharding(target: str):
    """(sharding, platform) to compile for: "device" = this process's first device (a real GPU: the report of
    what runs there), else a deviceless target of infer/perf/aot_target.py ("h100")."""
    if target == "device":
        dev = jax.devices()[0]
        return jax.sharding.SingleDeviceSharding(dev), dev.platform
    return replicated(gpu_topology(target)), "gpu"


def compile_report(name: str, spec: ProgramSpec, target: str = "h100", dump_dir: Optional[str] = None,
                   options: Optional[dict] = None) -> ProgramReport:
    """Compile program `name` for `target` (see target_sharding) and read its report from the compiler's dump;
    `options`: more XLA compiler options (e.g. xla_gpu_dump_autotune_results_to / _load_autotune_results_from)."""
    sharding, platform = target_sharding(target)
    with target_platform(platform):
        fn, args, donate, program_options = build_program(name, spec)
        args = abstract(jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), args), sharding)
        with tempfile.TemporaryDirectory() as tmp:
            out = dump_dir or tmp
            compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile(
                compiler_options={**program_options, **(options or {}), "xla_dump_to": out,
                                  "xla_dump_hlo_as_text": True})
            report = read_dump(out)
    mem = compiled.memory_analysis()
    report.temp_bytes = getattr(mem, "temp_size_in_bytes", None)
    return report


def weight_sizes(cfg: ModelConfig) -> Tuple[float, set]:
    """(the smallest weight matrix's bytes, the shapes of every weight matrix) of one layer, projections fused or
    not, and of the L-stacked arrays: a copy at least that large, or an XLA fusion writing an array of one of those
    sizes (thunks.ProgramReport.writes_of), copies (or pads, converts, multiplies out) a weight."""
    from infer.model.params import init_params
    shapes, smallest = set(), float("inf")
    for fused in (False, True):
        c = cfg.replace(scan_layers=False, fused_projections=fused and not cfg.is_mla)
        p = jax.eval_shape(lambda: init_params(c, jax.random.PRNGKey(0)))
        for path, x in jax.tree_util.tree_flatten_with_path(p["layers_0"])[0]:
            if getattr(path[-1], "key", None) in ("kernel", "q"):
                shapes |= {tuple(x.shape), (cfg.kv_layers,) + tuple(x.shape)}
                smallest = min(smallest, x.size * x.dtype.itemsize)
    return smallest, shapes


def report_row(name: str, spec: ProgramSpec, rep: ProgramReport) -> dict:
    """One table row: per-step and per-layer numbers, weight-sized copies counted against weight_bytes."""
    cfg = spec.cfg
    wbytes, shapes = weight_sizes(cfg)
    big = rep.copies_at_least(wbytes)
    row = {"program": name, "target": "", "layout": spec.layout, "B": spec.batch, "S": spec.context,
           "weights": cfg.weight_format or cfg.dtype, **rep.summary()}
    row["launches_per_step"] = rep.launches
    row["launches_per_layer"] = rep.layer_launches / cfg.n_layers  # a layer's own ops (infer/perf/thunks.py)
    row["launches_outside_layers"] = rep.launches - rep.layer_launches
    row["launches_in_branches"] = rep.branch_launches  # counted above, though only the taken branch runs
    big += rep.writes_of(shapes)  # a weight padded, converted or multiplied out by an XLA fusion is a copy too
    row["weight_copies"] = sum(c.runs for c in big)
    row["weight_copy_GB"] = sum(c.bytes * c.runs for c in big) / 1e9
    row["weight_copy_ops"] = sorted({f"{c.op} {c.shape}" for c in big})[:8]
    row["largest_f32_op"] = rep.largest_f32[0]
    return row


COLUMNS = ("program", "target", "layout", "B", "weights", "launches_per_step", "launches_per_layer",
           "launches_outside_layers", "launches_in_branches", "kernels_xla",
           "kernels_triton_gemm", "kernels_cublas", "kernels_pallas", "weight_copies", "weight_copy_GB",
           "submissions", "command_buffers", "largest_f32_MB", "temp_MB")


def markdown(rows: List[dict]) -> str:
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c, 0)) for c in COLUMNS) + " |\n" for r in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama3-8b", help="a config in configs/models/ (random weights' shapes)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--weights", default="", help="a weight format (int8, int4-g128, ...) or empty: float weights")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto")
    ap.add_argument("--programs", default="decode,engine_decode,engine_mixed",
                    help=f"comma-separated, from {', '.join(PROGRAMS)}")
    ap.add_argument("--spec-k", type=int, default=4)
    ap.add_argument("--targets", default="h100",
                    help="comma-separated: h100 (deviceless, this machine needs no GPU) and/or device (this "
                         "process's GPU: what really runs, for comparison)")
    ap.add_argument("--autotune-dump", default="",
                    help="write XLA's GEMM autotuning results here (on a real GPU), one file per program")
    ap.add_argument("--autotune-load", default="",
                    help="a folder of such files: deviceless compiles use them instead of untuned defaults")
    ap.add_argument("--dump", default="", help="keep each program's compiler dump under this folder")
    ap.add_argument("--out", default="", help="write report.json and report.md here")
    a = ap.parse_args(argv)
    names = [n for n in a.programs.split(",") if n]
    bad = [n for n in names if n not in PROGRAMS]
    if bad:
        ap.error(f"--programs: unknown {bad}; expected from {', '.join(PROGRAMS)}")
    cfg = load_config(a.model).replace(dtype=a.dtype, weight_format=a.weights or None)
    spec = ProgramSpec(cfg, a.layout, a.batch, a.context, a.spec_k)
    rows = []
    for target in a.targets.split(","):
        for n in names:
            print(f"compiling {n} for {target} ...", flush=True)
            options = {}
            tag = f"{a.model}-{a.weights or a.dtype}-B{a.batch}-{n}"
            if a.autotune_dump and target == "device":
                os.makedirs(a.autotune_dump, exist_ok=True)
                options["xla_gpu_dump_autotune_results_to"] = os.path.join(a.autotune_dump, tag + ".textproto")
            loaded = os.path.join(a.autotune_load, tag + ".textproto") if a.autotune_load else ""
            if loaded and os.path.exists(loaded) and target != "device":
                options["xla_gpu_load_autotune_results_from"] = loaded
            dump = os.path.join(a.dump, target, n) if a.dump else None
            row = report_row(n, spec, compile_report(n, spec, target, dump, options))
            row["target"] = target + (" (tuned)" if "xla_gpu_load_autotune_results_from" in options else "")
            rows.append(row)
    table = markdown(rows)
    print(f"\n{a.model} (JAX {jax.__version__}; h100 = deviceless compile on this machine)\n\n{table}")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        json.dump(rows, open(os.path.join(a.out, "report.json"), "w"), indent=1)
        open(os.path.join(a.out, "report.md"), "w").write(table)
    return rows


if __name__ == "__main__":
    main()
