"""Prompt-lookup (n-gram) speculative decoding vs plain `generate` with the shipped target, greedy.

    .venv/bin/python scripts/ngram_bench.py --k 2 4 --batch 1 8 --max-new-tokens 128

Prompts are windows of the fixed validation slice (models/val_slice.txt, Python source the
model did not train on), as in infer/train/measure_speculative.py. Batch 1 is reported per
prompt for the first two windows, batch 8 over the first eight. Per setting: acceptance
(accepted / proposed tokens over all verify passes), accept_hist, tokens per target pass,
tokens/s of both (warm: one untimed run each first, then the median of --repeats by tokens/s,
the two interleaved) and
their ratio, and whether the greedy outputs are identical (they must be: the method is exact).
"""
from __future__ import annotations

import argparse
import platform

import jax

from infer.config import SamplingParams
from infer.generation.batch import generate
from infer.generation.ngram import ngram_speculative_generate
from infer.train.measure_speculative import acceptance, slice_prompts
from infer.train.shipped import TOKENIZER_PATH, load_model, load_tokenizer, report_json


def paired_median_runs(fa, fb, repeats: int):
    """Median run (by tokens/s) of each of two generators, warmed up, their runs interleaved so that
    load from other processes on a shared machine hits both alike."""
    fa(), fb()
    runs = [(fa(), fb()) for _ in range(repeats)]
    return tuple(sorted(col, key=lambda r: r.tokens_per_s)[len(col) // 2] for col in zip(*runs))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="models/target")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--min-ngram", type=int, default=1)
    ap.add_argument("--max-ngram", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cfg, params = load_model(a.target)
    prompts = slice_prompts(load_tokenizer(TOKENIZER_PATH), max(8, max(a.batch)), a.prompt_len)
    sp = SamplingParams(temperature=0.0, max_new_tokens=a.max_new_tokens)
    rows = []
    for batch in a.batch:
        groups = [prompts[i:i + 1] for i in range(2)] if batch == 1 else [prompts[:batch]]
        for g, group in enumerate(groups):
            for k in a.k:
                plain, spec = paired_median_runs(
                    lambda: generate(params, cfg, group, sp),
                    lambda: ngram_speculative_generate(params, cfg, group, sp, k, min_ngram=a.min_ngram,
                                                       max_ngram=a.max_ngram), a.repeats)
                row = {"batch": batch, "prompt_group": g, "k": k, "acceptance": acceptance(spec),
                       "accept_hist": spec.accept_hist, "tokens_per_target_pass": spec.tokens_per_target_pass,
                       "plain_tokens_per_s": plain.tokens_per_s, "ngram_tokens_per_s": spec.tokens_per_s,
                       "speedup": spec.tokens_per_s / plain.tokens_per_s, "same_output": plain.tokens == spec.tokens}
                print(row, flush=True)
                rows.append(row)
    report_json({"device": f"{jax.default_backend()} ({platform.processor() or platform.machine()})",
                 "target": a.target, "temperature": 0.0, "prompt_len": a.prompt_len,
                 "max_new_tokens": a.max_new_tokens, "ngram": [a.min_ngram, a.max_ngram], "rows": rows}, a.out)


if __name__ == "__main__":
    main()
