"""Experiment `kind: roofline_table`: the performance model over models x hardware x S x B (no device work).

Spec fields (configs/experiments/roofline_*.yaml)::

    models: [llama2-13b]          # configs/models names
    hardware: [h100]              # configs/hardware names
    seq_lens: [1024]              # context S
    batch_sizes: [1, 64, 256]     # B
    kv_heads: [40, 8]             # optional: sweep n_kv_heads (default: each model's own)
    weights: [bfloat16]           # weight formats (bfloat16, float32, int8, int4)
    kv_dtype: bfloat16
    lecture: true                 # add the lecture's exact model columns
    plots: true                   # latency / throughput / memory vs B (+ device capacity line)

Each row: the lecture's memory/latency/throughput (bf16 only) beside the refined model's
decode step (max of memory and compute time), prefill time for B prompts of S tokens,
MLP and attention arithmetic intensity in decode, the verdict, and the largest B that fits.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Optional, Tuple

from infer.perf import roofline as rl
from infer.bench.experiment import parse_spec, positive_ints, require
from infer.config.model_config import load_config
from infer.perf.hardware import load_hardware

MARKDOWN_COLUMNS = (
    "model", "K", "hardware", "weights", "S", "B",
    "lecture_memory_GB", "lecture_latency_ms", "lecture_tok_s",
    "memory_GB", "fits", "decode_ms", "decode_tok_s", "bound", "mlp_ai", "attn_ai", "hw_ai", "prefill_ms",
    "max_batch",
)


@dataclasses.dataclass(frozen=True)
class RooflineTableSpec:
    models: Tuple[str, ...]
    hardware: Tuple[str, ...]
    seq_lens: Tuple[int, ...]
    batch_sizes: Tuple[int, ...]
    kv_heads: Optional[Tuple[int, ...]] = None
    weights: Tuple[str, ...] = ("bfloat16",)
    kv_dtype: str = "bfloat16"
    lecture: bool = True
    plots: bool = True
    name: str = "roofline_table"

    def __post_init__(self):
        require(len(self.models) > 0, f"{self.name}.models", "must not be empty")
        require(len(self.hardware) > 0, f"{self.name}.hardware", "must not be empty")
        positive_ints(self.seq_lens, f"{self.name}.seq_lens")
        positive_ints(self.batch_sizes, f"{self.name}.batch_sizes")
        if self.kv_heads is not None:
            positive_ints(self.kv_heads, f"{self.name}.kv_heads")
        for w in self.weights:
            rl.WeightFormat.get(w)
        rl.KVFormat.get(self.kv_dtype)


def _configs(spec: RooflineTableSpec):
    for m in spec.models:
        cfg = load_config(m, dtype="bfloat16")
        for K in (spec.kv_heads or (cfg.n_kv_heads,)):
            yield cfg.replace(n_kv_heads=K)


def row(cfg, hw_name, hw, S, B, weights, kv_dtype, lecture=True) -> dict:
    pred = rl.predict_decode(cfg, hw, B, S, weights, kv_dtype)
    pre = rl.predict_prefill(cfg, hw, B, S, weights, kv_dtype)
    mem = rl.memory_bytes(cfg, B, S, weights, kv_dtype)
    r = {"model": cfg.name, "K": cfg.n_kv_heads, "hardware": hw_name, "weights": weights, "S": S, "B": B,
         "params": rl.num_params(cfg)}
    if lecture and weights == "bfloat16" and kv_dtype == "bfloat16":
        lec = rl.lecture_stats(cfg, B, S, hw)
        r.update(lecture_params=lec.num_params, lecture_memory_GB=lec.memory / 1e9,
                 lecture_latency_ms=lec.latency * 1e3, lecture_tok_s=lec.throughput,
                 lecture_fits=lec.memory <= hw.memory_bytes)
    r.update(
        memory_GB=mem / 1e9, fits=mem <= hw.memory_bytes,
        decode_ms=pred.time * 1e3, decode_memory_ms=pred.memory_time * 1e3, decode_compute_ms=pred.compute_time * 1e3,
        decode_tok_s=pred.tokens_per_s, bound=pred.bound,
        mlp_ai=rl.mlp_cost(cfg, B, 1).intensity, attn_ai=rl.attention_cost(cfg, B, S, 1).intensity,
        hw_ai=hw.intensity, prefill_ms=pre.time * 1e3, prefill_bound=pre.bound,
        max_batch=rl.max_batch_size(cfg, hw, S, weights, kv_dtype),
    )
    return r


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(RooflineTableSpec, spec)
    rows = []
    hws = {h: load_hardware(h) for h in s.hardware}
    for cfg, (hn, hw), S, weights, B in itertools.product(list(_configs(s)), hws.items(), s.seq_lens, s.weights,
                                                            sorted(s.batch_sizes)):
        rows.append(row(cfg, hn, hw, S, B, weights, s.kv_dtype, s.lecture))
    if s.plots:
        from infer.bench import plots
        os.makedirs(out_dir, exist_ok=True)
        for (hn, hw), S in itertools.product(hws.items(), s.seq_lens):
            series = {}
            for cfg, weights in itertools.product(list(_configs(s)), s.weights):
                label = f"{cfg.name} K={cfg.n_kv_heads} {weights}"
                series[label] = (cfg, weights)
            path = os.path.join(out_dir, f"roofline_{hn}_S{S}.png")
            plots.roofline_vs_batch(series, hw, S, max(s.batch_sizes), s.kv_dtype, path,
                                    lecture=s.lecture, title=f"{hw.name}, S={S}")
            print(f"  wrote {path}")
    return rows
