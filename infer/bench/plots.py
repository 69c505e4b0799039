"""Plots of the performance model: latency, throughput and memory against batch size."""
from __future__ import annotations

from infer.perf import roofline as rl


def _batch_grid(max_batch: int) -> list:
    grid, b = [], 1
    while b < max_batch:
        grid.append(b)
        b *= 2
    return grid + [max_batch]


def roofline_vs_batch(series: dict, hw, seq_len: int, max_batch: int, kv_dtype: str, path: str,
                      lecture: bool = True, title: str = "") -> None:
    """Three panels for {label: (cfg, weights)}: decode latency, throughput, memory (+ capacity line).

    Solid lines: the refined model. Dashed: the lecture's model (bf16 series only).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Bs = _batch_grid(max_batch)
    fig, (ax_lat, ax_tput, ax_mem) = plt.subplots(1, 3, figsize=(16, 4.8))
    for i, (label, (cfg, weights)) in enumerate(series.items()):
        color = f"C{i % 10}"
        preds = [rl.predict_decode(cfg, hw, B, seq_len, weights, kv_dtype) for B in Bs]
        mem = [rl.memory_bytes(cfg, B, seq_len, weights, kv_dtype) / 1e9 for B in Bs]
        ax_lat.plot(Bs, [p.time * 1e3 for p in preds], "-o", ms=3, color=color, label=label)
        ax_tput.plot(Bs, [p.tokens_per_s for p in preds], "-o", ms=3, color=color, label=label)
        ax_mem.plot(Bs, mem, "-o", ms=3, color=color, label=label)
        if lecture and weights == "bfloat16" and kv_dtype == "bfloat16":
            lec = [rl.lecture_stats(cfg, B, seq_len, hw) for B in Bs]
            ax_lat.plot(Bs, [s.latency * 1e3 for s in lec], "--", color=color, alpha=0.6, label=f"{label} (lecture)")
            ax_tput.plot(Bs, [s.throughput for s in lec], "--", color=color, alpha=0.6)
            ax_mem.plot(Bs, [s.memory / 1e9 for s in lec], "--", color=color, alpha=0.6)
    ax_mem.axhline(hw.memory_bytes / 1e9, color="k", ls=":", label=f"{hw.name} capacity")
    for ax, ylabel in ((ax_lat, "decode step latency (ms)"), (ax_tput, "throughput (tokens/s)"),
                       (ax_mem, "weights + KV cache (GB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_tput.set_yscale("log")
    ax_lat.legend(fontsize=7)
    ax_mem.legend(fontsize=7)
    fig.suptitle(title + "  (solid: refined model, dashed: lecture model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
