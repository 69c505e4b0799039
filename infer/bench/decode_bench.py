"""Experiment `kind: decode_bench`: real prefill and decode steps, measured beside the roofline prediction.

Spec fields (configs/experiments/decode_bench*.yaml)::

    model: llama3-8b               # configs/models name (random weights: speed does not depend on values)
    model_overrides: {}            # ModelConfig fields to replace (e.g. n_kv_heads: 8)
    dtype: bfloat16                # optional override of the config's dtype
    attention_impl: auto           # auto (Pallas on GPU/TPU, the reference on CPU) | reference | pallas
    layouts: [stacked]             # parameter layouts, each its own rows (infer/model/layout.py): stacked
                                   # (one array per projection, layers scanned) and/or unrolled (one subtree per layer)
    batch_sizes: [1, 16, 64]
    context_lens: [512, 2048]      # S: cached tokens when decoding; prompt length for TTFT
    single_steps: 5                # individually timed (blocked) decode steps per round
    decode_steps: 16               # one multi-step run per round (blocked once at the end)
    warmup: 2                      # rounds discarded (compilation)
    repeats: 3                     # rounds kept; medians over them
    prefill_max_tokens: 16384      # TTFT (and generate) measured only where B*S <= this
    generate: true                 # also time infer.generation.batch (on-device loop) where TTFT is measured
    hardware: auto                 # datasheet profile by device kind; CPU: the probe's numbers
    probe_bytes: 268435456         # read-bandwidth probe array size
    probe_matmul: 4096             # matmul probe size (FLOP/s)
    memory_fraction: 0.85          # skip (B, S) whose weights + KV exceed this share of device memory
    dump_hlo: false                # write each layout's optimized decode-step HLO (first measured B, S) to the
                                   # experiment's folder; that row gets hlo_sliced_MB (dynamic_slice_bytes)

Every step is the model's one ragged paged step (`infer.model.step.run_step`) through the row view
`infer.model.rows` (`init_cache`, `prefill`, `decode_step`: B rows, each owning M = ceil(max_len / Z)
pages of a pool [L, P = B * M, K, Z, H], AttentionMetadata built by `rows_metadata`), and
`infer.generate` (the on-device loop over the same step). The `attn` column names the attention
implementation that ran (`auto` resolved for this backend).

What is measured, per (B, S):
- TTFT: `infer.prefill` of B prompts of S tokens into a fresh cache + argmax of the first token.
- step: one `infer.decode_step` (cache donated), blocked on logits and cache; median.
  Decode runs on a cache whose `lengths` are set to S directly (its contents do not change
  the speed), so no long prefill is needed for large B.
- multi: `decode_steps` steps back-to-back with on-device argmax feedback, blocked once;
  per-token latency = time / steps, tokens/s = B · steps / time.
- gen: `infer.generation.batch` (greedy, `decode_steps` new tokens, prompts of S tokens): its own TTFT
  and per-token latency of the on-device `lax.while_loop` (its cache is bucketed to a power of
  two >= S + steps; attention reads only the pages up to each row's length on GPU/TPU, all M pages
  with the CPU reference).
- predictions: `infer.perf.roofline` refined model on the hardware profile (the datasheet on
  GPU/TPU; on CPU the probed read bandwidth and matmul FLOP/s), at the mean context of the run.
- probes: read bandwidth (column sums of a large array: the decode access pattern), copy
  bandwidth (y = x + 1, read + write; on CPU it pays page faults for fresh output pages, so it
  is reported but not used), matmul FLOP/s in the model's dtype.
- MBU = (weight + KV bytes of the step) / time / profile bandwidth; `mbu_probe` uses the
  probed read bandwidth instead; MFU = step FLOPs / time / profile FLOP/s.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
import warnings
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from infer.bench.device_probe import device_info, measure_bandwidth, measure_matmul_flops
from infer.bench.experiment import parse_spec, positive_ints, require
from infer.bench.timing import Timing, block, time_fn
from infer.config.model_config import load_config
from infer.model.params import init_params
from infer.model.rows import decode_step, decode_step_hlo, init_cache, prefill
from infer.perf import roofline as rl
from infer.perf.hardware import HardwareProfile, load_hardware, profile_for_device_kind
from layers.attention import registry

MARKDOWN_COLUMNS = (
    "model", "K", "dtype", "attn", "layout", "weights_MB", "B", "S", "ttft_ms", "ttft_pred_ms", "step_ms",
    "step_pred_ms", "multi_ms_per_tok", "gen_ms_per_tok", "tok_s", "tok_s_pred", "GB_s", "probe_GB_s", "mbu",
    "mbu_probe", "mfu", "bound", "hlo_sliced_MB", "status",
)


@dataclasses.dataclass(frozen=True)
class DecodeBenchSpec:
    model: str
    batch_sizes: Tuple[int, ...]
    context_lens: Tuple[int, ...]
    model_overrides: Optional[dict] = None
    dtype: Optional[str] = None
    attention_impl: str = "auto"
    layouts: Tuple[str, ...] = ("stacked",)
    single_steps: int = 5
    decode_steps: int = 16
    warmup: int = 2
    repeats: int = 3
    prefill_max_tokens: int = 16384
    generate: bool = True
    hardware: str = "auto"
    probe_bytes: int = 256 << 20
    probe_matmul: int = 4096
    memory_fraction: float = 0.85
    dump_hlo: bool = False
    seed: int = 0
    name: str = "decode_bench"

    def __post_init__(self):
        n = self.name
        positive_ints(self.batch_sizes, f"{n}.batch_sizes")
        positive_ints(self.context_lens, f"{n}.context_lens")
        for f in ("single_steps", "decode_steps", "repeats", "probe_bytes", "probe_matmul"):
            require(getattr(self, f) >= 1, f"{n}.{f}", f"must be >= 1, got {getattr(self, f)}")
        require(self.warmup >= 0, f"{n}.warmup", f"must be >= 0, got {self.warmup}")
        require(self.prefill_max_tokens >= 0, f"{n}.prefill_max_tokens", "must be >= 0")
        require(0 < self.memory_fraction <= 1, f"{n}.memory_fraction", f"must be in (0, 1], got {self.memory_fraction}")
        require(len(self.layouts) >= 1 and set(self.layouts) <= {"stacked", "unrolled"}, f"{n}.layouts",
                f"a non-empty list of stacked / unrolled, got {list(self.layouts)}")

    def model_config(self):
        overrides = {"attention_impl": self.attention_impl, **(self.model_overrides or {})}
        if self.dtype is not None:
            overrides["dtype"] = self.dtype
        return load_config(self.model, **overrides)


def synthetic_cache(cfg, B: int, S: int, max_len: int) -> dict:
    """A cache that claims S valid positions per row (values are zeros: speed does not depend on them)."""
    cache = init_cache(cfg, B, max_len)
    cache["lengths"] = jnp.full((B,), S, jnp.int32)
    return block(cache)


def _time_decode(params, cfg, B: int, S: int, spec: DecodeBenchSpec):
    """Medians of single blocked steps and of a multi-step run (seconds per step)."""
    max_len = S + spec.single_steps + spec.decode_steps
    step_samples, multi_samples = [], []
    for r in range(spec.warmup + spec.repeats):
        cache = synthetic_cache(cfg, B, S, max_len)
        tok_B = block(jnp.zeros((B,), jnp.int32))
        for _ in range(spec.single_steps):
            t0 = time.perf_counter()
            logits_BV, cache = block(decode_step(params, cfg, tok_B, cache))
            dt = time.perf_counter() - t0
            if r >= spec.warmup:
                step_samples.append(dt)
            tok_B = block(jnp.argmax(logits_BV, axis=-1).astype(jnp.int32))
        t0 = time.perf_counter()
        for _ in range(spec.decode_steps):
            logits_BV, cache = decode_step(params, cfg, tok_B, cache)
            tok_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        block((tok_B, cache))
        dt = time.perf_counter() - t0
        if r >= spec.warmup:
            multi_samples.append(dt / spec.decode_steps)
        del cache
    return Timing(tuple(step_samples)), Timing(tuple(multi_samples))


def _time_prefill(params, cfg, B: int, S: int, spec: DecodeBenchSpec) -> Timing:
    rng = np.random.default_rng(spec.seed)
    tokens_BT = jnp.asarray(rng.integers(0, cfg.vocab_size, size=(B, S)), jnp.int32)
    lengths_B = jnp.full((B,), S, jnp.int32)

    def ttft(cache):
        logits_BV, cache = prefill(params, cfg, tokens_BT, lengths_B, cache)
        return jnp.argmax(logits_BV, axis=-1), cache

    return time_fn(ttft, warmup=spec.warmup, repeats=spec.repeats, setup=lambda: (init_cache(cfg, B, S),))


def _time_generate(params, cfg, B: int, S: int, spec: DecodeBenchSpec):
    """Medians of infer.generation.batch's TTFT and per-token decode latency (seconds)."""
    from infer.generation.batch import generate
    from infer.config import SamplingParams
    rng = np.random.default_rng(spec.seed)
    prompts = rng.integers(0, cfg.vocab_size, size=(B, S)).tolist()
    sampling = SamplingParams(temperature=0.0, max_new_tokens=spec.decode_steps)
    ttft, per_tok = [], []
    for r in range(spec.warmup + spec.repeats):
        res = generate(params, cfg, prompts, sampling)
        if r >= spec.warmup:
            ttft.append(res.ttft_s)
            per_tok.append(res.latency_s)
    return Timing(tuple(ttft)), Timing(tuple(per_tok))


def profiles(hardware: str, probe_bytes: int, probe_matmul: int, dtype: str, info: dict):
    """(profile for predictions and MBU, the probed profile, copy bandwidth bytes/s).

    hardware "auto": the datasheet of this device kind on GPU/TPU, the probed profile on CPU
    (read bandwidth, matmul FLOP/s in `dtype`); otherwise a named profile (configs/hardware).
    """
    bw = measure_bandwidth(probe_bytes, "read")
    copy_bw = measure_bandwidth(probe_bytes, "copy")
    flops = measure_matmul_flops(probe_matmul, dtype)
    measured = HardwareProfile.measured(f"{info['device_kind']} (probe)", bw, flops, info["device_memory_bytes"])
    if hardware == "auto":
        hw = profile_for_device_kind(info["device_kind"]) if info["backend"] != "cpu" else None
    else:
        hw = load_hardware(hardware)
    return (hw or measured), measured, copy_bw


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(DecodeBenchSpec, spec)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    cfg = s.model_config()
    info = device_info()
    hw, measured, copy_bw = profiles(s.hardware, s.probe_bytes, s.probe_matmul, cfg.dtype, info)
    print(f"  device: {info['device_kind']}; probe: {measured.memory_bandwidth / 1e9:.1f} GB/s read, {copy_bw / 1e9:.1f} GB/s copy, "
          f"{measured.peak_flops_bf16 / 1e12:.3f} TFLOP/s {cfg.dtype} matmul; "
          f"profile for MBU: {hw.name} ({hw.source}, {hw.memory_bandwidth / 1e9:.1f} GB/s)", flush=True)
    attn = f"{cfg.attention_impl} -> {registry.resolve(cfg.attention_impl)}"
    budget = s.memory_fraction * info["device_memory_bytes"]
    rows = []
    for layout in s.layouts:
        # initialised in the layout itself (no stacked copy beside it); random values: speed does not depend on them
        cfg = cfg.replace(scan_layers=layout == "stacked")
        params = block(init_params(cfg, jax.random.PRNGKey(s.seed)))
        rows += _run_layout(s, cfg, params, layout, attn, hw, measured, copy_bw, budget, out_dir)
        del params
    return rows


_HLO_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1, "s4": 0.5, "u4": 0.5}
_DYNAMIC_SLICE = re.compile(r"= (\w+)\[([\d,]*)\]\S* dynamic-slice\(")


def dynamic_slice_bytes(hlo_text: str) -> float:
    """Bytes produced by the dynamic-slice instructions of an HLO text (each counted once, also inside a loop body:
    a layer scan's weight slices count one layer's worth). Large = the program slices weights at run time."""
    total = 0.0
    for dtype, dims in _DYNAMIC_SLICE.findall(hlo_text):
        total += _HLO_BYTES.get(dtype, 4) * float(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return total


def _dump_hlo(params, cfg, B: int, S: int, path: str) -> float:
    """Write the decode step's optimized HLO at (B, S) to `path`; the MB its dynamic-slices produce."""
    text = decode_step_hlo(params, cfg, synthetic_cache(cfg, B, S, S + 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return dynamic_slice_bytes(text) / 1e6


def _run_layout(s: DecodeBenchSpec, cfg, params, layout: str, attn: str, hw, measured, copy_bw, budget,
                out_dir: str) -> list:
    """The rows of one parameter layout: every (S, B) of the spec."""
    rows = []
    dumped = not s.dump_hlo
    for S in sorted(s.context_lens):
        for B in sorted(s.batch_sizes):
            max_len = S + s.single_steps + s.decode_steps
            base = {"model": cfg.name, "K": cfg.n_kv_heads, "dtype": cfg.dtype, "attn": attn, "layout": layout,
                    "weights_MB": rl.param_bytes(cfg) / 1e6,
                    "B": B, "S": S, "hardware": hw.name, "hardware_source": hw.source,
                    "probe_GB_s": measured.memory_bandwidth / 1e9, "probe_copy_GB_s": copy_bw / 1e9, "probe_TFLOP_s": measured.peak_flops_bf16 / 1e12}
            need = rl.memory_bytes(cfg, B, max_len)
            if max_len > cfg.max_seq_len:
                rows.append({**base, "status": f"skipped: S+steps={max_len} > max_seq_len={cfg.max_seq_len}"})
                continue
            if need > budget:
                rows.append({**base, "status": f"skipped: needs {need / 1e9:.1f} GB > {budget / 1e9:.1f} GB"})
                continue
            t_start = time.perf_counter()
            row = dict(base)
            if not dumped:
                path = os.path.join(out_dir, f"decode_step_{layout}_B{B}_S{S}.hlo.txt")
                row["hlo_sliced_MB"] = _dump_hlo(params, cfg, B, S, path)
                print(f"  {layout}: dynamic-slices produce {row['hlo_sliced_MB']:.3f} MB in {path}", flush=True)
                dumped = True
            if B * S <= s.prefill_max_tokens:
                ttft = _time_prefill(params, cfg, B, S, s)
                pre = rl.predict_prefill(cfg, hw, B, S)
                row.update(ttft_ms=ttft.median_s * 1e3, ttft_pred_ms=pre.time * 1e3,
                           ttft_mfu=rl.utilization(pre.cost, ttft.median_s, hw).mfu)
                if s.generate and S + s.decode_steps <= cfg.max_seq_len:
                    gen_ttft, gen_tok = _time_generate(params, cfg, B, S, s)
                    row.update(gen_ttft_ms=gen_ttft.median_s * 1e3, gen_ms_per_tok=gen_tok.median_s * 1e3)
            step, multi = _time_decode(params, cfg, B, S, s)
            step_cost = rl.decode_cost(cfg, B, S + s.single_steps // 2)
            multi_cost = rl.decode_cost(cfg, B, S + s.single_steps + s.decode_steps // 2)
            u = rl.utilization(step_cost, step.median_s, hw)
            row.update(
                step_ms=step.median_s * 1e3, step_min_ms=step.min_s * 1e3,
                step_pred_ms=step_cost.time(hw) * 1e3,
                multi_ms_per_tok=multi.median_s * 1e3,
                tok_s=B / multi.median_s, tok_s_pred=B / multi_cost.time(hw),
                GB_s=u.achieved_bandwidth / 1e9, mbu=u.mbu,
                mbu_probe=rl.utilization(step_cost, step.median_s, measured).mbu, mfu=u.mfu,
                multi_mbu=rl.utilization(multi_cost, multi.median_s, hw).mbu,
                bound=step_cost.bound(hw), step_bytes=step_cost.bytes, step_flops=step_cost.flops,
                status="ok",
            )
            rows.append(row)
            print(f"  {layout:<8} B={B:<4} S={S:<6} step {row['step_ms']:.3f} ms (pred {row['step_pred_ms']:.3f}), "
                  f"{row['tok_s']:.1f} tok/s, MBU {row['mbu']:.1%}"
                  + (f", TTFT {row['ttft_ms']:.2f} ms" if "ttft_ms" in row else "")
                  + f"  [{time.perf_counter() - t_start:.1f}s]", flush=True)
    return rows
