"""Structured outputs' cost: SmolLM2-135M-Instruct engine tokens/s with a JSON schema vs unconstrained.

    python -m infer.bench.constrained_bench [--batches 1,16] [--max-new 64] [--rounds 3]

Each batch size runs the same B prompts (temperature 0) through one Engine twice per round, unconstrained and
with a JSON schema that cannot finish before max_new tokens (an array of at least 64 integers), in alternating
order (a load change on the shared machine hits both). The unconstrained requests ignore EOS (the engine's
tokenizer is swapped for a copy without EOS ids while they are added), so both settings emit B * max_new tokens. Both are warmed up first (compiles are not timed). The
table: median decode tokens/s per setting, the slowdown, and the host's mask fill per step (llguidance, inside
the step's input building: `Engine.counters["grammar_mask_s"]`).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

SCHEMA = {"type": "object", "properties": {"values": {"type": "array", "items": {
    "type": "integer", "minimum": 0, "maximum": 999}, "minItems": 64}}, "required": ["values"],
    "additionalProperties": False}
PROMPT = "Here is a JSON object with a long list of numbers: "


def run_once(engine, B, sp, tokenizer):
    """(output tokens / s, steps, mask fill seconds) of B requests added at once, run to completion."""
    c0 = dict(engine.counters)
    t = time.perf_counter()
    engine.tokenizer = tokenizer
    ids = [engine.add_request(PROMPT, sp) for _ in range(B)]
    got = engine.run_to_completion()
    dt = time.perf_counter() - t
    tokens = sum(len(got[i].token_ids) for i in ids)
    steps = engine.counters["steps"] - c0.get("steps", 0)
    fill = engine.counters["grammar_mask_s"] - c0.get("grammar_mask_s", 0)
    return tokens / dt, steps, fill


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args(argv)
    import jax

    import infer
    from infer.config import Constraint, SamplingParams
    cfg, params = infer.load_model_dir(args.model)
    tok = infer.load_tokenizer(args.model, vocab_size=cfg.vocab_size)
    no_eos = copy.copy(tok)
    no_eos.eos_ids = ()
    batches = [int(b) for b in args.batches.split(",")]
    eng = infer.Engine(params, cfg, tokenizer=tok, max_num_seqs=max(batches), max_num_batched_tokens=256,
                       max_model_len=512, enable_prefix_caching=False)
    plain = SamplingParams(temperature=0.0, max_new_tokens=args.max_new)
    constrained = SamplingParams(temperature=0.0, max_new_tokens=args.max_new,
                                 constraint=Constraint.json_schema(SCHEMA))
    print(f"device: {jax.devices()[0].device_kind}, {args.model}, max_new={args.max_new}, rounds={args.rounds}")
    print("| batch | unconstrained tok/s | JSON schema tok/s | slowdown | mask fill ms/step |")
    print("|---|---|---|---|---|")
    for B in batches:
        toks = {"plain": no_eos, "json": tok}
        for name, sp in (("plain", plain), ("json", constrained)):  # warm-up: every shape visited compiles here
            run_once(eng, B, sp, toks[name])
        got = {"plain": [], "json": [], "fill": []}
        for r in range(args.rounds):
            order = [("plain", plain), ("json", constrained)]
            for name, sp in (order if r % 2 == 0 else order[::-1]):
                tps, steps, fill = run_once(eng, B, sp, toks[name])
                got[name].append(tps)
                if name == "json":
                    got["fill"].append(1e3 * fill / max(steps, 1))
        p, j = statistics.median(got["plain"]), statistics.median(got["json"])
        print(f"| {B} | {p:.1f} | {j:.1f} | {100 * (1 - j / p):+.1f}% | {statistics.median(got['fill']):.3f} |",
              flush=True)
    print("\n| batch | mask + argmax, all ones (ms) | one row constrained (ms) |\n|---|---|---|")
    for B in batches:
        a, b = device_mask_cost(B, cfg.vocab_size)
        print(f"| {B} | {a:.3f} | {b:.3f} |", flush=True)


def device_mask_cost(B: int, V: int, repeats: int = 50) -> tuple:
    """Median ms of the step's mask + greedy draw on [B, V] logits: every row all ones (the lax.cond skips the
    unpacking) vs one row constrained (the unpacking and the where run), interleaved."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from infer.sampling.filters import greedy_tokens
    from infer.sampling.token_mask import apply_token_bitmask
    fn = jax.jit(lambda l, m: greedy_tokens(apply_token_bitmask(l, m)))
    logits = jax.random.normal(jax.random.PRNGKey(0), (B, V))
    ones = np.full((B, -(-V // 32)), -1, np.int32)
    some = ones.copy()
    some[0, 1:] = 0
    masks = {"ones": jnp.asarray(ones), "one_row": jnp.asarray(some)}
    times = {k: [] for k in masks}
    for k, m in masks.items():
        fn(logits, m).block_until_ready()
    for _ in range(repeats):
        for k, m in masks.items():
            t = time.perf_counter()
            fn(logits, m).block_until_ready()
            times[k].append(1e3 * (time.perf_counter() - t))
    return statistics.median(times["ones"]), statistics.median(times["one_row"])


if __name__ == "__main__":
    main()
