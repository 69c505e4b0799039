"""Experiment `kind: parallel_bench`: decode steps under tensor and data parallelism, beside the TP roofline.

For every layout [tp, dp] of the spec, every context S and batch size B, on the mesh
`make_mesh(tp, dp)` (none for [1, 1]):

- tensor parallelism (dp = 1): the parameters go through `prepare_tensor_parallel` (KV heads replicated
  vLLM-style where K does not divide tp), the page pools are drawn directly with the sharding
  `shard_pools` gives them (KV-head axis on "model"; no full copy on one device first), B rows of
  M = ceil((S + 1) / Z) pages with `lengths` = S; the timed call is one `infer.model.rows.decode_step`
  (jitted, cache donated, host checks included) inside `mesh_context(mesh)`, blocked. `lengths` is reset to S
  before every step (as kv_variants_bench does), so every sample is the same step at context S.
- data parallelism (dp > 1): the B requests are split over the dp replicas as evenly as possible (B // dp,
  the first B % dp replicas one more; a replica left without a request idles). Replica i is what
  `DataParallelEngine` builds: the mesh's data row i as a ("data", "model") mesh of 1 x tp devices, its own
  prepared parameters and its own pools. Two timings per sample:
    step_ms      every active replica's decode step dispatched, then all blocked together: what replicas on
                 independent devices can reach (a thread per replica, or async dispatch);
    step_seq_ms  replicas stepped one after another, each blocked: what `DataParallelEngine.step()` does
                 today (each replica's step ends in its own host transfer).
  tok_s = B / step_ms (one token per request per step).
- median over `repeats` blocked samples after `warmup` (compilation is in the warmup).

The engine's workload path (`make_engine` + requests) was not used on purpose: its tokens/s mixes prefill,
scheduling and sampling into the number, and the roofline below predicts one decode step.

Predictions (`infer.perf.parallel_cost.tp_step_cost(cfg, tp, b, 1, S)` of the original config, for each
replica's b rows): step_pred_ms = the slowest replica's per-device max(memory, compute) + its all-reduces
(ring, no overlap) on the profile; comm_pred_ms = those all-reduces; tok_s_pred = B / step_pred_ms;
pred_speedup = tok_s_pred / that of [1, 1]. `hardware: auto` = the datasheet of the device kind on GPU/TPU
(with its NVLink/ICI bandwidth); on CPU the probed profile (read bandwidth, matmul FLOP/s), whose "link" is
the probed read bandwidth (an all-reduce between host devices is a copy through the same memory) with the
profile's 10 us per all-reduce, unless `interconnect_GB_s` / `interconnect_latency_us` say otherwise.

On CPU the "devices" (XLA_FLAGS=--xla_force_host_platform_device_count) are slices of one process that
share the same cores and the same memory: a TP=8 step does the same work as TP=1 on the same hardware,
plus partitioning and all-reduces. The CPU numbers therefore show the overhead of the parallel code
paths, not scaling; every CPU row says so in its `caveat` column. step_pred_shared_ms (CPU only) is the
roofline for that situation: the work of all devices on the one shared memory system + the all-reduces.

Devices: a layout that needs more devices than JAX sees is a row with status "not measured (needs N
devices, M available)", never silently skipped. On the CPU backend, `host_devices: N` (N > the devices JAX
already has) re-runs the measurement part in a subprocess, `python -m infer.bench.parallel_bench --measure
SPEC.json OUT.json`, with XLA_FLAGS += --xla_force_host_platform_device_count=N (the flag only works before
JAX starts, and `python -m infer.bench` has started it); the spec goes in and the rows come back as JSON,
and the tables, JSON and plot are written by this process. GPU/TPU runs never use the subprocess.

Spec fields (configs/experiments/parallel_bench.yaml)::

    model: llama3-8b             # configs/models name (random weights)
    model_overrides: {}          # ModelConfig fields
    dtype: bfloat16              # optional override of the config's dtype
    attention_impl: auto
    layouts: [[1, 1], [2, 1], [4, 1], [8, 1], [2, 2], [1, 2]]   # [tp, dp] pairs, in table order
    batch_sizes: [1, 16]
    context_lens: [1024]
    warmup: 2
    repeats: 5
    hardware: auto               # datasheet by device kind; CPU: the probes
    interconnect_GB_s: null      # override the profile's device-to-device bandwidth (GB/s, one direction)
    interconnect_latency_us: null
    host_devices: 0              # CPU only: forced host devices for a subprocess when JAX has too few (0: never)
    memory_fraction: 0.85        # "skipped" where one device needs more than this share of its memory
    probe_bytes: 268435456
    probe_matmul: 4096
    plot: true                   # parallel.png: tokens/s against devices
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Optional, Tuple

import jax
import numpy as np
from jax.sharding import Mesh

from infer.bench import report
from infer.bench.decode_bench import profiles
from infer.bench.device_probe import device_info
from infer.bench.experiment import SpecError, parse_spec, positive_ints, require
from infer.bench.random_cache import on_mesh, random_row_cache
from infer.bench.timing import Timing, block
from infer.config.model_config import ConfigError, ModelConfig, load_config
from infer.model.params import init_params
from infer.model.rows import decode_step
from infer.parallel.tensor_parallel import make_mesh, mesh_context, prepare_tensor_parallel, replica_meshes
from infer.perf.hardware import HardwareProfile
from infer.perf.parallel_cost import tp_step_cost
from layers.attention import registry

MARKDOWN_COLUMNS = (
    "tp", "dp", "devices", "B", "S", "B_replica", "step_ms", "step_seq_ms", "step_pred_ms", "step_pred_shared_ms",
    "comm_pred_ms", "tok_s", "tok_s_pred", "speedup", "pred_speedup", "bound", "status", "caveat",
)
CPU_CAVEAT = "CPU: devices share cores+memory; overhead, not scaling"

DEFINITIONS = """\
Definitions: [tp, dp] = tensor-parallel degree x data-parallel replicas (mesh `make_mesh(tp, dp)`); devices = tp x dp.
B = requests in the step (split over the replicas: B_replica = the largest replica's rows). step_ms = median wall
time of one blocked decode step at S cached tokens (dp > 1: every replica's step dispatched, then all blocked);
step_seq_ms = dp > 1 only: the replicas stepped one after another, each blocked (what `DataParallelEngine.step()`
does today). step_pred_ms = `tp_step_cost(cfg, tp, B_replica, 1, S).time(hw)`: per-device max(memory, compute) +
all-reduces (ring, not overlapped); comm_pred_ms = those all-reduces; step_pred_shared_ms (CPU) = the work of all
devices on one shared memory system + the all-reduces. tok_s = B / step_ms, tok_s_pred = B / step_pred_ms;
speedup / pred_speedup = tok_s / tok_s_pred divided by [1, 1]'s at the same (B, S). bound = which of the
predicted per-device memory and compute times is larger.
"""


@dataclasses.dataclass(frozen=True)
class ParallelBenchSpec:
    model: str
    layouts: Tuple[Tuple[int, ...], ...]
    batch_sizes: Tuple[int, ...]
    context_lens: Tuple[int, ...]
    model_overrides: Optional[dict] = None
    dtype: Optional[str] = None
    attention_impl: str = "auto"
    warmup: int = 2
    repeats: int = 5
    hardware: str = "auto"
    interconnect_GB_s: Optional[float] = None
    interconnect_latency_us: Optional[float] = None
    host_devices: int = 0
    memory_fraction: float = 0.85
    probe_bytes: int = 256 << 20
    probe_matmul: int = 4096
    plot: bool = True
    seed: int = 0
    name: str = "parallel_bench"

    def __post_init__(self):
        n = self.name
        require(len(self.layouts) > 0, f"{n}.layouts", "must name at least one [tp, dp] pair")
        for i, lay in enumerate(self.layouts):
            require(len(lay) == 2 and all(isinstance(v, int) and v >= 1 for v in lay), f"{n}.layouts[{i}]",
                    f"must be a pair [tp, dp] of ints >= 1, got {list(lay)}")
        require(len(set(self.layouts)) == len(self.layouts), f"{n}.layouts", "lists a [tp, dp] pair twice")
        positive_ints(self.batch_sizes, f"{n}.batch_sizes")
        positive_ints(self.context_lens, f"{n}.context_lens")
        for f in ("repeats", "probe_bytes", "probe_matmul"):
            require(getattr(self, f) >= 1, f"{n}.{f}", f"must be >= 1, got {getattr(self, f)}")
        require(self.warmup >= 0, f"{n}.warmup", f"must be >= 0, got {self.warmup}")
        require(self.host_devices >= 0, f"{n}.host_devices", f"must be >= 0, got {self.host_devices}")
        require(0 < self.memory_fraction <= 1, f"{n}.memory_fraction", f"must be in (0, 1], got {self.memory_fraction}")
        for f in ("interconnect_GB_s", "interconnect_latency_us"):
            v = getattr(self, f)
            require(v is None or v > 0 or (v == 0 and f == "interconnect_latency_us"), f"{n}.{f}",
                    f"must be > 0, got {v}")

    @property
    def max_devices(self) -> int:
        return max(tp * dp for tp, dp in self.layouts)

    def model_config(self) -> ModelConfig:
        o = {"attention_impl": self.attention_impl, **(self.model_overrides or {})}
        if self.dtype is not None:
            o["dtype"] = self.dtype
        try:
            return load_config(self.model, **o)
        except (ValueError, FileNotFoundError) as e:
            raise SpecError(f"{self.name}.model: {e}") from e


def split_batch(B: int, dp: int) -> list:
    """Rows per replica: B // dp each, the first B % dp one more (replicas with 0 rows idle)."""
    return [B // dp + (i < B % dp) for i in range(dp)]


def layout_meshes(tp: int, dp: int) -> list:
    """One 1 x tp mesh per data row of make_mesh(tp, dp), as DataParallelEngine builds its replicas; [None] for
    [1, 1]."""
    mesh = make_mesh(tp, dp)
    return [None] if mesh is None else replica_meshes(mesh)


class Replica:
    """One replica's prepared config, parameters, cache and token input; `step()` dispatches one decode step."""

    def __init__(self, params, cfg: ModelConfig, mesh: Optional[Mesh], B: int, S: int, key):
        self.mesh, self.B, self.S = mesh, B, S
        self.cfg, self.params = (cfg, params) if mesh is None else prepare_tensor_parallel(params, cfg, mesh)
        self.cache = random_row_cache(self.cfg, B, S, key, mesh)
        self.tok = block(on_mesh(np.zeros((B,), np.int32), mesh))

    def reset(self) -> None:
        """lengths back to S (untimed): every sample is the same step at context S."""
        self.cache["lengths"] = block(on_mesh(np.full((self.B,), self.S, np.int32), self.mesh))

    def step(self):
        with mesh_context(self.mesh):
            logits, self.cache = decode_step(self.params, self.cfg, self.tok, self.cache)
        return logits, self.cache


def time_replicas(replicas: list, warmup: int, repeats: int) -> Tuple[Timing, Optional[Timing]]:
    """(every replica dispatched then blocked together, replicas stepped and blocked one by one or None)."""
    together, seq = [], []
    for r in range(warmup + repeats):
        for rep in replicas:
            rep.reset()
        t0 = time.perf_counter()
        block([rep.step() for rep in replicas])
        dt = time.perf_counter() - t0
        if len(replicas) > 1:
            dt_seq = 0.0
            for rep in replicas:
                rep.reset()
                t1 = time.perf_counter()
                block(rep.step())
                dt_seq += time.perf_counter() - t1
        if r >= warmup:
            together.append(dt)
            if len(replicas) > 1:
                seq.append(dt_seq)
    return Timing(tuple(together)), (Timing(tuple(seq)) if seq else None)


def link_profile(hw: HardwareProfile, s: ParallelBenchSpec, backend: str) -> HardwareProfile:
    """The profile with the interconnect the predictions use: the spec's override, else the profile's; on CPU
    (no datasheet link) the probed read bandwidth."""
    bw = s.interconnect_GB_s * 1e9 if s.interconnect_GB_s is not None else hw.interconnect_bandwidth
    if bw is None and backend == "cpu":
        bw = hw.memory_bandwidth
    if bw is None:
        raise SpecError(f"{s.name}.interconnect_GB_s: the profile {hw.name} has no interconnect_bandwidth; set it")
    lat = hw.interconnect_latency if s.interconnect_latency_us is None else s.interconnect_latency_us * 1e-6
    return dataclasses.replace(hw, interconnect_bandwidth=bw, interconnect_latency=lat)


def predict(cfg: ModelConfig, hw: HardwareProfile, tp: int, dp: int, B: int, S: int, cpu: bool) -> dict:
    """The roofline's step for this layout: the slowest replica (one token per request, context S)."""
    sizes = [b for b in split_batch(B, dp) if b]
    costs = [tp_step_cost(cfg, tp, b, 1, S) for b in sizes]
    worst = max(costs, key=lambda c: c.time(hw))
    t = worst.time(hw)
    out = {"B_replica": max(sizes), "replicas_active": len(sizes), "step_pred_ms": t * 1e3,
           "comm_pred_ms": worst.comm_time(hw) * 1e3, "tok_s_pred": B / t, "bound": worst.per_device.bound(hw),
           "device_GB_pred": worst.memory_bytes / 1e9,
           "step_seq_pred_ms": sum(c.time(hw) for c in costs) * 1e3}
    if cpu:  # one memory system for every "device": all their work, then the all-reduces
        out["step_pred_shared_ms"] = (sum(tp * c.per_device.time(hw) for c in costs) + worst.comm_time(hw)) * 1e3
    return out


def measure(s: ParallelBenchSpec) -> dict:
    """Probe, predict and time every (layout, S, B) this process's devices allow; JSON-ready."""
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    cfg = s.model_config()
    info = device_info()
    backend, n_dev = info["backend"], jax.device_count()
    cpu = backend == "cpu"
    hw, measured, copy_bw = profiles(s.hardware, s.probe_bytes, s.probe_matmul, cfg.dtype, info)
    hw = link_profile(hw, s, backend)
    print(f"  {n_dev} x {info['device_kind']} ({backend}); profile {hw.name} ({hw.source}, "
          f"{hw.memory_bandwidth / 1e9:.1f} GB/s, {hw.peak_flops_bf16 / 1e12:.3f} TFLOP/s, link "
          f"{hw.interconnect_bandwidth / 1e9:.1f} GB/s + {hw.interconnect_latency * 1e6:.0f} us per all-reduce)"
          + (f"; {CPU_CAVEAT}" if cpu else ""), flush=True)
    # On CPU every host device shares the machine's RAM: the budget is for all of them together.
    budget = s.memory_fraction * info["device_memory_bytes"]
    attn = f"{cfg.attention_impl} -> {registry.resolve(cfg.attention_impl)}"
    params = None
    key = jax.random.key(s.seed, impl="rbg")
    rows = []
    for tp, dp in s.layouts:
        need = tp * dp
        for S in sorted(s.context_lens):
            for B in sorted(s.batch_sizes):
                row = {"tp": tp, "dp": dp, "devices": need, "B": B, "S": S, "model": cfg.name, "dtype": cfg.dtype,
                       "attn": attn, "hardware": hw.name, "hardware_source": hw.source,
                       "link_GB_s": hw.interconnect_bandwidth / 1e9, "devices_available": n_dev}
                if cpu:
                    row["caveat"] = CPU_CAVEAT
                try:
                    row.update(predict(cfg, hw, tp, dp, B, S, cpu))
                except ConfigError as e:
                    rows.append({**row, "status": f"refused: {e}"})
                    continue
                if need > n_dev:
                    rows.append({**row, "status": f"not measured (needs {need} devices, {n_dev} available)"})
                    continue
                if S + 1 > cfg.max_seq_len:
                    rows.append({**row, "status": f"skipped: S+1={S + 1} > max_seq_len={cfg.max_seq_len}"})
                    continue
                mem = row["device_GB_pred"] * 1e9 * (need if cpu else 1)
                if mem > budget:
                    rows.append({**row, "status": f"skipped: needs {mem / 1e9:.1f} GB > {budget / 1e9:.1f} GB"})
                    continue
                if params is None:
                    params = block(init_params(cfg, jax.random.PRNGKey(s.seed)))
                t0 = time.perf_counter()
                meshes = layout_meshes(tp, dp)
                reps = [Replica(params, cfg, m, b, S, jax.random.fold_in(key, 1000 * i + B))
                        for i, (m, b) in enumerate(zip(meshes, split_batch(B, dp))) if b]
                together, seq = time_replicas(reps, s.warmup, s.repeats)
                del reps
                row.update(step_ms=together.median_s * 1e3, step_min_ms=together.min_s * 1e3, samples=together.n,
                           tok_s=B / together.median_s, status="ok")
                if seq is not None:
                    row.update(step_seq_ms=seq.median_s * 1e3, tok_s_seq=B / seq.median_s)
                rows.append(row)
                print(f"  tp={tp} dp={dp} B={B:<4} S={S:<6} step {row['step_ms']:.3f} ms "
                      + (f"(one by one {row['step_seq_ms']:.3f}) " if seq is not None else "")
                      + f"pred {row['step_pred_ms']:.3f} ms, {row['tok_s']:.1f} tok/s"
                      f"  [{time.perf_counter() - t0:.1f}s]", flush=True)
    del params
    return {"rows": rows, "hardware": dataclasses.asdict(hw), "probe_GB_s": measured.memory_bandwidth / 1e9,
            "probe_copy_GB_s": copy_bw / 1e9, "probe_TFLOP_s": measured.peak_flops_bf16 / 1e12, "device": info,
            "devices_available": n_dev, "config": cfg.to_dict()}


def with_host_devices(xla_flags: str, n: int) -> str:
    """XLA_FLAGS with --xla_force_host_platform_device_count=n (replacing an earlier count)."""
    kept = [f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join(kept + [f"--xla_force_host_platform_device_count={n}"])


def measure_in_subprocess(s: ParallelBenchSpec) -> dict:
    """`measure(s)` in a fresh Python whose JAX sees `s.host_devices` CPU devices; progress goes to our stdout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=with_host_devices(os.environ.get("XLA_FLAGS", ""), s.host_devices))
    with tempfile.TemporaryDirectory(prefix="parallel_bench_") as d:
        spec_path, out_path = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
        with open(spec_path, "w") as f:
            json.dump(dataclasses.asdict(s), f)
        sys.stdout.flush()
        try:  # the child's progress lines go where ours go (pytest's capture may have no file descriptor)
            stdout = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):
            stdout = None
        r = subprocess.run([sys.executable, "-m", "infer.bench.parallel_bench", "--measure", spec_path, out_path],
                           env=env, cwd=root, stdout=stdout, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{s.name}: the measurement subprocess with {s.host_devices} host devices failed "
                               f"(exit {r.returncode}):\n{r.stderr[-4000:]}")
        with open(out_path) as f:
            return json.load(f)


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(ParallelBenchSpec, spec)
    s.model_config()  # a bad model is a SpecError before any subprocess starts
    sub = (jax.default_backend() == "cpu" and jax.device_count() < s.max_devices
           and s.host_devices > jax.device_count())
    if sub:
        print(f"  JAX has {jax.device_count()} CPU device(s), the layouts need up to {s.max_devices}: measuring in a "
              f"subprocess with XLA_FLAGS=--xla_force_host_platform_device_count={s.host_devices}", flush=True)
        res = measure_in_subprocess(s)
    else:
        res = measure(s)
    res["measured_in"] = (f"subprocess with {s.host_devices} forced host devices" if sub else "this process")
    rows = add_speedups(res["rows"])
    rows = [{**{c: r.get(c) for c in MARKDOWN_COLUMNS}, **r} for r in rows]

    hw, dev = res["hardware"], res["device"]
    cpu = dev["backend"] == "cpu"
    header = (f"# {s.name}: decode step under tensor / data parallelism ({dev['backend']}, {res['devices_available']}"
              f" x {dev['device_kind']}, measured in {res['measured_in']})\n\n"
              f"Model `{s.model}` with overrides {s.model_overrides or {}} ({res['config']['dtype']}); profile {hw['name']} ({hw['source']}, {hw['memory_bandwidth'] / 1e9:.1f}"
              f" GB/s, {hw['peak_flops_bf16'] / 1e12:.3f} TFLOP/s, link {hw['interconnect_bandwidth'] / 1e9:.1f} GB/s"
              f" + {hw['interconnect_latency'] * 1e6:.0f} us per all-reduce).\n")
    if cpu:
        header += ("\n**On CPU the \"devices\" are forced host devices of one process: they share the same cores and "
                   "the same memory, so these numbers show the overhead of the sharded code paths (partitioning, "
                   "all-reduces, dispatch), not scaling.** The link is the probed read bandwidth standing in for an "
                   "interconnect; step_pred_shared_ms is the roofline for one shared machine.\n")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "parallel.md"), "w") as f:
        f.write(f"{header}\n{report.markdown_table(rows, MARKDOWN_COLUMNS)}\n{DEFINITIONS}")
    report.write_json({"spec": dataclasses.asdict(s), "definitions": DEFINITIONS,
                       "caveat": CPU_CAVEAT if cpu else None, **{k: v for k, v in res.items() if k != "rows"},
                       "rows": rows}, os.path.join(out_dir, "parallel.json"))
    if s.plot:
        plot(rows, os.path.join(out_dir, "parallel.png"), s, cpu)
    return rows


def add_speedups(rows: list) -> list:
    """speedup / pred_speedup: tokens/s over [1, 1]'s at the same (B, S) (None where [1, 1] has none)."""
    base = {(r["B"], r["S"]): r for r in rows if (r["tp"], r["dp"]) == (1, 1)}
    out = []
    for r in rows:
        b = base.get((r["B"], r["S"]), {})
        r = dict(r)
        if r.get("tok_s") is not None and b.get("tok_s"):
            r["speedup"] = r["tok_s"] / b["tok_s"]
        if r.get("tok_s_pred") is not None and b.get("tok_s_pred"):
            r["pred_speedup"] = r["tok_s_pred"] / b["tok_s_pred"]
        out.append(r)
    return out


def plot(rows, path: str, s: ParallelBenchSpec, cpu: bool) -> None:
    """Tokens/s against devices, one panel per (B, S); one line per dp (x = tp x dp): measured solid, roofline
    dashed (CPU: dotted, the roofline of all devices sharing one machine)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(B, S) for S in sorted(s.context_lens) for B in sorted(s.batch_sizes)]
    fig, axs = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    dps = sorted({dp for _, dp in s.layouts})
    for ax, (B, S) in zip(axs[0], panels):
        for i, dp in enumerate(dps):
            pts = sorted((r["devices"], r.get("tok_s"), r.get("tok_s_pred")) for r in rows
                         if r["dp"] == dp and r["B"] == B and r["S"] == S)
            ok = [p for p in pts if p[1] is not None]
            pred = [p for p in pts if p[2] is not None]
            ax.plot([p[0] for p in ok], [p[1] for p in ok], "-o", ms=4, color=f"C{i}", label=f"dp={dp} (measured)")
            ax.plot([p[0] for p in pred], [p[2] for p in pred], "--x", ms=4, color=f"C{i}", alpha=0.7,
                    label=f"dp={dp} (roofline)")
            shared = sorted((r["devices"], B / r["step_pred_shared_ms"] * 1e3) for r in rows
                            if r["dp"] == dp and r["B"] == B and r["S"] == S and r.get("step_pred_shared_ms"))
            if shared:
                ax.plot([p[0] for p in shared], [p[1] for p in shared], ":", color=f"C{i}", alpha=0.7,
                        label=f"dp={dp} (roofline, one shared CPU)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("devices (tp x dp)")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"{s.name}: B={B}, S={S}" + ("\n(CPU: shared cores, overhead not scaling)" if cpu else ""),
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    """`--measure SPEC.json OUT.json`: the subprocess half of `run` (measure here, write the result as JSON)."""
    ap = argparse.ArgumentParser(prog="python -m infer.bench.parallel_bench", description=main.__doc__)
    ap.add_argument("--measure", nargs=2, metavar=("SPEC_JSON", "OUT_JSON"), required=True)
    a = ap.parse_args(argv)
    with open(a.measure[0]) as f:
        s = parse_spec(ParallelBenchSpec, json.load(f))
    report.write_json(measure(s), a.measure[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
