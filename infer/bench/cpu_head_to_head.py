"""This stack vs llama.cpp on SmolLM2-135M, float32, in alternating rounds (a noisy machine's fairest comparison).

    python -m infer.bench.cpu_head_to_head --out results/cpu-chat --rounds 7

cpu_chat_bench runs each engine's repeats back to back; on a shared 2-core VM the machine's speed
drifts over minutes (llama.cpp's F32 step measured 11-29 ms across one afternoon), so engines
measured minutes apart are not comparable. Here every round runs each engine once on the same
prompts (this stack in each `--layouts`, llama.cpp on each `--llama-cpp` file in a child process
loaded once), so drift hits all of them alike; reported: median ms/step per engine, and per round
the ratio llama.cpp / this stack (> 1: this stack is faster), its median and range.
Needs llama-cpp-python (`pip install llama-cpp-python diskcache`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax

from infer.bench.cpu_chat_bench import (MODEL, cpu_name, llama_cpp_file, llama_cpp_kinds, llama_cpp_version,
                                        load_ours, text_prompts)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/cpu-chat")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--layouts", default="unrolled,stacked")
    ap.add_argument("--llama-cpp", type=llama_cpp_kinds, default="f32",
                    help="comma list of llama.cpp files: f32, f16, q4_1")
    args = ap.parse_args(argv)
    if llama_cpp_version() == "not installed":
        raise SystemExit("llama-cpp-python is not installed: `pip install llama-cpp-python diskcache` (builds "
                         "llama.cpp from source, ~10 min on 2 cores)")
    import infer
    from infer.bench.llama_cpp_runner import LlamaCppProcess
    t_start = time.perf_counter()
    layouts = args.layouts.split(",")
    kinds = args.llama_cpp
    files = {kind: llama_cpp_file(kind, args.out) for kind in kinds}
    sp = infer.SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    warm = infer.SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens // 2 + 1)
    rows = []
    for B in [int(b) for b in args.batches.split(",")]:
        prompts = text_prompts(B, args.prompt_len)
        engines = {}
        for lay in layouts:
            cfg, params = load_ours("float32", lay)
            infer.generate(params, cfg, prompts, warm)

            def ours(cfg=cfg, params=params):
                r = infer.generate(params, cfg, prompts, sp)
                return r.decode_s / r.decode_steps * 1e3, r.tokens
            engines[f"this stack [{lay}]"] = ours
        children = []
        for kind in kinds:
            child = LlamaCppProcess(files[kind], B, args.prompt_len + args.new_tokens + 1)
            children.append(child)
            child.generate(prompts, args.new_tokens // 2)

            def llama(child=child):
                toks, _, ms = child.generate(prompts, args.new_tokens)
                return ms, toks
            engines[f"llama.cpp {kind.upper()}"] = llama
        samples = {name: [] for name in engines}
        tokens = {}
        for r in range(args.rounds):
            for name, fn in engines.items():
                ms, tokens[name] = fn()
                samples[name].append(ms)
            print(f"[head_to_head] batch {B} round {r + 1}/{args.rounds}: "
                  + ", ".join(f"{n} {s[-1]:.1f}" for n, s in samples.items()), file=sys.stderr, flush=True)
        for child in children:
            child.close()
        base = f"this stack [{layouts[0]}]"
        for name, s in samples.items():
            ratios = [a / b for a, b in zip(s, samples[base])]
            rows.append(dict(engine=name, batch=B, ms_step=statistics.median(s), ms_min=min(s), ms_max=max(s),
                             tok_s=B * 1e3 / statistics.median(s), ratio_median=statistics.median(ratios),
                             ratio_min=min(ratios), ratio_max=max(ratios), samples_ms=s,
                             same_tokens_as_base=tokens[name] == tokens[base]))
    env = {"cpu": cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__, "llama_cpp": llama_cpp_version(),
           "model": MODEL, "rounds": args.rounds, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
           "command": "python -m infer.bench.cpu_head_to_head " + " ".join(argv if argv is not None else sys.argv[1:]),
           "total_s": time.perf_counter() - t_start}
    md = (f"{env['cpu']}, {env['cores']} cores; JAX {env['jax']}, llama-cpp-python {env['llama_cpp']}; float32 "
          f"weights (llama.cpp: the file kinds named); {args.prompt_len}-token prompts, {args.new_tokens} new tokens, "
          f"greedy; {args.rounds} alternating rounds. ratio = that engine's ms/step / this stack [{layouts[0]}]'s "
          f"in the same round (> 1: this stack [{layouts[0]}] is faster).\n\n"
          "| engine | batch | decode tok/s | ms/step (median) | min / max ms | ratio (median) | ratio min / max "
          "| same tokens |\n|---|---|---|---|---|---|---|---|\n"
          + "".join(f"| {r['engine']} | {r['batch']} | {r['tok_s']:.1f} | {r['ms_step']:.1f} | {r['ms_min']:.1f} / "
                    f"{r['ms_max']:.1f} | {r['ratio_median']:.2f} | {r['ratio_min']:.2f} / {r['ratio_max']:.2f} | "
                    f"{r['same_tokens_as_base']} |\n" for r in rows))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "head_to_head.json"), "w") as f:
        json.dump({"env": env, "results": rows}, f, indent=1)
    with open(os.path.join(args.out, "head_to_head.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"[head_to_head] total {env['total_s']:.0f} s", file=sys.stderr)
    return {"env": env, "results": rows}


if __name__ == "__main__":
    main()
