"""`python -m infer chat --model smollm2-135m-instruct`: an interactive chat in the terminal.

Each line read from stdin is a user turn; the assistant's reply streams to
stdout as it is generated (ChatSession: the model's chat template, stop on
end-of-turn and EOS) and the conversation is kept. Questions can be piped in,
one per line; the chat ends at EOF. The model is any checkpoint with a chat
template: a model name (infer/io/model_names.py), a .gguf file, or a Hugging
Face directory with tokenizer_config.json / chat_template.jinja.
"""
from __future__ import annotations

import argparse
import sys

from infer.model.layout import LAYOUT_HELP, LAYOUTS, for_decode


def add_chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--checkpoint", dest="model", default="smollm2-135m-instruct",
                   help="model name, .gguf file or checkpoint dir (default: smollm2-135m-instruct)")
    p.add_argument("--system", default=None, help="system message (default: the template's own, if any)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply, in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help=LAYOUT_HELP)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (default: float32 for GGUF, the checkpoint's otherwise)")


def cmd_chat(args) -> int:
    from infer.config import SamplingParams
    from infer.generation.chat import ChatSession
    from infer.io.chat_template import load_chat_template
    from infer.io.checkpoint import load_model_dir
    from infer.io.tokenizer import load_tokenizer

    cfg, params = for_decode(*load_model_dir(args.model, dtype=args.dtype), args.layout)
    tok = load_tokenizer(args.model, vocab_size=cfg.vocab_size)
    template = getattr(tok, "chat_template", None) or load_chat_template(args.model)
    sp = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens, seed=args.seed)
    session = ChatSession(params, cfg, tok, sp, system=args.system, template=template)
    interactive = sys.stdin.isatty()
    print(f"{cfg.name}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.dtype}; tokenizer {tok.kind}. "
          f"One message per line; EOF (Ctrl-D) ends.", file=sys.stderr, flush=True)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if not interactive:
            print(f"> {text}", flush=True)
        for piece in session.send(text):
            print(piece, end="", flush=True)
        print(flush=True)
    return 0
