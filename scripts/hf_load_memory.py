"""Peak host memory of `load_hf_checkpoint` relative to the checkpoint's size.

    python scripts/hf_load_memory.py [--d-model 1024 --layers 8 --d-ff 4096 --vocab 32000 --dtype bfloat16]

Writes a random Llama-shaped sharded bf16 safetensors checkpoint (torch, one tensor at a
time), then loads it in a fresh process and reports the loader's peak RSS growth
(ru_maxrss after - RSS before loading). On a CPU backend the loaded arrays themselves
live in host RAM, so the ideal is ~1x the model plus the largest stacked parameter.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def write_checkpoint(path, D, L, F, V, N=16, K=4):
    import torch
    from safetensors.torch import save_file
    H = D // N
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": D, "num_hidden_layers": L,
           "intermediate_size": F, "vocab_size": V, "num_attention_heads": N, "num_key_value_heads": K,
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    weight_map, total = {}, 0

    def shard(name, tensors):
        nonlocal total
        save_file(tensors, os.path.join(path, name))
        for k, v in tensors.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()

    r = lambda *s: torch.randn(*s, dtype=torch.bfloat16)
    shard("embed.safetensors", {"model.embed_tokens.weight": r(V, D), "lm_head.weight": r(V, D),
                                "model.norm.weight": r(D)})
    for i in range(L):
        p = f"model.layers.{i}."
        shard(f"layer{i}.safetensors", {
            p + "input_layernorm.weight": r(D), p + "post_attention_layernorm.weight": r(D),
            p + "self_attn.q_proj.weight": r(N * H, D), p + "self_attn.k_proj.weight": r(K * H, D),
            p + "self_attn.v_proj.weight": r(K * H, D), p + "self_attn.o_proj.weight": r(D, N * H),
            p + "mlp.gate_proj.weight": r(F, D), p + "mlp.up_proj.weight": r(F, D), p + "mlp.down_proj.weight": r(D, F)})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return total


CHILD = r"""
import resource, sys, os
import jax, numpy as np
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024
import infer
before = rss()
cfg, params = infer.load_hf_checkpoint(sys.argv[1], dtype=sys.argv[2])
jax.block_until_ready(params)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
big = max(x.nbytes for x in jax.tree_util.tree_leaves(params))
print(before, peak, rss(), sum(x.nbytes for x in jax.tree_util.tree_leaves(params)), big)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d-ff", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        size = write_checkpoint(d, a.d_model, a.layers, a.d_ff, a.vocab)
        out = subprocess.run([sys.executable, "-c", CHILD, d, a.dtype], capture_output=True, text=True,
                             env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
        if out.returncode:
            sys.exit(out.stderr)
        before, peak, after, params_bytes, big = map(int, out.stdout.split()[-5:])
    mb = lambda x: f"{x / 2**20:,.0f} MiB"
    print(f"backend {os.environ.get('JAX_PLATFORMS', 'cpu')}; checkpoint {mb(size)} (bf16 on disk), "
          f"loaded as {a.dtype}: {mb(params_bytes)}, largest stacked parameter {mb(big)}")
    print(f"RSS before load {mb(before)}; peak growth during load {mb(peak - before)} "
          f"= {(peak - before) / params_bytes:.2f}x the loaded params; growth kept after load {mb(after - before)}")


if __name__ == "__main__":
    main()
