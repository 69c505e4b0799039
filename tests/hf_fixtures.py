"""Tiny random-weight Hugging Face checkpoints built with `transformers` (test-only dependency).

Every parameter is re-drawn at a scale where it matters (norm weights around 1,
biases and q/k norms far from their zero/one init, embeddings N(0, 1)), so a
dropped bias, an untied head or a wrong transpose changes the logits visibly.
"""
import os

import torch

V = 256  # vocab: every byte is a token (the byte-level tokenizer fallback fits)
D, F, L = 64, 128, 2


def _common(**kw):
    base = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1,
                eos_token_id=2, tie_word_embeddings=False)
    base.update(kw)
    return base


# name -> (transformers config class name, model class name, config kwargs)
ARCHS = {
    # Llama 3 rope scaling with a small original context so it changes positions < 512; GQA (N=4, K=2).
    "llama3_rope_gqa": ("LlamaConfig", "LlamaForCausalLM", _common(
        rope_theta=50000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    # MHA (K = N), tied embeddings, linear rope scaling.
    "llama_mha_tied_linear": ("LlamaConfig", "LlamaForCausalLM", _common(
        num_key_value_heads=4, tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    # Mistral with a window much smaller than the prompt.
    "mistral_window": ("MistralConfig", "MistralForCausalLM", _common(sliding_window=24, rope_theta=1e6)),
    # Qwen2: q/k/v biases, MQA (K = 1), tied embeddings (as Qwen2.5-0.5B).
    "qwen2_bias_mqa_tied": ("Qwen2Config", "Qwen2ForCausalLM", _common(
        num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6, use_sliding_window=False)),
    # Qwen3: q/k RMSNorm, explicit head_dim (32 != hidden / heads = 16).
    "qwen3_qknorm_headdim": ("Qwen3Config", "Qwen3ForCausalLM", _common(head_dim=32, rope_theta=1e6)),
}


# Mixture-of-experts architectures (tests/test_moe.py): every routing choice matters at these scales (router
# logits of order 1, experts' outputs of the same order as the dense MLP's).
MOE_ARCHS = {
    # Qwen3-MoE as released: every layer MoE, top-k renormalised, q/k norms, explicit head_dim.
    "qwen3_moe_norm": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", _common(
        head_dim=32, rope_theta=1e6, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=48,
        norm_topk_prob=True)),
    # Dense and MoE layers mixed (layer 1 in mlp_only_layers), top-3 of 6 without renormalisation.
    "qwen3_moe_mixed": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", _common(
        num_hidden_layers=3, num_experts=6, num_experts_per_tok=3, moe_intermediate_size=40, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[1])),
    # Mixtral: every layer MoE (top-2 of 4, always renormalised), a window smaller than the prompt.
    "mixtral_window": ("MixtralConfig", "MixtralForCausalLM", _common(
        num_local_experts=4, num_experts_per_tok=2, sliding_window=48, rope_theta=1e6)),
}


def randomize_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * r)
            elif name.endswith(".bias"):
                p.copy_(0.5 * r)
            elif "embed_tokens" in name:
                p.copy_(r)
            else:
                p.copy_(r * p.shape[-1] ** -0.5)


def build_model(arch: str, seed: int = 0, **overrides):
    import transformers
    cfg_cls, model_cls, kw = ARCHS[arch] if arch in ARCHS else MOE_ARCHS[arch]
    kw = dict(kw, **overrides)
    cfg = getattr(transformers, cfg_cls)(**kw)
    model = getattr(transformers, model_cls)._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    randomize_(model, seed)
    return model.eval()


def save(model, path: str, max_shard_size=None, dtype=None) -> str:
    os.makedirs(path, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **kw)
    return path


def prefill_then_decode_logits(model, params, cfg, ids, prefill_len: int):
    """Last-token logits after prefilling ids[:, :prefill_len] and after each later token decoded one at a time,
    from transformers' own cache and from ours: (theirs, ours), two lists of [1, V] arrays."""
    import infer
    import numpy as np
    steps = ids.shape[1] - prefill_len
    with torch.no_grad():
        out = model(torch.from_numpy(ids[:, :prefill_len]), use_cache=True)
        theirs = [out.logits[:, -1].numpy()]
        past = out.past_key_values
        for t in range(prefill_len, prefill_len + steps - 1):
            out = model(torch.from_numpy(ids[:, t:t + 1]), past_key_values=past, use_cache=True)
            theirs.append(out.logits[:, -1].numpy())
            past = out.past_key_values
    cache = infer.init_cache(cfg, 1, 512)
    logits, cache = infer.prefill(params, cfg, ids[:, :prefill_len].astype(np.int32), np.array([prefill_len]), cache)
    ours = [np.asarray(logits)]
    for t in range(prefill_len, prefill_len + steps - 1):
        logits, cache = infer.decode_step(params, cfg, ids[:, t].astype(np.int32), cache)
        ours.append(np.asarray(logits))
    assert int(cache["lengths"][0]) == prefill_len + steps - 1
    return theirs, ours


def assert_cached_decode_matches(model, params, cfg, ids, prefill_len: int, atol: float):
    """prefill_then_decode_logits past position 256, every step within atol of transformers' cached logits."""
    import numpy as np
    ref, ours = prefill_then_decode_logits(model, params, cfg, ids, prefill_len)
    assert ids.shape[1] - 1 > 256
    for step, (o, r) in enumerate(zip(ours, ref)):
        err = np.abs(o - r).max()
        assert err <= atol, f"position {prefill_len - 1 + step}: max |diff| {err:.3g}"
