"""Does the serving engine gain from the unrolled parameter layout? (BENCHMARKS.md, "Where a decode step's time goes")

    python scripts/engine_layout_probe.py [--requests 8] [--prompt-len 64] [--new-tokens 128] [--rounds 2]

SmolLM2-135M-Instruct in float32 through `infer.LLM` (continuous batching, max_num_seqs = --requests)
in the stacked and the unrolled layout (infer/model/layout.py), one process: the first batch of each
(compiling every step shape the engine meets) is timed as "first batch", then --rounds batches of
fresh random prompts (greedy, no stop token) alternate between the layouts; reported: seconds and
generated tokens/s, median over rounds, and whether both layouts generated the same tokens.
"""
import argparse
import statistics
import time

import numpy as np

import infer
from infer.config import SamplingParams

MODEL = "smollm2-135m-instruct"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    loaded = infer.load_model_dir(MODEL, dtype="float32")
    tok = infer.load_tokenizer(MODEL, vocab_size=loaded[0].vocab_size)
    rng = np.random.RandomState(0)
    batch = lambda: [rng.randint(100, 40000, args.prompt_len).tolist() for _ in range(args.requests)]
    sp = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    llms, first, tokens = {}, {}, {}
    for layout in ("stacked", "unrolled"):
        cfg, params = infer.for_decode(*loaded, layout)
        llms[layout] = infer.LLM.from_params(params, cfg, tokenizer=tok, max_num_seqs=args.requests)
        t0 = time.perf_counter()
        llms[layout].generate(batch(), sp, use_tqdm=False)
        first[layout] = time.perf_counter() - t0
    times = {k: [] for k in llms}
    for _ in range(args.rounds):
        prompts = batch()
        for layout, llm in llms.items():
            t0 = time.perf_counter()
            outs = llm.generate(prompts, sp, use_tqdm=False)
            times[layout].append(time.perf_counter() - t0)
            tokens[layout] = [o.token_ids for o in outs]
    n = sum(len(t) for t in tokens["stacked"])
    print(f"{args.requests} requests x {args.prompt_len}-token prompts, {args.new_tokens} new tokens, float32, "
          f"median of {args.rounds} alternating rounds")
    print("| layout | first batch s (compiles) | batch s | generated tok/s |\n|---|---|---|---|")
    for layout in llms:
        s = statistics.median(times[layout])
        print(f"| {layout} | {first[layout]:.1f} | {s:.2f} | {n / s:.1f} |")
    print("same tokens in both layouts:", tokens["stacked"] == tokens["unrolled"])


if __name__ == "__main__":
    main()
