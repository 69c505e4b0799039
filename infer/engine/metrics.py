"""Latency percentiles over finished requests (the lecture's TTFT, latency and throughput, per request).

    summarize(metrics) -> {"requests", "output_tokens", "prompt_tokens", "duration_s", "throughput_tok_s",
                           "queue_s" | "ttft_s" | "tpot_s" | "itl_s" | "e2e_s": {"p50", "p90", "p99", "mean"}}

queue: arrival to first scheduled; TTFT: arrival to first token back on the host; TPOT: mean
gap between a request's later tokens; ITL: every gap between consecutive token steps, pooled
over requests; e2e: arrival to last token. Throughput: output tokens over the span from the
first arrival to the last finish.
"""
from typing import Dict, Iterable, List

import numpy as np

from infer.engine.request import RequestMetrics

PERCENTILES = (50, 90, 99)


def percentiles(values: Iterable[float]) -> Dict[str, float]:
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return {f"p{q}": float("nan") for q in PERCENTILES} | {"mean": float("nan")}
    return {f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES} | {"mean": float(v.mean())}


def summarize(metrics: List[RequestMetrics]) -> dict:
    done = [m for m in metrics if m.finished is not None]
    out_tok = sum(m.num_output_tokens for m in done)
    span = (max(m.finished for m in done) - min(m.arrival for m in done)) if done else 0.0
    return {
        "requests": len(done),
        "output_tokens": out_tok,
        "prompt_tokens": sum(m.num_prompt_tokens for m in done),
        "duration_s": span,
        "throughput_tok_s": out_tok / span if span > 0 else float("nan"),
        "queue_s": percentiles(m.queue_s for m in done),
        "ttft_s": percentiles(m.ttft_s for m in done),
        "tpot_s": percentiles(m.tpot_s for m in done),
        "itl_s": percentiles(x for m in done for x in m.itl_s),
        "e2e_s": percentiles(m.e2e_s for m in done),
    }
