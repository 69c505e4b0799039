"""Speculative decoding with the shipped pair: acceptance at temperature 0 and tokens/s against plain generation.

    python -m infer.train.measure_speculative --k 4 --out models/speculative_metrics.json

Prompts are windows of the fixed validation slice (models/val_slice.txt), so the
draft is measured on code neither model trained on. Acceptance = accepted
draft tokens / proposed draft tokens over every verify pass (sum over j of
j * accept_hist[j] / (k * passes)). Timings: warm (compiled) runs,
device-synchronised, median of --repeats, plain and speculative side by side;
the greedy outputs must be identical (speculative decoding is exact).
"""
from __future__ import annotations

import argparse
import platform

import jax
import numpy as np

from infer.generation.batch import generate
from infer.config import SamplingParams
from infer.generation.speculative import speculative_generate
from infer.train.evaluate import val_slice_ids
from infer.train.shipped import TOKENIZER_PATH, load_model, load_tokenizer, report_json


def slice_prompts(tok, n: int, prompt_len: int):
    ids = val_slice_ids(tok)
    stride = (len(ids) - prompt_len) // n
    return [ids[i * stride:i * stride + prompt_len].tolist() for i in range(n)]


def acceptance(spec) -> float:
    h = np.asarray(spec.accept_hist, np.float64)
    return float((h * np.arange(len(h))).sum() / (spec.k * h.sum()))


def measure(tparams, tcfg, dparams, dcfg, prompts, k: int, max_new: int, repeats: int) -> dict:
    sp = SamplingParams(temperature=0.0, max_new_tokens=max_new)

    def med(fn):
        fn()
        runs = [fn() for _ in range(repeats)]
        return sorted(runs, key=lambda r: r.tokens_per_s)[len(runs) // 2]

    plain = med(lambda: generate(tparams, tcfg, prompts, sp))
    spec = med(lambda: speculative_generate(tparams, tcfg, dparams, dcfg, prompts, sp, k=k))
    return {"batch": len(prompts), "k": k, "max_new_tokens": max_new, "acceptance": acceptance(spec),
            "accept_hist": spec.accept_hist, "acceptance_by_position": spec.acceptance_rate_by_position,
            "tokens_per_target_pass": spec.tokens_per_target_pass,
            "plain_tokens_per_s": plain.tokens_per_s, "speculative_tokens_per_s": spec.tokens_per_s,
            "speedup": spec.tokens_per_s / plain.tokens_per_s,
            "plain_latency_ms": plain.latency_s * 1e3, "speculative_latency_ms": spec.latency_s * 1e3,
            "same_output": plain.tokens == spec.tokens}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="models/target")
    ap.add_argument("--draft", default="models/draft")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    tok = load_tokenizer(TOKENIZER_PATH)
    tcfg, tparams = load_model(a.target)
    dcfg, dparams = load_model(a.draft)
    prompts = slice_prompts(tok, a.prompts, a.prompt_len)
    rows = [measure(tparams, tcfg, dparams, dcfg, [p], a.k, a.max_new_tokens, a.repeats) for p in prompts[:2]]
    single = {key: float(np.mean([r[key] for r in rows])) for key in
              ("acceptance", "plain_tokens_per_s", "speculative_tokens_per_s", "speedup")}
    batched = measure(tparams, tcfg, dparams, dcfg, prompts, a.k, a.max_new_tokens, a.repeats)
    out = {"device": f"{jax.default_backend()} ({platform.processor() or platform.machine()})",
           "temperature": 0.0, "batch1_mean_of_2_prompts": single, "batch1_rows": rows, "batched": batched}
    report_json(out, a.out)


if __name__ == "__main__":
    main()
