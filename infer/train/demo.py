"""The training example's demo: the 5M model trained here completes Python code, then the numbers.

    python -m infer.train.demo                     # models/target (+ models/draft for speculative decoding)
    python -m infer.train.demo --max-new-tokens 96 --k 4

1. Streams greedy continuations of a few code prompts (infer.generation.text.TextStream:
   prefill + cached decode steps, text printed as tokens arrive).
2. Measures the batched on-device generate loop (warm, compiled): TTFT, latency
   per token, throughput, for batch 1 and for all prompts at once.
3. The same with speculative decoding (draft proposes k tokens, the target
   verifies them in one pass): the draft acceptance rate, and a check that the
   greedy output is identical to plain generation.
"""
from __future__ import annotations

import argparse
import sys

import jax

from infer.generation.batch import generate
from infer.model.params import count_params
from infer.config import SamplingParams
from infer.generation.speculative import speculative_generate
from infer.generation.text import TextStream
from infer.train.shipped import load_model, load_text_tokenizer

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\n\n\ndef list_python_files(root):\n    \"\"\"Return the .py files under root.\"\"\"\n",
    "class Stack:\n    \"\"\"A last-in first-out stack.\"\"\"\n\n    def __init__(self):\n",
    "    def __repr__(self):\n        return ",
]


def stream(params, cfg, tok, prompt: str, max_new: int, out=sys.stdout) -> dict:
    """Greedy text for one prompt, written as it is produced (infer.generation.text.TextStream); returns its metrics."""
    ts = TextStream(params, cfg, tok, prompt, SamplingParams(temperature=0.0, max_new_tokens=max_new), warmup=True)
    for piece in ts:
        out.write(piece)
        out.flush()
    return ts.metrics()


def _row(label, m, extra=""):
    print(f"{label:<34}{m['ttft_s'] * 1e3:>10.1f} ms{m['latency_s_per_token'] * 1e3:>12.2f} ms"
          f"{m['tokens_per_s']:>12.1f} tok/s  {extra}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/target")
    ap.add_argument("--draft", default="models/draft")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4, help="draft tokens per target pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    a = ap.parse_args(argv)

    tok = load_text_tokenizer()
    cfg, params = load_model(a.model)
    dcfg, dparams = load_model(a.draft)
    print(f"target {a.model}: {count_params(params) / 1e6:.2f}M params | draft {a.draft}: "
          f"{count_params(dparams) / 1e6:.2f}M params | backend {jax.default_backend()}")
    prompts = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]

    # 1. Streaming text (TextStream compiles for the prompt's shape bucket before its clock starts).
    print("\n=== streaming greedy completions (target) ===")
    for text in PROMPTS:
        print("-" * 60)
        sys.stdout.write(text)
        m = stream(params, cfg, tok, text, a.max_new_tokens)
        print(f"\n[TTFT {m['ttft_s'] * 1e3:.1f} ms, {m['latency_s_per_token'] * 1e3:.2f} ms/token, "
              f"{m['tokens_per_s']:.1f} tok/s; host loop, one token per step]")

    # 2./3. Batched on-device loops, plain and speculative, warm.
    sp = SamplingParams(temperature=0.0, max_new_tokens=a.max_new_tokens)

    def timed(fn):
        fn()  # compile
        runs = [fn() for _ in range(a.repeats)]
        return sorted(runs, key=lambda r: r.tokens_per_s)[len(runs) // 2]

    print(f"\n=== on-device generate loop, greedy, {a.max_new_tokens} new tokens, median of {a.repeats} ===")
    print(f"{'':<34}{'TTFT':>13}{'latency/token':>15}{'throughput':>18}")
    for batch in (1, len(prompts)):
        ps = prompts[:batch]
        plain = timed(lambda: generate(params, cfg, ps, sp))
        spec = timed(lambda: speculative_generate(params, cfg, dparams, dcfg, ps, sp, k=a.k))
        same = all(x == y for x, y in zip(plain.tokens, spec.tokens))
        _row(f"plain, batch {batch}", plain.metrics())
        _row(f"speculative k={a.k}, batch {batch}", spec.metrics(),
             f"accept {spec.mean_accepted / a.k:.1%}, {spec.tokens_per_target_pass:.2f} tok/pass, "
             f"x{spec.tokens_per_s / plain.tokens_per_s:.2f}, same output: {same}")
        print(f"{'':<34}acceptance by draft position: "
              + ", ".join(f"{r:.2f}" for r in spec.acceptance_rate_by_position))
    return 0


if __name__ == "__main__":
    sys.exit(main())
