"""What tensor parallelism costs: per-device bytes and FLOPs plus the all-reduces, and when TP stops paying.

Megatron layout over TP devices: query heads, KV heads, FFN columns and the vocabulary are split; each
block's attention output projection and MLP down projection are row-parallel, so every block half ends in
one all-reduce of the activations [B*T, D]; the vocabulary-parallel embedding ends in one more. Sampling over
the vocabulary-parallel head needs only a few floats per row (sharded max / sum / argmax), not counted.

    per device:  weights / TP (norms replicated), KV / TP (see kv_heads_per_device), FLOPs / TP
    all-reduce:  ring, 2 (TP - 1) / TP * bytes / link bandwidth + a fixed latency per all-reduce
    step time:   max(memory, compute) per device + all-reduces (no overlap assumed: an upper bound)

KV heads: K / TP per device when TP divides K; otherwise the runtime repeats them to lcm(K, TP) heads (what vLLM
does), lcm(K, TP) / TP per device, so KV bytes per device stop shrinking past TP = K. MLA's latent is needed by
every head: it is replicated on every device.

    python -m infer.perf.parallel_cost --model llama3-70b --hardware h100 --batch-sizes 1 64 --context 4096
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

from infer.config.model_config import ConfigError, ModelConfig, load_config
from infer.parallel.tensor_parallel import replicated_kv_heads
from infer.perf.hardware import HardwareProfile, load_hardware
from infer.perf.roofline import (DTYPE_BYTES, StepCost, WeightFormat, kv_bytes_per_token, kv_positions_stored,
                                  param_bytes, param_groups, step_cost)


def kv_heads_per_device(cfg: ModelConfig, tp: int) -> int:
    """KV heads one device stores: K' / TP with K' the heads the runtime runs with (K, or lcm(K, TP) when TP does
    not divide K: infer/parallel/tensor_parallel.py's replication). Refuses what the runtime refuses."""
    if not (isinstance(tp, int) and not isinstance(tp, bool) and tp >= 1):
        raise ConfigError(f"tp: must be an int >= 1, got {tp!r}")
    return replicated_kv_heads(cfg, tp) // tp


@dataclasses.dataclass(frozen=True)
class TPStepCost:
    tp: int
    per_device: StepCost  # FLOPs and bytes one device handles
    allreduce_bytes: float  # bytes of one all-reduce's payload (the activations [B*T, D])
    num_allreduces: int
    memory_bytes: float  # what one device holds: its weights and its share of the KV cache

    def comm_time(self, hw: HardwareProfile) -> float:
        if self.tp == 1:
            return 0.0
        if hw.interconnect_bandwidth is None:
            raise ValueError(f"{hw.name}: the hardware profile has no interconnect_bandwidth")
        ring = 2 * (self.tp - 1) / self.tp * self.allreduce_bytes / hw.interconnect_bandwidth
        return self.num_allreduces * (ring + hw.interconnect_latency)

    def time(self, hw: HardwareProfile) -> float:
        return self.per_device.time(hw) + self.comm_time(hw)


def tp_step_cost(cfg: ModelConfig, tp: int, batch_size: int, tokens: int, context: int, weights=None, kv=None
                 ) -> TPStepCost:
    """Per-device cost and communication of one step at tensor-parallel degree `tp`."""
    full = step_cost(cfg, batch_size, tokens, context, weights, kv)
    k_dev = kv_heads_per_device(cfg, tp)
    groups, w = param_groups(cfg), WeightFormat.get(weights, cfg.weight_format or cfg.dtype)
    vector_bytes = sum(p.bytes(w) for p in groups if p.kind == "vector")
    split = full.weight_bytes - vector_bytes
    # Each device holds k_dev of the K KV heads' projections and pages (1/TP of them unless replicated); MLA's
    # latent is read by every head and lives whole on every device.
    kv_share = 1.0 if cfg.is_mla else k_dev / cfg.n_kv_heads
    kv_proj = sum(p.bytes(w) for p in groups if p.name in ("k", "v"))
    split_w = (split - kv_proj) / tp + kv_proj * kv_share
    per_device = dataclasses.replace(full, flops=full.flops / tp, weight_bytes=split_w + vector_bytes,
                                     kv_read_bytes=full.kv_read_bytes * kv_share,
                                     kv_write_bytes=full.kv_write_bytes * kv_share)
    act = batch_size * tokens * cfg.d_model * DTYPE_BYTES[cfg.dtype]
    mem = (param_bytes(cfg, weights) - vector_bytes) / tp + vector_bytes
    mem += batch_size * kv_positions_stored(cfg, context + tokens) * kv_bytes_per_token(cfg, kv) * kv_share
    return TPStepCost(tp, per_device, act, 2 * cfg.n_layers + 1, mem)


def tp_table(cfg: ModelConfig, hw: HardwareProfile, batch_sizes: Sequence[int], tps: Sequence[int], context: int
             ) -> list:
    """Decode-step rows: predicted time per TP degree, split into memory/compute and communication."""
    rows = []
    for B in batch_sizes:
        base = None
        for tp in tps:
            c = tp_step_cost(cfg, tp, B, 1, context)
            t = c.time(hw)
            base = t if base is None else base
            rows.append({"B": B, "tp": tp, "step_ms": t * 1e3, "device_ms": c.per_device.time(hw) * 1e3,
                         "comm_ms": c.comm_time(hw) * 1e3, "speedup": base / t,
                         "efficiency": base / t / (tp / tps[0]), "bound": c.per_device.bound(hw),
                         "device_GB": c.memory_bytes / 1e9, "fits": c.memory_bytes <= hw.memory_bytes})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama3-70b")
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--context", type=int, default=4096)
    a = ap.parse_args(argv)
    cfg, hw = load_config(a.model), load_hardware(a.hardware)
    print(f"{cfg.name} decode at context {a.context} on {hw.name} (link {hw.interconnect_bandwidth / 1e9:.0f} GB/s "
          f"per direction, {hw.interconnect_latency * 1e6:.0f} us per all-reduce); no compute/communication overlap")
    print("| B | TP | step ms | per-device ms | all-reduce ms | speedup | efficiency | bound | GB per device | fits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in tp_table(cfg, hw, a.batch_sizes, a.tp, a.context):
        print(f"| {r['B']} | {r['tp']} | {r['step_ms']:.2f} | {r['device_ms']:.2f} | {r['comm_ms']:.3f} | "
              f"{r['speedup']:.2f}x | {r['efficiency']:.0%} | {r['bound']} | {r['device_GB']:.1f} | "
              f"{'yes' if r['fits'] else 'no'} |")


if __name__ == "__main__":
    main()
