"""Experiment `kind: serving_bench`: continuous batching (the engine) vs static batching vs one request at a time.

For each request rate, the same Poisson workload (infer/bench/workload.py) is served three ways, one
after the other in one process, by the same model with the same KV memory (`num_pages * page_size`
token slots):

- engine: `infer.Engine` (continuous batching over the page pools, chunked prefill, prefix cache).
  A wall-clock driver adds each request once its arrival time has passed, steps the engine, and
  sleeps only when the engine is idle, until the next arrival;
- static: `infer.generate` on batches formed in arrival order: when the device is free it takes the
  requests that have arrived (waiting for the next one if none has), as many as fit the memory:
  the largest n whose `generate` reservation bucket(n) * S (S: the reserved length per row for the
  batch's longest prompt and largest max_new_tokens, `bucket_shapes`) fits the slots. The batch is
  padded to its longest and runs until its longest output is done;
- one_at_a_time: `infer.generate` on one request at a time, in arrival order (the same memory rule
  with n = 1).

Nothing compiles while a clock runs: every engine is `warmup()`-ed first (every step shape), and
the first `generate` call of each (B, T, max_out, S) shape runs once untimed with the clock paused
(the paused seconds are reported as compile_s). Sampling is greedy with no stop ids, so every request
produces exactly its max_new_tokens and every system produces the same tokens (checked: same_output).

Spec fields (configs/experiments/serving_bench.yaml)::

    model: small               # configs/models name or YAML path (random weights), else a model dir or
                               # name for infer.load_model_dir (a checkpoint, HF dir, GGUF, smollm2-135m-instruct)
    model_overrides: {}        # ModelConfig fields to replace (configs only)
    dtype: null                # optional dtype override
    rates: [2.0, 8.0, 32.0]    # requests per second (.inf: everything arrives at t = 0)
    workload:                  # infer.bench.workload.WorkloadSpec (its rate comes from `rates`)
      num_requests: 64
      input_len: {dist: lognormal, mean: 64, sigma: 0.8, min: 8, max: 256}
      output_len: {dist: lognormal, mean: 96, sigma: 1.0, min: 4, max: 512}
      shared_prefix: 32
      shared_fraction: 0.5
      seed: 0
    systems: [engine, static, one_at_a_time]
    num_pages: 512             # KV memory of every system: num_pages * page_size token slots
    page_size: 16
    max_num_seqs: 32           # engine: sequences per step (R)
    max_num_batched_tokens: 128  # engine: tokens per step (T)
    max_model_len: null        # engine: default the workload's longest request (prefix + input + output)
    enable_prefix_caching: true
    max_batch: null            # static: an extra cap on the batch size (default: memory only)
    seed: 0                    # random weights
    plot: true
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Dict, List, Optional, Tuple

import jax
import numpy as np

from infer.bench import report
from infer.bench.experiment import parse_spec, require
from infer.bench.workload import WorkloadRequest, generate_workload, parse_workload, shared_prefix_ids, workload_stats
from infer.config import SamplingParams
from infer.config.model_config import MODEL_CONFIG_DIR, load_config
from infer.engine import Engine
from infer.engine.metrics import summarize
from infer.engine.request import RequestMetrics
from infer.generation.batch import bucket_shapes, generate
from infer.model.params import count_params, init_params

SYSTEMS = ("engine", "static", "one_at_a_time")

MARKDOWN_COLUMNS = ("rate", "system", "requests", "out_tokens", "duration_s", "tok_s", "vs_static", "ttft_p50_ms",
                    "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "e2e_p99_s", "kv_waste", "prefix_hit", "preempt",
                    "batch_mean", "same_output")

ENGINE_COLUMNS = ("rate", "steps", "decode_steps", "prefill_steps", "decode_step_ms", "prefill_step_ms",
                  "prefill_step_time_frac", "tokens_per_step", "batch_mean", "prefix_hit_tokens", "evictions",
                  "warmup_s")

DEFINITIONS = """\
Definitions (all times wall-clock, time.perf_counter, on the host; a request's arrival is its scheduled
Poisson arrival time, not the moment a driver noticed it):
- rate: requests per second of the Poisson arrivals (inf: all at t = 0). Each rate serves the same
  requests (same prompts and lengths); only the arrival times scale.
- requests / out_tokens: finished requests and their output tokens (greedy, no stop ids: every request
  produces exactly its max_new_tokens, so every system produces the same count; `complete` checks it).
- duration_s: first arrival to last finish. tok_s (throughput): out_tokens / duration_s.
- vs_static: tok_s / the static system's tok_s at the same rate (the engine row is the engine/static ratio).
- TTFT: arrival to the first output token on the host. engine: the step that sampled it returned;
  static and one_at_a_time: the batch's start + generate's ttft_s (prefill and first token, blocked).
- TPOT: a request's mean time per output token after the first. engine: (last token - first token) /
  (tokens - 1) from the engine's stamps; static and one_at_a_time: the batch's decode_s / decode_steps
  (the device time of one decode step of the batch; a static batch's tokens reach the host only when the
  whole batch ends, which e2e shows).
- e2e: arrival to the request's last token on the host (static: the end of its batch).
- p50 / p99: percentiles over the requests (numpy linear interpolation; with few requests p99 is near the max).
- kv_waste: 1 - (token slots holding a cached token) / (token slots reserved), summed over every step
  (engine: stats()["kv_waste_mean"], slots = the pages allocated to running sequences, a shared prefix
  page counted once; static and one_at_a_time: generate reserves bucket(n) rows * S slots for the whole
  batch, padding rows included, and row i holds prompt_i + min(k, output_i - 1) tokens after decode step
  k = 0 .. decode_steps). kv_waste_end (JSON): the same at the end of each batch, averaged over batches.
- prefix_hit: engine only: prompt tokens served from the prefix cache / prompt tokens admitted
  (stats()["prefix_hit_rate"]); 0 for the others, which recompute every prompt.
- preempt: engine sequences preempted (pages freed, recomputed later) for lack of pages; 0 for the others.
- batch_mean: static and one_at_a_time: mean requests per generate call (batch_max, and each batch's
  n, B, T, max_out, S in serving.json); engine: mean sequences holding pages per step (running after
  the step or finished by it); tokens_per_step (JSON) = (prefill + decode tokens) / steps.
- same_output: the fraction of requests whose token ids equal the one_at_a_time run's at that rate
  (float32 greedy should give 1.0; in bf16 a near-tie can legitimately flip and diverge from there).
- kv_slots: num_pages * page_size, the KV token slots every system gets; compile_s / warmup_s: time
  spent compiling before or outside the timed clocks (not in any other number).
"""


@dataclasses.dataclass(frozen=True)
class ServingBenchSpec:
    model: str
    workload: dict
    rates: Tuple[float, ...] = (2.0, 8.0, 32.0)
    model_overrides: Optional[dict] = None
    dtype: Optional[str] = None
    systems: Tuple[str, ...] = SYSTEMS
    num_pages: int = 512
    page_size: int = 16
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 128
    max_model_len: Optional[int] = None
    enable_prefix_caching: bool = True
    max_batch: Optional[int] = None
    seed: int = 0
    plot: bool = True
    name: str = "serving_bench"

    def __post_init__(self):
        w = self.name
        object.__setattr__(self, "workload", parse_workload(self.workload, f"{w}.workload"))
        require(len(self.rates) > 0, f"{w}.rates", "must not be empty")
        for r in self.rates:
            require(r > 0, f"{w}.rates", f"must be > 0 requests/s (.inf: all at once), got {r!r}")
        require(len(self.systems) > 0, f"{w}.systems", "must not be empty")
        for x in self.systems:
            require(x in SYSTEMS, f"{w}.systems", f"must be among {SYSTEMS}, got {x!r}")
        require(len(set(self.systems)) == len(self.systems), f"{w}.systems", f"repeats a system: {self.systems}")
        for f in ("num_pages", "page_size", "max_num_seqs", "max_num_batched_tokens"):
            require(getattr(self, f) >= 1, f"{w}.{f}", f"must be >= 1, got {getattr(self, f)}")
        require(self.max_num_batched_tokens >= self.max_num_seqs, f"{w}.max_num_batched_tokens",
                f"must be >= max_num_seqs ({self.max_num_seqs}), got {self.max_num_batched_tokens}")
        for f in ("max_model_len", "max_batch"):
            v = getattr(self, f)
            require(v is None or v >= 1, f"{w}.{f}", f"must be >= 1 (or null), got {v}")
        if self.max_model_len is not None:
            require(self.max_model_len >= self.workload.max_total_len, f"{w}.max_model_len",
                    f"must hold the workload's longest request ({self.workload.max_total_len} tokens), "
                    f"got {self.max_model_len}")

    @property
    def kv_slots(self) -> int:
        return self.num_pages * self.page_size


# ---- model ------------------------------------------------------------------------------------------------------
def is_config(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or os.path.exists(os.path.join(MODEL_CONFIG_DIR, f"{name}.yaml"))


def load_model(s: ServingBenchSpec):
    """(cfg, params, label): a configs/models config with random weights, or anything infer.load_model_dir loads."""
    if is_config(s.model):
        over = dict(s.model_overrides or {})
        if s.dtype:
            over["dtype"] = s.dtype
        cfg = load_config(s.model, **over)
        params = init_params(cfg, jax.random.PRNGKey(s.seed))
        kind = "random weights"
    else:
        require(not s.model_overrides, f"{s.name}.model_overrides", "only applies to a configs/models config")
        from infer.io.checkpoint import load_model_dir
        cfg, params = load_model_dir(s.model, dtype=s.dtype)
        kind = "checkpoint"
    return cfg, params, f"{cfg.name or s.model} ({count_params(params) / 1e6:.1f}M, {cfg.dtype}, {kind})"


def _median(x) -> Optional[float]:
    return float(np.median(x)) if len(x) else None


def _greedy(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=int(max_new_tokens))


# ---- the engine ---------------------------------------------------------------------------------------------------
def make_engine(params, cfg, s: ServingBenchSpec) -> Engine:
    return Engine(params, cfg, num_pages=s.num_pages, page_size=s.page_size, max_num_seqs=s.max_num_seqs,
                  max_num_batched_tokens=s.max_num_batched_tokens,
                  max_model_len=s.max_model_len or s.workload.max_total_len,
                  enable_prefix_caching=s.enable_prefix_caching)


def run_engine(params, cfg, s: ServingBenchSpec, requests: List[WorkloadRequest]):
    """Serve the requests as they arrive; -> (metrics per request, token ids per request, info)."""
    engine = make_engine(params, cfg, s)
    t = time.perf_counter()
    engine.warmup()
    warmup_s = time.perf_counter() - t
    n = len(requests)
    outs: Dict[int, object] = {}
    running_sum = 0
    step_ms = {False: [], True: []}  # wall time of each step: decode only / with prompt (prefill) tokens
    nxt = 0
    t0 = time.perf_counter()
    while len(outs) < n:
        now = time.perf_counter() - t0
        while nxt < n and requests[nxt].arrival_s <= now:
            r = requests[nxt]
            engine.add_request(r.prompt_ids, _greedy(r.max_new_tokens), request_id=str(nxt),
                               arrival_time=t0 + r.arrival_s)  # a request arriving mid-step waited for it too
            nxt += 1
        if engine.has_unfinished_requests():
            prefill_before = engine.counters["prefill_tokens"]
            ts = time.perf_counter()
            updates = engine.step()
            step_ms[engine.counters["prefill_tokens"] > prefill_before].append(1e3 * (time.perf_counter() - ts))
            # sequences that held pages during the step: still running after it, or finished by it (read-only)
            running_sum += len(engine.scheduler.running) + sum(u.finished for u in updates)
            for u in updates:
                if u.output is not None:
                    outs[int(u.request_id)] = u.output
        elif nxt < n:
            time.sleep(max(0.0, t0 + requests[nxt].arrival_s - time.perf_counter()))
    metrics = [outs[i].metrics for i in range(n)]
    st = engine.stats()
    info = {"warmup_s": warmup_s, "kv_waste": st["kv_waste_mean"], "prefix_hit": st["prefix_hit_rate"],
            "preempt": st["preemptions"], "steps": st["steps"], "prefill_tokens": st["prefill_tokens"],
            "decode_tokens": st["decode_tokens"], "prefix_hit_tokens": st["prefix_hit_tokens"],
            "evictions": st["evictions"], "batch_mean": running_sum / max(1, st["steps"]),
            "tokens_per_step": (st["prefill_tokens"] + st["decode_tokens"]) / max(1, st["steps"]),
            "decode_steps": len(step_ms[False]), "prefill_steps": len(step_ms[True]),
            "decode_step_ms": _median(step_ms[False]), "prefill_step_ms": _median(step_ms[True]),
            "prefill_step_time_frac": sum(step_ms[True]) / max(1e-9, sum(step_ms[False]) + sum(step_ms[True]))}
    return metrics, [list(outs[i].token_ids) for i in range(n)], info


# ---- static batching and one at a time ----------------------------------------------------------------------------
class _Clock:
    """Seconds since start, minus the time spent inside `paused()` (compilation never counts)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.paused_s = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0 - self.paused_s

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t


def batch_shape(cfg, batch: List[WorkloadRequest]):
    """(B, T, max_out, S) that `generate` uses for these requests."""
    return bucket_shapes(len(batch), max(len(r.prompt_ids) for r in batch), max(r.max_new_tokens for r in batch),
                         cfg.max_seq_len)


def fit_batch(cfg, waiting: List[WorkloadRequest], slots: int, max_batch: Optional[int] = None) -> int:
    """The largest n such that the first n waiting requests' reservation bucket(n) * S fits `slots` (0: none fits)."""
    top = len(waiting) if max_batch is None else min(len(waiting), max_batch)
    for n in range(top, 0, -1):
        B, _, _, S = batch_shape(cfg, waiting[:n])
        if B * S <= slots:
            return n
    return 0


def kv_waste_of_batch(batch: List[WorkloadRequest], B: int, S: int, steps: int) -> Tuple[int, int, int]:
    """(held slot-steps, reserved slot-steps, held at the end): row i holds prompt_i + min(k, out_i - 1)
    tokens after decode step k = 0 .. steps; the reservation is B * S slots throughout."""
    held = 0
    for r in batch:
        p, o = len(r.prompt_ids), r.max_new_tokens
        full = min(steps, o - 1)  # steps after which the row stops growing
        held += (steps + 1) * p + full * (full + 1) // 2 + (steps - full) * full
    end = sum(len(r.prompt_ids) + r.max_new_tokens - 1 for r in batch)
    return held, (steps + 1) * B * S, end


def run_batched(params, cfg, s: ServingBenchSpec, requests: List[WorkloadRequest], max_batch: Optional[int],
                compiled: set):
    """Static batching in arrival order (max_batch = 1: one at a time); -> (metrics, token ids, info).

    `compiled` holds the shapes already compiled (shared across rates): a new shape runs once untimed
    with the clock paused before its timed call."""
    slots = s.kv_slots
    for i, r in enumerate(requests):
        if fit_batch(cfg, [r], slots) == 0:
            _, _, _, S = batch_shape(cfg, [r])
            raise ValueError(f"{s.name}.num_pages: request {i} alone needs generate's reservation of {S} slots, "
                             f"more than the {slots} of num_pages * page_size; raise num_pages")
    n = len(requests)
    metrics: List[Optional[RequestMetrics]] = [None] * n
    tokens: List[Optional[List[int]]] = [None] * n
    batches = []
    held = reserved = 0
    clock = _Clock()
    nxt = 0
    while nxt < n:
        now = clock.now()
        if requests[nxt].arrival_s > now:
            time.sleep(requests[nxt].arrival_s - now)
            continue
        arrived = [r for r in requests[nxt:] if r.arrival_s <= now]
        k = fit_batch(cfg, arrived, slots, max_batch)
        batch = arrived[:k]
        prompts = [r.prompt_ids for r in batch]
        sps = [_greedy(r.max_new_tokens) for r in batch]
        shape = batch_shape(cfg, batch)
        if shape not in compiled:
            with clock.paused():
                generate(params, cfg, prompts, sps, page_size=s.page_size)
            compiled.add(shape)
        start = clock.now()
        res = generate(params, cfg, prompts, sps, page_size=s.page_size)
        end = clock.now()
        B, T, max_out, S = shape
        h, rsv, h_end = kv_waste_of_batch(batch, B, S, res.decode_steps)
        held, reserved = held + h, reserved + rsv
        batches.append({"n": k, "B": B, "T": T, "max_out": max_out, "S": S, "start_s": start, "end_s": end,
                        "ttft_s": res.ttft_s, "decode_s": res.decode_s, "decode_steps": res.decode_steps,
                        "kv_waste_end": 1 - h_end / (B * S)})
        dt = res.decode_s / res.decode_steps if res.decode_steps else 0.0
        first = start + res.ttft_s
        for j, r in enumerate(batch):
            out = res.tokens[j]
            times = [first + q * dt for q in range(len(out))]
            metrics[nxt + j] = RequestMetrics(arrival=r.arrival_s, first_scheduled=start, first_token=first,
                                              last_token=times[-1], finished=end, num_prompt_tokens=len(r.prompt_ids),
                                              num_output_tokens=len(out), token_times=times)
            tokens[nxt + j] = out
        nxt += k
    info = {"compile_s": clock.paused_s, "kv_waste": 1 - held / reserved if reserved else 0.0,
            "kv_waste_end": float(np.mean([b["kv_waste_end"] for b in batches])), "prefix_hit": 0.0, "preempt": 0,
            "batch_mean": float(np.mean([b["n"] for b in batches])), "batch_max": max(b["n"] for b in batches),
            "num_batches": len(batches), "batches": batches}
    return metrics, tokens, info


# ---- the experiment -----------------------------------------------------------------------------------------------
def _row(rate, system, summary, info, expected_tokens):
    ms = lambda d, q: 1e3 * d[q]
    row = {"rate": rate, "system": system, "requests": summary["requests"], "out_tokens": summary["output_tokens"],
           "complete": summary["output_tokens"] == expected_tokens, "duration_s": summary["duration_s"],
           "tok_s": summary["throughput_tok_s"],
           "ttft_p50_ms": ms(summary["ttft_s"], "p50"), "ttft_p90_ms": ms(summary["ttft_s"], "p90"),
           "ttft_p99_ms": ms(summary["ttft_s"], "p99"), "ttft_mean_ms": ms(summary["ttft_s"], "mean"),
           "tpot_p50_ms": ms(summary["tpot_s"], "p50"), "tpot_p90_ms": ms(summary["tpot_s"], "p90"),
           "tpot_p99_ms": ms(summary["tpot_s"], "p99"), "itl_p99_ms": ms(summary["itl_s"], "p99"),
           "queue_p50_ms": ms(summary["queue_s"], "p50"), "queue_p99_ms": ms(summary["queue_s"], "p99"),
           "e2e_p50_s": summary["e2e_s"]["p50"], "e2e_p99_s": summary["e2e_s"]["p99"],
           "kv_waste": info["kv_waste"], "kv_waste_end": info.get("kv_waste_end"), "prefix_hit": info["prefix_hit"],
           "preempt": info["preempt"], "batch_mean": info["batch_mean"]}
    for k in ("batch_max", "num_batches", "compile_s", "warmup_s", "steps", "tokens_per_step", "prefill_tokens",
              "decode_tokens", "prefix_hit_tokens", "evictions", "decode_steps", "prefill_steps", "decode_step_ms",
              "prefill_step_ms", "prefill_step_time_frac"):
        if k in info:
            row[k] = info[k]
    return row


def plot_rates(rows: List[dict], path: str, title: str = "") -> None:
    """Two panels against the request rate, one line per system: throughput, p99 TTFT."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = sorted({r["rate"] for r in rows if math.isfinite(r["rate"])})
    inf_x = 2 * finite[-1] if finite else 1.0
    xpos = lambda rate: rate if math.isfinite(rate) else inf_x
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, system in enumerate(SYSTEMS):
        rs = sorted((r for r in rows if r["system"] == system), key=lambda r: xpos(r["rate"]))
        if not rs:
            continue
        xs = [xpos(r["rate"]) for r in rs]
        ax_t.plot(xs, [r["tok_s"] for r in rs], "-o", color=f"C{i}", label=system)
        ax_l.plot(xs, [r["ttft_p99_ms"] / 1e3 for r in rs], "-o", color=f"C{i}", label=system)
    has_inf = any(not math.isfinite(r["rate"]) for r in rows)
    ticks, labels = finite + ([inf_x] if has_inf else []), [f"{x:g}" for x in finite] + (["inf"] if has_inf else [])
    for ax, ylabel in ((ax_t, "throughput (output tokens/s)"), (ax_l, "p99 TTFT (s)")):
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels)
        ax.minorticks_off()
        ax.set_xlabel("request rate (requests/s)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_l.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(ServingBenchSpec, spec)
    cfg, params, label = load_model(s)
    require(s.workload.max_total_len <= cfg.max_seq_len, f"{s.name}.workload",
            f"its longest request ({s.workload.max_total_len} tokens) exceeds the model's max_seq_len "
            f"({cfg.max_seq_len})")
    base = {"model": label, "kv_slots": s.kv_slots, "page_size": s.page_size, "backend": jax.default_backend()}
    compiled: set = set()
    rows, per_request, workloads = [], {}, {}
    for rate in s.rates:
        wl = dataclasses.replace(s.workload, rate=float(rate))
        requests = generate_workload(wl, cfg.vocab_size)
        workloads[str(rate)] = workload_stats(requests, shared_prefix_ids(wl, cfg.vocab_size))
        expected = sum(r.max_new_tokens for r in requests)
        results = {}
        for system in s.systems:
            if system == "engine":
                results[system] = run_engine(params, cfg, s, requests)
            else:
                mb = 1 if system == "one_at_a_time" else s.max_batch
                results[system] = run_batched(params, cfg, s, requests, mb, compiled)
        ref = results.get("one_at_a_time")
        rate_rows = []
        for system, (metrics, tokens, info) in results.items():
            row = {**base, **_row(float(rate), system, summarize(metrics), info, expected)}
            row["same_output"] = (None if ref is None else
                                  float(np.mean([a == b for a, b in zip(tokens, ref[1])])))
            rate_rows.append(row)
            per_request[f"{rate}/{system}"] = [
                {"arrival_s": r.arrival_s, "prompt_len": len(r.prompt_ids), "max_new_tokens": r.max_new_tokens,
                 **m.as_dict()} for r, m in zip(requests, metrics)]
            if "batches" in info:
                per_request[f"{rate}/{system}/batches"] = info["batches"]
        static = next((r for r in rate_rows if r["system"] == "static"), None)
        for row in rate_rows:
            row["vs_static"] = row["tok_s"] / static["tok_s"] if static else None
        rows += rate_rows
        print(f"  rate {rate:g}/s: " + ", ".join(f"{r['system']} {r['tok_s']:.0f} tok/s" for r in rate_rows),
              flush=True)

    os.makedirs(out_dir, exist_ok=True)
    table = report.markdown_table(rows, MARKDOWN_COLUMNS)
    report.write_json({"spec": dataclasses.asdict(s), "model": label, "kv_slots": s.kv_slots,
                       "workload": workloads, "definitions": DEFINITIONS, "rows": rows, "per_request": per_request},
                      os.path.join(out_dir, "serving.json"))
    with open(os.path.join(out_dir, "serving.md"), "w") as f:
        f.write(f"# {s.name}: continuous batching vs static batching vs one at a time\n\n"
                f"Model: {label}; KV memory: {s.kv_slots} token slots ({s.num_pages} pages of {s.page_size}) "
                f"for every system; backend: {jax.default_backend()}.\n\n{table}\n"
                f"Engine steps (decode_step_ms / prefill_step_ms: median wall time of a step without / with prompt "
                f"tokens; prefill_step_time_frac: the share of the engine's step time spent in the latter):\n\n"
                f"{report.markdown_table([r for r in rows if r['system'] == 'engine'], ENGINE_COLUMNS)}\n"
                f"{DEFINITIONS}")
    if s.plot:
        plot_rates(rows, os.path.join(out_dir, "serving.png"), f"{s.name}: {label}, {s.kv_slots} KV slots")
    return rows
