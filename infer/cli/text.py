"""`python -m infer generate --checkpoint DIR --prompt "..."`: stream a completion of a text prompt.

The generated text (not the prompt) is printed as it is produced (TextStream: host loop over the jitted
decode_step), then the metrics. Compilation happens in a warm-up before the
clock starts. DIR is a Hugging Face checkpoint (config.json + *.safetensors +
tokenizer.json), one written by `infer.save_checkpoint` (tokenizer.json in it or
its parent), a .gguf file (tokenizer from its metadata) or a model name such as
smollm2-135m-instruct. A checkpoint without a tokenizer is refused, never read
with a silent byte-level fallback.
"""
from __future__ import annotations

import os
import sys

from infer.cli.metrics import print_metrics


def cmd_generate_text(args) -> int:
    from infer.io.checkpoint import load_model_dir
    from infer.config import SamplingParams
    from infer.generation.text import TextStream
    from infer.io.tokenizer import load_tokenizer
    from infer.model.layout import for_decode

    if not args.checkpoint or args.prompt is None:
        raise ValueError("--checkpoint and --prompt go together: a text prompt needs a checkpoint's weights "
                         "and tokenizer")
    overrides = {"attention_impl": args.attention_impl} if args.attention_impl else {}
    if getattr(args, "kv_cache_dtype", None):
        overrides["kv_cache_dtype"] = args.kv_cache_dtype
    cfg, params = load_model_dir(args.checkpoint, dtype=getattr(args, "dtype", None),
                                 weight_format=getattr(args, "weight_format", None))
    if overrides:
        cfg = cfg.replace(**overrides)
    cfg, params = for_decode(cfg, params, getattr(args, "layout", "auto"))
    tok = load_tokenizer(args.checkpoint, vocab_size=cfg.vocab_size)
    sp = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        max_new_tokens=args.max_new_tokens, seed=args.seed)
    name = os.path.basename(os.path.normpath(args.checkpoint))
    print(f"{name}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.dtype}; tokenizer {tok.kind}; "
          f"warming up (compiling)...", file=sys.stderr, flush=True)
    stream = TextStream(params, cfg, tok, args.prompt, sp, warmup=True)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    print_metrics(stream, name, 1)
    return 0
