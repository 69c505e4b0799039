"""Experiment `kind: kv_variants_bench`: KV-cache variants (MHA, GQA, MLA, ...) side by side at matched parameters.

Each variant is a named dict of ModelConfig overrides applied to one base config. So that the
comparison is about the cache and not about model size, every variant's d_ff is re-chosen (the
multiple of `d_ff_multiple` whose parameter count is closest to the reference variant's; the
reference keeps the base d_ff). For each variant, in one run:

- params: the parameter count of `init_params` (checked against `roofline.num_params`) and its
  ratio to the reference;
- KV bytes per token: `roofline.kv_bytes_per_token` beside the bytes the real page pools take per
  slot (sum of the pool arrays' nbytes / (pages x page size)); the two must be equal;
- the largest batch whose weights + KV cache of `memory_context` tokens fit `memory_budget_gb`
  (`roofline.max_batch_size`), for `memory_model` (a configs/models name, full-size shapes) with the
  variant's overrides (+ `memory_overrides[variant]` where the benchmark's small dims do not
  transfer, e.g. MLA ranks), d_ff matched the same way; without `memory_model` the benchmark
  config itself;
- decode step time at every (batch, context): one `infer.model.rows.decode_step` (the ragged paged
  step; an MLA model runs its absorbed path over the latent pages), blocked, median over `repeats`
  after `warmup`, beside the roofline's `decode_cost(cfg, B, S).time(hw)` on the profile (the
  datasheet on GPU/TPU, the probed read bandwidth and matmul FLOP/s on CPU), and the ratio of
  both to the reference variant's at the same (B, S).

The cache of each (variant, B, S) is built once: B rows of M = ceil((S + 1) / Z) pages with
random pool values and `lengths` = S, so the step attends over S cached positions and writes the
S+1th; `lengths` is reset to S before every timed step, so every sample is the same step. (The
CPU reference attention reads all M pages of a row, i.e. up to Z - 1 positions more than S.)

Spec fields (configs/experiments/kv_variants_bench.yaml)::

    model: llama3-8b                 # configs/models name of the base (random weights)
    model_overrides: {}              # ModelConfig fields of the base
    dtype: bfloat16                  # optional override of the base's dtype
    attention_impl: auto
    variants:                        # name -> ModelConfig overrides of the base (order = table order)
      mha: {n_kv_heads: 32}
      gqa: {}
      mla: {kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, head_dim: 192,
            n_kv_heads: 32}
    reference: mha                   # params are matched to it, ratios are against it (default: mha, else first)
    match_params: true               # re-choose each variant's d_ff (false: keep the overrides' d_ff)
    d_ff_multiple: 64
    batch_sizes: [1, 16]
    context_lens: [1024, 4096]
    warmup: 2
    repeats: 5
    memory_budget_gb: 80             # the largest-batch column: weights + KV within this budget ...
    memory_context: 8192             # ... at this many tokens per sequence
    memory_model: null               # configs/models name for that column (null: the benchmark config)
    memory_overrides: {}             # variant -> overrides applied after its own on memory_model
    memory_fraction: 0.85            # skip (B, S) whose weights + KV exceed this share of the device
    hardware: auto                   # datasheet by device kind; CPU: the probes
    probe_bytes: 268435456
    probe_matmul: 4096
    plot: true                       # kv_variants.png: step time against context per variant
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from infer.bench import report
from infer.bench.decode_bench import profiles
from infer.bench.device_probe import device_info
from infer.bench.experiment import SpecError, parse_spec, positive_ints, require
from infer.bench.random_cache import random_row_cache
from infer.bench.timing import Timing, block
from infer.config.model_config import ModelConfig, load_config
from infer.kv.pool import DEFAULT_PAGE_SIZE, init_pools, num_pages, page_size
from infer.model.params import init_params
from infer.model.rows import decode_step
from infer.perf import roofline as rl
from infer.perf.hardware import HardwareProfile
from layers.attention import registry

MARKDOWN_COLUMNS = (
    "variant", "cache", "d_ff", "params_M", "params_vs_ref", "kv_B_tok", "kv_B_tok_pools", "kv_vs_ref", "fit_B",
    "B", "S", "step_ms", "step_pred_ms", "step_vs_ref", "pred_vs_ref", "bound", "status",
)
SUMMARY_COLUMNS = ("variant", "overrides", "cache", "d_ff", "params", "params_vs_ref", "kv_B_tok", "kv_B_tok_pools",
                   "kv_vs_ref", "mem_d_ff", "mem_params", "mem_kv_B_tok", "fit_B", "fit_vs_ref")

DEFINITIONS = """\
Definitions: cache = what one token caches per layer (K x H for k and v; MLA: C latent + E RoPE values).
d_ff = the variant's MLP width, re-chosen so params (the count of init_params' arrays) is closest to the
reference's; params_vs_ref = params / the reference's. kv_B_tok = `roofline.kv_bytes_per_token` (all
layers); kv_B_tok_pools = the real page pools' nbytes / their slots (pages x page size); kv_vs_ref =
kv_B_tok / the reference's. fit_B = the largest batch whose weights + KV cache of the memory context fit
the memory budget (`roofline.max_batch_size`) for the memory model with this variant's attention
(mem_* columns: its d_ff, params, KV bytes per token). step_ms = median wall time of one blocked
decode step of B rows at S cached tokens (warm; host checks included); step_pred_ms = the roofline's
`decode_cost(cfg, B, S)` time on the profile (CPU: probed read bandwidth and matmul FLOP/s);
step_vs_ref / pred_vs_ref = the same divided by the reference variant's at the same (B, S);
bound = which of the predicted memory and compute times is larger.
"""


@dataclasses.dataclass(frozen=True)
class KVVariantsBenchSpec:
    model: str
    variants: dict
    batch_sizes: Tuple[int, ...]
    context_lens: Tuple[int, ...]
    model_overrides: Optional[dict] = None
    dtype: Optional[str] = None
    attention_impl: str = "auto"
    reference: Optional[str] = None
    match_params: bool = True
    d_ff_multiple: int = 64
    warmup: int = 2
    repeats: int = 5
    memory_budget_gb: float = 80.0
    memory_context: int = 8192
    memory_model: Optional[str] = None
    memory_overrides: Optional[dict] = None
    memory_fraction: float = 0.85
    hardware: str = "auto"
    probe_bytes: int = 256 << 20
    probe_matmul: int = 4096
    plot: bool = True
    seed: int = 0
    name: str = "kv_variants_bench"

    def __post_init__(self):
        n = self.name
        require(len(self.variants) > 0, f"{n}.variants", "must name at least one variant")
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        variants = {}
        for v, o in self.variants.items():
            o = {} if o is None else o
            require(isinstance(o, dict), f"{n}.variants.{v}", f"must be a mapping of ModelConfig fields, got {o!r}")
            bad = sorted(set(o) - fields)
            require(not bad, f"{n}.variants.{v}", f"{bad[0] if bad else ''!r} is not a ModelConfig field")
            variants[str(v)] = dict(o)
        object.__setattr__(self, "variants", variants)
        ref = self.reference or ("mha" if "mha" in variants else next(iter(variants)))
        require(ref in variants, f"{n}.reference", f"{ref!r} is not one of the variants {list(variants)}")
        object.__setattr__(self, "reference", ref)
        mem = dict(self.memory_overrides or {})
        for v, o in mem.items():
            require(v in variants, f"{n}.memory_overrides", f"{v!r} is not one of the variants {list(variants)}")
            require(isinstance(o, dict) and not set(o) - fields, f"{n}.memory_overrides.{v}",
                    "must be a mapping of ModelConfig fields")
        object.__setattr__(self, "memory_overrides", mem)
        positive_ints(self.batch_sizes, f"{n}.batch_sizes")
        positive_ints(self.context_lens, f"{n}.context_lens")
        for f in ("repeats", "d_ff_multiple", "memory_context", "probe_bytes", "probe_matmul"):
            require(getattr(self, f) >= 1, f"{n}.{f}", f"must be >= 1, got {getattr(self, f)}")
        require(self.warmup >= 0, f"{n}.warmup", f"must be >= 0, got {self.warmup}")
        require(self.memory_budget_gb > 0, f"{n}.memory_budget_gb", f"must be > 0, got {self.memory_budget_gb}")
        require(0 < self.memory_fraction <= 1, f"{n}.memory_fraction", f"must be in (0, 1], got {self.memory_fraction}")

    def base_overrides(self) -> dict:
        o = {"attention_impl": self.attention_impl, **(self.model_overrides or {})}
        if self.dtype is not None:
            o["dtype"] = self.dtype
        return o

    def variant_configs(self) -> dict:
        """{variant: ModelConfig} of the benchmark, d_ff matched to the reference's parameter count."""
        return self._configs(lambda v, o: load_config(self.model, **{**self.base_overrides(), **o}))

    def memory_configs(self) -> dict:
        """{variant: ModelConfig} behind the largest-batch column (memory_model, or the benchmark's own)."""
        if self.memory_model is None:
            return self.variant_configs()
        return self._configs(lambda v, o: load_config(self.memory_model, **{**o, **self.memory_overrides.get(v, {})}))

    def _configs(self, build) -> dict:
        cfgs = {}
        for v, o in self.variants.items():
            try:
                cfgs[v] = build(v, o)
            except (ValueError, FileNotFoundError) as e:
                raise SpecError(f"{self.name}.variants.{v}: {e}") from e
        if self.match_params:
            target = rl.num_params(cfgs[self.reference])
            cfgs = {v: c if v == self.reference else match_d_ff(c, target, self.d_ff_multiple) for v, c in cfgs.items()}
        return cfgs


def match_d_ff(cfg: ModelConfig, target_params: int, multiple: int = 64) -> ModelConfig:
    """cfg with the d_ff (a positive multiple of `multiple`) whose parameter count is closest to target_params."""
    step = rl.num_params(cfg.replace(d_ff=cfg.d_ff + multiple)) - rl.num_params(cfg)  # params per `multiple` of d_ff
    est = (cfg.d_ff + (target_params - rl.num_params(cfg)) / step * multiple) / multiple
    cands = {max(1, math.floor(est)) * multiple, max(1, math.ceil(est)) * multiple}
    best = min(sorted(cands), key=lambda f: abs(rl.num_params(cfg.replace(d_ff=f)) - target_params))
    return cfg.replace(d_ff=best)


def describe_cache(cfg: ModelConfig) -> str:
    if cfg.is_mla:
        s = f"C={cfg.kv_lora_rank}+E={cfg.qk_rope_head_dim}"
    else:
        s = f"K={cfg.n_kv_heads}xH={cfg.head_dim}"
    return s + (f", {cfg.kv_layers}/{cfg.n_layers} layers" if cfg.kv_layers != cfg.n_layers else "")


def pool_bytes_per_token(kv: dict) -> float:
    """Bytes of the page pools per slot: sum of the arrays' nbytes / (pages x page size)."""
    return sum(x.nbytes for x in kv.values()) / (num_pages(kv) * page_size(kv))


def time_decode(params, cfg: ModelConfig, cache: dict, S: int, warmup: int, repeats: int):
    """(Timing of single blocked decode steps at S cached tokens, the cache); lengths reset to S before each."""
    B = cache["lengths"].shape[0]
    tok_B = block(jnp.zeros((B,), jnp.int32))
    samples = []
    for r in range(warmup + repeats):
        cache["lengths"] = block(jnp.full((B,), S, jnp.int32))
        t0 = time.perf_counter()
        _, cache = block(decode_step(params, cfg, tok_B, cache))
        dt = time.perf_counter() - t0
        if r >= warmup:
            samples.append(dt)
    return Timing(tuple(samples)), cache


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(KVVariantsBenchSpec, spec)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    cfgs = s.variant_configs()
    mem_cfgs = s.memory_configs()
    info = device_info()
    ref_cfg = cfgs[s.reference]
    hw, measured, _ = profiles(s.hardware, s.probe_bytes, s.probe_matmul, ref_cfg.dtype, info)
    budget = HardwareProfile(f"{s.memory_budget_gb:g} GB budget", 1.0, 1.0, s.memory_budget_gb * 1e9)
    mem_label = s.memory_model or f"{ref_cfg.name} (this benchmark's config)"
    print(f"  device: {info['device_kind']}; profile {hw.name} ({hw.source}, {hw.memory_bandwidth / 1e9:.1f} GB/s, "
          f"{hw.peak_flops_bf16 / 1e12:.3f} TFLOP/s); reference {s.reference}; fit_B: {mem_label} at "
          f"{s.memory_context} tokens in {s.memory_budget_gb:g} GB", flush=True)
    device_budget = s.memory_fraction * info["device_memory_bytes"]
    key = jax.random.PRNGKey(s.seed)
    fill_key = jax.random.key(s.seed, impl="rbg")

    summary, rows = {}, []
    for v, cfg in cfgs.items():
        params = block(init_params(cfg, key))
        n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
        mcfg = mem_cfgs[v]
        summary[v] = {
            "variant": v, "overrides": s.variants[v], "cache": describe_cache(cfg), "d_ff": cfg.d_ff,
            "params": n_params, "params_roofline": rl.num_params(cfg), "param_MB": rl.param_bytes(cfg) / 1e6,
            "kv_B_tok": rl.kv_bytes_per_token(cfg),
            "kv_B_tok_pools": pool_bytes_per_token(init_pools(cfg, 1, DEFAULT_PAGE_SIZE)),
            "mem_model": mcfg.name, "mem_d_ff": mcfg.d_ff, "mem_params": rl.num_params(mcfg),
            "mem_kv_B_tok": rl.kv_bytes_per_token(mcfg),
            "fit_B": rl.max_batch_size(mcfg, budget, s.memory_context),
        }
        print(f"  {v}: {summary[v]['cache']}, d_ff {cfg.d_ff}, {n_params:,} params, "
              f"{summary[v]['kv_B_tok']:.0f} B/token; fit_B {summary[v]['fit_B']}", flush=True)
        for S in sorted(s.context_lens):
            for B in sorted(s.batch_sizes):
                row = {"variant": v, "cache": summary[v]["cache"], "d_ff": cfg.d_ff, "params": n_params,
                       "params_M": n_params / 1e6, "kv_B_tok": summary[v]["kv_B_tok"], "fit_B": summary[v]["fit_B"],
                       "B": B, "S": S, "dtype": cfg.dtype,
                       "attn": f"{cfg.attention_impl} -> {registry.resolve(cfg.attention_impl)}",
                       "hardware": hw.name, "probe_GB_s": measured.memory_bandwidth / 1e9}
                cost = rl.decode_cost(cfg, B, S)
                row.update(step_pred_ms=cost.time(hw) * 1e3, bound=cost.bound(hw), step_bytes=cost.bytes,
                           step_flops=cost.flops)
                need = rl.memory_bytes(cfg, B, S + 1)
                if S + 1 > cfg.max_seq_len:
                    rows.append({**row, "status": f"skipped: S+1={S + 1} > max_seq_len={cfg.max_seq_len}"})
                    continue
                if need > device_budget:
                    rows.append({**row, "status": f"skipped: needs {need / 1e9:.1f} GB > {device_budget / 1e9:.1f} GB"})
                    continue
                t0 = time.perf_counter()
                cache = random_row_cache(cfg, B, S, jax.random.fold_in(fill_key, 1000 * B + S))
                row["kv_B_tok_pools"] = pool_bytes_per_token(cache["kv"])
                t, cache = time_decode(params, cfg, cache, S, s.warmup, s.repeats)
                del cache
                row.update(step_ms=t.median_s * 1e3, step_min_ms=t.min_s * 1e3, samples=t.n,
                           mbu=rl.utilization(cost, t.median_s, hw).mbu, status="ok")
                rows.append(row)
                print(f"  {v:>8} B={B:<3} S={S:<6} step {row['step_ms']:.3f} ms (pred {row['step_pred_ms']:.3f})"
                      f"  [{time.perf_counter() - t0:.1f}s]", flush=True)
        del params

    ref = summary[s.reference]
    for v, d in summary.items():
        d["params_vs_ref"] = d["params"] / ref["params"]
        d["kv_vs_ref"] = d["kv_B_tok"] / ref["kv_B_tok"]
        d["fit_vs_ref"] = d["fit_B"] / ref["fit_B"] if ref["fit_B"] else None
    ref_rows = {(r["B"], r["S"]): r for r in rows if r["variant"] == s.reference}
    for r in rows:
        d, b = summary[r["variant"]], ref_rows.get((r["B"], r["S"]), {})
        r.setdefault("kv_B_tok_pools", d["kv_B_tok_pools"])
        r.update(params_vs_ref=d["params_vs_ref"], kv_vs_ref=d["kv_vs_ref"],
                 pred_vs_ref=r["step_pred_ms"] / b["step_pred_ms"] if b else None,
                 step_vs_ref=r["step_ms"] / b["step_ms"] if "step_ms" in r and "step_ms" in b else None)
    # Order the columns as the table shows them (the JSON keeps every key).
    rows = [{**{c: r.get(c) for c in MARKDOWN_COLUMNS}, **r} for r in rows]

    header = (f"# {s.name}: KV-cache variants at matched parameters ({jax.default_backend()}; profile {hw.name}, "
              f"{hw.source}, {hw.memory_bandwidth / 1e9:.1f} GB/s, {hw.peak_flops_bf16 / 1e12:.3f} TFLOP/s)\n\n"
              f"Base: `{s.model}` with {s.base_overrides()}; reference variant: **{s.reference}**; "
              f"fit_B: {mem_label} at {s.memory_context} tokens per sequence in {s.memory_budget_gb:g} GB.\n")
    summary_rows = [{c: d.get(c) for c in SUMMARY_COLUMNS} for d in summary.values()]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kv_variants.md"), "w") as f:
        f.write(f"{header}\n## Variants\n\n{report.markdown_table(summary_rows, SUMMARY_COLUMNS)}\n"
                f"## Decode steps\n\n{report.markdown_table(rows, MARKDOWN_COLUMNS)}\n{DEFINITIONS}")
    report.write_json({"spec": dataclasses.asdict(s), "definitions": DEFINITIONS, "hardware": dataclasses.asdict(hw),
                       "probe_GB_s": measured.memory_bandwidth / 1e9, "memory_model": mem_label,
                       "configs": {v: c.to_dict() for v, c in cfgs.items()},
                       "memory_configs": {v: c.to_dict() for v, c in mem_cfgs.items()},
                       "variants": list(summary.values()), "rows": rows}, os.path.join(out_dir, "kv_variants.json"))
    if s.plot:
        plot(rows, os.path.join(out_dir, "kv_variants.png"), s)
    return rows


def plot(rows, path: str, s: KVVariantsBenchSpec) -> None:
    """Decode step time against context, one panel per batch size: measured (solid), roofline (dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    Bs = sorted(s.batch_sizes)
    fig, axs = plt.subplots(1, len(Bs), figsize=(5.5 * len(Bs), 4.2), squeeze=False)
    for ax, B in zip(axs[0], Bs):
        for i, v in enumerate(s.variants):
            pts = sorted((r["S"], r.get("step_ms"), r["step_pred_ms"]) for r in rows if r["variant"] == v and r["B"] == B)
            ok = [p for p in pts if p[1] is not None]
            ax.plot([p[0] for p in ok], [p[1] for p in ok], "-o", ms=4, color=f"C{i}", label=f"{v} (measured)")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "--", color=f"C{i}", alpha=0.7, label=f"{v} (roofline)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context S (cached tokens)")
        ax.set_ylabel("decode step (ms)")
        ax.set_title(f"{s.name}: batch {B}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
