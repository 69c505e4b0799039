"""Command line: `python -m infer generate ...`, `python -m infer chat ...` (also the `infer` console script).

With random weights (the default) prompts are random token ids; the point is
the metrics. The run is warmed up first so TTFT and latency exclude compilation.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

from infer.cli.chat import add_chat_args, cmd_chat
from infer.cli.metrics import print_metrics
from infer.cli.serve import add_serve_args, cmd_serve
from infer.cli.text import cmd_generate_text
from infer.config.dtypes import DTYPES, KV_CACHE_DTYPES
from infer.model.layout import LAYOUT_HELP, LAYOUTS


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="small", help="model config name in configs/models/ or a YAML path")
    p.add_argument("--batch", type=int, default=4, help="number of prompts (B)")
    p.add_argument("--prompt-len", type=int, default=32, help="longest prompt length; others are shorter")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attention-impl", default=None, help="attention implementation (default auto: Pallas on GPU/TPU, reference on CPU)")
    # Text generation from real weights (infer/text_cli.py).
    p.add_argument("--checkpoint", "--model", dest="checkpoint", default=None,
                   help="checkpoint dir (Hugging Face config.json + *.safetensors, or infer.save_checkpoint), "
                        "a .gguf file, or a model name such as smollm2-135m-instruct")
    p.add_argument("--prompt", default=None, help="text prompt (with --checkpoint): streams the completion")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="with --checkpoint: cast the weights (default: the checkpoint's dtype)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help="with --checkpoint: " + LAYOUT_HELP)
    p.add_argument("--weight-format", default=None,
                   help="store the projections quantized: native (a GGUF file's own Q8_0/Q4_0/Q4_1), int8, "
                        "int4-g32, int4-g64, int4-g128 (round to nearest after loading)")
    p.add_argument("--kv-cache-dtype", default=None, choices=KV_CACHE_DTYPES,
                   help="KV page pool dtype (default: the model's dtype; int8 adds a scale per token and head)")
    # Speculative sampling (infer/generation/speculative.py), random weights only.
    d = p.add_mutually_exclusive_group()
    d.add_argument("--draft-config", default=None, help="speculative: draft model config (random weights, same vocab)")
    d.add_argument("--draft-layers", type=int, default=None, help="speculative: draft = the target's first N layers")
    d.add_argument("--ngram", action="store_true",
                   help="speculative: prompt-lookup proposals from each prompt's own context (no draft model)")
    p.add_argument("--speculative-k", type=int, default=4, help="speculative: draft tokens per target pass")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel devices (random-weights plain generation)")
    p.add_argument("--coordinator", default=None,
                   help="multi-process: coordinator host:port (or INFER_COORDINATOR); with --num-processes and "
                        "--process-id every process runs the same command")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process: processes (INFER_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, default=None, help="multi-process: this process (INFER_PROCESS_ID)")


def cmd_generate(args) -> int:
    speculative = args.draft_config or args.draft_layers or args.ngram
    if (args.checkpoint is not None or args.prompt is not None) and speculative:
        raise ValueError("--draft-config/--draft-layers/--ngram: speculative generation from the CLI uses random "
                         "weights only; drop --checkpoint/--prompt or the speculative option")
    if args.checkpoint is not None or args.prompt is not None:
        return cmd_generate_text(args)
    from infer.parallel.distributed import initialize
    initialize(args.coordinator, args.num_processes, args.process_id)  # before any device is touched
    import infer
    from infer.generation.batch import generate
    from infer.config import SamplingParams
    from infer.parallel.tensor_parallel import make_mesh
    mesh = make_mesh(args.tp)
    if mesh is not None and speculative:
        raise ValueError("--tp: speculative generation is not tensor-parallel yet; drop --tp or the draft option")

    overrides = {"attention_impl": args.attention_impl} if args.attention_impl else {}
    if args.kv_cache_dtype:
        overrides["kv_cache_dtype"] = args.kv_cache_dtype
    cfg = infer.load_config(args.config, **overrides)
    params = infer.init_params(cfg, jax.random.PRNGKey(args.seed))
    if args.weight_format == "native":
        raise ValueError("--weight-format native: keeps a GGUF file's own format; random weights have none "
                         "(use int8, int4-g128, ...)")
    if args.weight_format:
        params, cfg = infer.quantize(params, cfg, args.weight_format)
    rng = np.random.RandomState(args.seed)
    lens = [max(1, args.prompt_len - i * max(1, args.prompt_len // (2 * args.batch))) for i in range(args.batch)]
    prompts = [rng.randint(0, cfg.vocab_size, size=n).tolist() for n in lens]
    sp = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        max_new_tokens=args.max_new_tokens, seed=args.seed)
    print(f"{cfg.name or args.config}: {infer.count_params(params):,} parameters (random), "
          f"prompt lengths {lens}; warming up (compiling)...", flush=True)
    if mesh is not None:
        print(f"tensor-parallel over {mesh.devices.size} devices on {jax.process_count()} process(es) "
              f"(this is process {jax.process_index()})", flush=True)
    run = lambda: generate(params, cfg, prompts, sp, mesh=mesh)
    if args.draft_config is not None or args.draft_layers is not None:
        from infer.generation.speculative import speculative_generate, truncated_draft
        if args.draft_layers is not None:
            dparams, dcfg = truncated_draft(params, cfg, args.draft_layers)
        else:
            dcfg = infer.load_config(args.draft_config, **overrides)
            dparams = infer.init_params(dcfg, jax.random.PRNGKey(args.seed + 1))
        run = lambda: speculative_generate(params, cfg, dparams, dcfg, prompts, sp, args.speculative_k)
    elif args.ngram:
        from infer.generation.ngram import ngram_speculative_generate
        run = lambda: ngram_speculative_generate(params, cfg, prompts, sp, args.speculative_k)
    run()
    result = run()
    for i, toks in enumerate(result.tokens):
        print(f"prompt {i} (len {lens[i]}): {toks[:16]}{' ...' if len(toks) > 16 else ''}")
    print_metrics(result, cfg.name or args.config, args.batch)
    if hasattr(result, "accept_hist"):
        print(f"{'speculative k':<28}{result.k:>14}")
        print(f"{'tokens per target pass':<28}{result.tokens_per_target_pass:>14.3f}")
        print(f"{'P(draft i accepted)':<28}  {[round(a, 3) for a in result.acceptance_rate_by_position]}")
    return 0


def main(argv=None) -> int:
    prog = "infer" if os.path.basename(sys.argv[0]) == "infer" else "python -m infer"  # the console script or -m
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate and print TTFT / latency / throughput")
    _add_generate_args(g)
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="chat with an instruction-tuned model (stdin lines are user turns)")
    add_chat_args(c)
    c.set_defaults(func=cmd_chat)
    s = sub.add_parser("serve", help="the OpenAI-compatible HTTP server (completions, chat, streaming, /metrics)")
    add_serve_args(s)
    s.set_defaults(func=cmd_serve)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
