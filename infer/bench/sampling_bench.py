"""What top-k / top-p sampling costs: the sort-free filters against their sorting reference, and in the decode loop.

    python -m infer.bench.sampling_bench                         # V = 49152 (SmolLM2) and 128256 (Llama 3)
    python -m infer.bench.sampling_bench --vocab 49152 --batches 1,8,64 --model smollm2-135m

1. Filters alone, side by side in one process: `infer.sampling.filters.sorted_keep` (two stable argsorts of
   [B, V], the documented rule written directly) and `threshold_keep` (what `filter_logits` runs: thresholds
   found bit by bit, O(32 B V)), jitted at [B, V] with per-row top_k / top_p, warm, blocked, median of
   --repeats; "equal" counts the rows whose kept sets agree (random normal logits x 3).
2. In the decode loop: `infer.generate` on --model's shapes (random weights), 64-token prompts, --new-tokens
   greedy, at temperature 1 with no filter, with top_p 0.95 and with top_k 40; decode ms per step (the loop's
   time over its steps, TTFT excluded) and tokens/s. Skipped with --model "". With --vocab "" only this part
   runs, which also works on a checkout from before the filters existed (how BENCHMARKS.md's "before" rows
   were measured: this file copied into a worktree of the older commit).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import List

import jax
import jax.numpy as jnp
import numpy as np

from infer.bench.cpu_chat_bench import int_list
from infer.config import DTYPES
from infer.bench.timing import time_fn

LOOP_SETTINGS = (("greedy", dict(temperature=0.0)), ("temperature 1", dict(temperature=1.0)),
                 ("top_p 0.95", dict(temperature=1.0, top_p=0.95)), ("top_k 40", dict(temperature=1.0, top_k=40)))


def filter_rows(V: int, batches: List[int], repeats: int, seed: int = 0) -> List[dict]:
    """Median ms of each filter implementation at [B, V] (top_k and top_p per row, both active)."""
    from infer.sampling.filters import sorted_keep, threshold_keep
    rows = []
    for B in batches:
        rng = np.random.default_rng(seed)
        x = jnp.asarray(rng.standard_normal((B, V)) * 3, jnp.float32)
        samp = {"top_k": jnp.asarray(rng.choice([0, 40, 1000], B), jnp.int32),
                "top_p": jnp.asarray(rng.choice([0.9, 0.95, 1.0], B), jnp.float32)}
        fns = {"sorted_keep": jax.jit(sorted_keep), "threshold_keep": jax.jit(threshold_keep)}
        ms = {name: time_fn(lambda f=f: f(x, samp), warmup=1, repeats=repeats).median_s * 1e3
              for name, f in fns.items()}
        equal = int(np.sum(np.all(np.asarray(fns["sorted_keep"](x, samp)) == np.asarray(fns["threshold_keep"](x, samp)),
                                  axis=-1)))
        rows.append({"V": V, "B": B, "sorted_ms": ms["sorted_keep"], "threshold_ms": ms["threshold_keep"],
                     "speedup": ms["sorted_keep"] / ms["threshold_keep"], "equal_rows": equal})
        print(f"[sampling_bench] V={V} B={B}: sorted {ms['sorted_keep']:.2f} ms, threshold "
              f"{ms['threshold_keep']:.2f} ms", file=sys.stderr, flush=True)
    return rows


def loop_rows(model: str, batches: List[int], new_tokens: int, repeats: int, prompt_len: int = 64,
              dtype: str = "float32") -> List[dict]:
    """Decode ms/step of `infer.generate` per sampling setting (random weights of configs/models/<model>)."""
    from infer.config import SamplingParams, load_config
    from infer.generation.batch import generate
    from infer.model.layout import for_decode
    from infer.model.params import init_params
    cfg = load_config(model, dtype=dtype)
    cfg, params = for_decode(cfg, init_params(cfg, jax.random.PRNGKey(0)))
    rows = []
    for B in batches:
        prompts = np.random.default_rng(B).integers(0, cfg.vocab_size, (B, prompt_len)).tolist()
        for name, kw in LOOP_SETTINGS:
            sp = SamplingParams(max_new_tokens=new_tokens, **kw)
            generate(params, cfg, prompts, sp)  # compile + warm up
            samples = []
            for _ in range(repeats):
                r = generate(params, cfg, prompts, sp)
                samples.append(r.latency_s)
            ms = float(np.median(samples)) * 1e3
            rows.append({"model": model, "dtype": dtype, "B": B, "setting": name, "ms_step": ms, "tok_s": B / ms * 1e3})
            print(f"[sampling_bench] {model} B={B} {name}: {ms:.2f} ms/step", file=sys.stderr, flush=True)
    return rows


def render(filters: List[dict], loop: List[dict]) -> str:
    lines = [f"Sampling filters on `{jax.devices()[0].platform}` ({jax.devices()[0].device_kind}), JAX {jax.__version__}."]
    if filters:
        lines += ["", "| V | B | sorted_keep ms | threshold_keep ms | speed-up | rows with equal kept sets |",
                  "|---|---|---|---|---|---|"]
    lines += [f"| {r['V']} | {r['B']} | {r['sorted_ms']:.2f} | {r['threshold_ms']:.2f} | {r['speedup']:.1f}x | "
              f"{r['equal_rows']}/{r['B']} |" for r in filters]
    if loop:
        lines += ["", "| model | dtype | B | sampling | decode ms/step | tok/s | x greedy's step |",
                  "|---|---|---|---|---|---|---|"]
        greedy = {r["B"]: r["ms_step"] for r in loop if r["setting"] == "greedy"}
        lines += [f"| {r['model']} | {r['dtype']} | {r['B']} | {r['setting']} | {r['ms_step']:.2f} | {r['tok_s']:.1f} | "
                  f"{r['ms_step'] / greedy[r['B']]:.2f} |" for r in loop]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m infer.bench.sampling_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=functools.partial(int_list, allow_empty=True), default="49152,128256",
                    help='V values for the filter table ("": none)')
    ap.add_argument("--batches", type=int_list, default="1,8,64")
    ap.add_argument("--model", default="smollm2-135m", help='configs/models name for the decode-loop rows ("": none)')
    ap.add_argument("--loop-batches", type=int_list, default="1,8")
    ap.add_argument("--dtype", choices=DTYPES, default="float32",
                    help="the decode loop's dtype (float32: the CPU default)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results/sampling")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    filters = [r for V in args.vocab for r in filter_rows(V, args.batches, args.repeats)]
    loop = loop_rows(args.model, args.loop_batches, args.new_tokens, args.repeats, dtype=args.dtype) \
        if args.model else []
    md = render(filters, loop)
    os.makedirs(args.out, exist_ok=True)
    summary = {"device": str(jax.devices()[0]), "jax": jax.__version__, "seconds": time.perf_counter() - t0,
               "command": "python -m infer.bench.sampling_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
               "filters": filters, "loop": loop}
    with open(os.path.join(args.out, "sampling_bench.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "sampling_bench.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(md)
    print(f"[sampling_bench] done in {summary['seconds']:.0f} s: " + "; ".join(
        f"V={r['V']} B={r['B']} x{r['speedup']:.1f}" for r in filters) + (
        f"; top_p 0.95 step x{loop[2]['ms_step'] / loop[0]['ms_step']:.2f} greedy's at B={loop[0]['B']}" if loop else ""),
        flush=True)
    return summary


if __name__ == "__main__":
    main()
