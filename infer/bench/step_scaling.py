"""Experiment `kind: step_scaling`: a decode step's time against the pool size and against the real context.

The paged step's work should follow the sequences' pages, never the pool: a pool of P pages only
holds them. Two sweeps of R decode rows (one new token each) through the engine path
(`infer.kv.build_metadata` on the host, then the jitted `infer.model.step.step`, pools donated),
with the model's attention implementation (default `auto`):

- sweep "pool": every row has `fixed_context` cached tokens; the pool grows to m * P_min pages for m
  in `pool_multipliers` (P_min = the pages the rows need). The step should stay flat.
- sweep "context": the pool is fixed (the largest of the pool sweep, or the pages the longest
  context needs if more); the real context runs over `context_lens`. The step should grow.

Each row's pages are drawn at random from the whole pool (a pool after churn); pages_per_seq M is
the power-of-two bucket of the pages a row needs, as `build_metadata` picks it.

Spec fields (configs/experiments/step_scaling.yaml)::

    model: small                    # configs/models name (random weights)
    model_overrides: {}             # ModelConfig fields to replace
    dtype: float32                  # optional override of the config's dtype
    attention_impl: auto            # auto (Pallas on GPU/TPU, the reference on CPU) | reference | pallas
    rows: 8                         # R decode rows per step
    page_size: 16                   # Z
    fixed_context: 256              # S of every row in the pool sweep
    pool_multipliers: [1, 4, 16, 64]
    context_lens: [64, 256, 1024, 2000]
    warmup: 2                       # steps discarded per point (the first compiles)
    repeats: 20                     # blocked steps timed per point; median
    hardware: auto                  # roofline profile (CPU: the probes)
    probe_bytes: 268435456
    probe_matmul: 512

Columns: sweep; P pages and pool_MB (k + v pools, all layers); R; S (cached tokens per row before
the step); M (pages_per_seq bucket); step_ms = median wall time of one blocked `step` call
(host metadata checks and transfer included); vs_first = step_ms / step_ms of the sweep's first
point; pred_ms = `infer.perf.roofline.decode_cost` (weights + the KV of S tokens per row + the
new KV) on the profile, independent of P by construction; GFLOP and bytes_MB = XLA's
cost_analysis of the compiled step ("flops", "bytes accessed"; the latter counts a scatter's
whole operand, i.e. the pools, even when the write happens in place).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from infer.bench.decode_bench import profiles
from infer.bench.device_probe import device_info
from infer.bench.experiment import parse_spec, positive_ints, require
from infer.bench.timing import block, time_fn
from infer.config.model_config import load_config
from infer.kv.metadata import SequenceStep, bucket, build_metadata
from infer.kv.pool import init_pools
from infer.model.params import init_params
from infer.model.step import run_step, step
from infer.perf import roofline as rl
from layers.attention import registry

MARKDOWN_COLUMNS = ("sweep", "attn", "P", "pool_MB", "R", "S", "M", "step_ms", "vs_first", "pred_ms", "GFLOP",
                    "bytes_MB", "status")


@dataclasses.dataclass(frozen=True)
class StepScalingSpec:
    model: str
    model_overrides: Optional[dict] = None
    dtype: Optional[str] = None
    attention_impl: str = "auto"
    rows: int = 8
    page_size: int = 16
    fixed_context: int = 256
    pool_multipliers: Tuple[int, ...] = (1, 4, 16, 64)
    context_lens: Tuple[int, ...] = (64, 256, 1024, 2000)
    warmup: int = 2
    repeats: int = 20
    hardware: str = "auto"
    probe_bytes: int = 256 << 20
    probe_matmul: int = 512
    seed: int = 0
    name: str = "step_scaling"

    def __post_init__(self):
        n = self.name
        positive_ints(self.pool_multipliers, f"{n}.pool_multipliers")
        positive_ints(self.context_lens, f"{n}.context_lens")
        for f in ("rows", "page_size", "fixed_context", "repeats", "probe_bytes", "probe_matmul"):
            require(getattr(self, f) >= 1, f"{n}.{f}", f"must be >= 1, got {getattr(self, f)}")
        require(self.warmup >= 1, f"{n}.warmup", "must be >= 1 (the first step compiles)")

    def model_config(self):
        overrides = {"attention_impl": self.attention_impl, **(self.model_overrides or {})}
        if self.dtype is not None:
            overrides["dtype"] = self.dtype
        return load_config(self.model, **overrides)


def compiled_cost(compiled) -> dict:
    """XLA's cost_analysis of a compiled program as one dict (JAX versions return a dict or a list of dicts)."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        merged = {}
        for d in ca:
            for k, v in (d or {}).items():
                merged[k] = merged.get(k, 0.0) + v
        return merged
    return dict(ca or {})


def decode_batch(rows: int, context: int, page_size: int, num_pages: int, rng):
    """(tokens_T, AttentionMetadata) numpy: `rows` decode tokens, each after `context` cached ones, on random pages."""
    need = -(-(context + 1) // page_size)
    pages = rng.choice(num_pages, size=(rows, need), replace=False)
    seqs = [SequenceStep(tokens=[int(t)], pages=pages[r].tolist(), cached=context)
            for r, t in enumerate(rng.integers(0, 2, size=rows))]
    return build_metadata(seqs, page_size=page_size, num_pages=num_pages)


def _measure(params, cfg, s: StepScalingSpec, hw, P: int, S: int, rng) -> dict:
    Z, R = s.page_size, s.rows
    kv = block(init_pools(cfg, P, Z))
    tokens_T, meta = decode_batch(R, S, Z, P, rng)
    lowered = jax.jit(run_step, static_argnames="cfg", donate_argnames="kv").lower(
        params, cfg, jnp.asarray(tokens_T), jax.tree_util.tree_map(jnp.asarray, meta), kv)
    cost = compiled_cost(lowered.compile())
    state = {"kv": kv}

    def one_step():
        logits_OV, state["kv"] = step(params, cfg, tokens_T, meta, state["kv"])
        return logits_OV, state["kv"]

    t = time_fn(one_step, warmup=s.warmup, repeats=s.repeats)
    pool_bytes = sum(x.size * x.dtype.itemsize for x in state["kv"].values())
    return {"P": P, "pool_MB": pool_bytes / 1e6, "R": R, "S": S, "M": meta.page_table_RM.shape[1],
            "step_ms": t.median_s * 1e3, "step_min_ms": t.min_s * 1e3,
            "pred_ms": rl.decode_cost(cfg, R, S).time(hw) * 1e3,
            "GFLOP": cost.get("flops", float("nan")) / 1e9, "bytes_MB": cost.get("bytes accessed", float("nan")) / 1e6,
            "status": "ok"}


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(StepScalingSpec, spec)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    cfg = s.model_config()
    require(max(s.context_lens + (s.fixed_context,)) < cfg.max_seq_len, f"{s.name}.context_lens",
            f"every context + 1 must fit max_seq_len={cfg.max_seq_len}")
    info = device_info()
    hw, _, _ = profiles(s.hardware, s.probe_bytes, s.probe_matmul, cfg.dtype, info)
    attn = f"{cfg.attention_impl} -> {registry.resolve(cfg.attention_impl)}"
    params = block(init_params(cfg, jax.random.PRNGKey(s.seed)))
    rng = np.random.default_rng(s.seed)
    pages_for = lambda S: s.rows * -(-(S + 1) // s.page_size)
    p_min = pages_for(s.fixed_context)
    points = [("pool", m * p_min, s.fixed_context) for m in sorted(s.pool_multipliers)]
    p_fixed = max(max(s.pool_multipliers) * p_min, pages_for(max(s.context_lens)))
    points += [("context", p_fixed, S) for S in sorted(s.context_lens)]
    print(f"  {attn}; R={s.rows}, Z={s.page_size}, M bucket = {bucket(-(-(s.fixed_context + 1) // s.page_size))} "
          f"pages in the pool sweep; profile {hw.name}", flush=True)
    rows, first = [], {}
    for sweep, P, S in points:
        t0 = time.perf_counter()
        row = {"sweep": sweep, "attn": attn, "model": cfg.name, "dtype": cfg.dtype, "hardware": hw.name,
               **_measure(params, cfg, s, hw, P, S, rng)}
        first.setdefault(sweep, row["step_ms"])
        row["vs_first"] = row["step_ms"] / first[sweep]
        rows.append(row)
        print(f"  {sweep:<7} P={P:<7} ({row['pool_MB']:8.1f} MB) S={S:<5} M={row['M']:<4} step {row['step_ms']:.3f} ms "
              f"(x{row['vs_first']:.2f}; pred {row['pred_ms']:.3f}) {row['GFLOP']:.3f} GFLOP  "
              f"[{time.perf_counter() - t0:.1f}s]", flush=True)
    return rows
