"""Mixture-of-experts MLPs (layers/moe.py) and Hugging Face Qwen3-MoE / Mixtral checkpoints, end to end.

The references are independent of our code: a numpy loop over experts for the grouped (ragged_dot) layer, and
transformers itself for every model (tiny random-weight checkpoints written here with save_pretrained, float32,
eager attention): a full forward over 300 tokens, prefill + decode through the page cache past position 256,
greedy generation, and a routing tie. The roofline's MoE terms (total vs active parameters, the experts a step
reads). The engine serving MoE models: tests/test_moe_engine.py.
"""
import functools
import json
import shutil
import tempfile

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from conftest import make_cfg

import hf_fixtures as hf
import infer
from infer.config.model_config import ConfigError
from infer.generation.batch import generate
from infer.io.hf_config import HFConfigError, hf_to_model_config
from layers.moe import MoE

ATOL = 1e-4
PROMPT_LEN, PREFILL_LEN, DECODE_STEPS = 300, 254, 5  # decode reaches position 258


def _tokens(n, seed):
    return np.random.RandomState(seed).randint(0, hf.V, size=(1, n)).astype(np.int64)


# The layer against a loop over experts -----------------------------------------------------------------------

def _numpy_moe(x_TD, p, k, norm):
    """Each token: softmax over E in float64, its k largest, optionally renormalised, sum of weight * SwiGLU."""
    logits = x_TD.astype(np.float64) @ p["router"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(x_TD, dtype=np.float64)
    for t in range(x_TD.shape[0]):
        top = np.argsort(-probs[t], kind="stable")[:k]
        w = probs[t, top] / (probs[t, top].sum() if norm else 1.0)
        for e, we in zip(top, w):
            g, u = x_TD[t] @ p["gate"][e], x_TD[t] @ p["up"][e]
            out[t] += we * ((g / (1 + np.exp(-g))) * u) @ p["down"][e]
    return out


@pytest.mark.parametrize("T,E,k,norm", [(37, 5, 2, True), (3, 8, 3, False), (1, 8, 2, True)])
def test_moe_equals_a_loop_over_experts(T, E, k, norm):
    """Random inputs, including experts no token picks (2 x 3 tokens, 8 experts: empty groups). 2 x 37 and 2 x 3
    tokens run the ragged_dot path, 2 x 1 tokens (4 assignments < 8 experts) the gathered decode path."""
    D, F = 16, 24
    layer = MoE(D, F, E, k, norm, np.float32)
    x = np.random.RandomState(T).randn(2, T, D).astype(np.float32)  # [B, T, D]: the layer flattens B·T
    params = nn.meta.unbox(jax.jit(layer.init)(jax.random.PRNGKey(E), x)["params"])
    params = jax.tree_util.tree_map(lambda a: a * 3.0, params)  # router logits of order 1: routing varies
    ours = np.asarray(jax.jit(layer.apply)({"params": params}, x)).reshape(-1, D)
    ref = _numpy_moe(x.reshape(-1, D), {n: np.asarray(v, np.float64) for n, v in params.items()}, k, norm)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-5)
    assert np.abs(ref).max() > 0.5


def test_decode_path_flops_follow_the_picked_experts():
    """Compiled cost on this CPU, one token, 64 experts, top-2: the MoE layer's FLOPs are the 2 picked experts'
    (the gathered path), where XLA:CPU's ragged_dot computes every expert (why decode does not use it)."""
    from layers.moe import experts_swiglu, grouped_swiglu
    E, D, F, k = 64, 32, 16, 2
    args = (jax.ShapeDtypeStruct((1, D), np.float32), jax.ShapeDtypeStruct((1, k), np.float32),
            jax.ShapeDtypeStruct((1, k), np.int32), jax.ShapeDtypeStruct((E, D, F), np.float32),
            jax.ShapeDtypeStruct((E, D, F), np.float32), jax.ShapeDtypeStruct((E, F, D), np.float32))

    def flops(fn):
        cost = jax.jit(lambda *a: fn(*a, np.float32)).lower(*args).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]
    picked = 2 * 3 * k * D * F  # gate, up, down of k experts
    assert picked <= flops(experts_swiglu) < 1.2 * picked
    assert flops(grouped_swiglu) > E / k / 2 * picked


# Hugging Face checkpoints ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _checkpoint(name):
    """(name, transformers model, cfg, params): the model saved with save_pretrained and loaded by our loader."""
    model = hf.build_model(name, seed=len(name))
    path = hf.save(model, tempfile.mkdtemp(prefix=f"moe-{name}-"))
    try:
        cfg, params = infer.load_hf_checkpoint(path, dtype="float32")
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return name, model, cfg, params


# qwen3_moe_norm (every layer MoE, the stacked layout, renormalised) is the routing-tie test's model.
@pytest.fixture(scope="module", params=["qwen3_moe_mixed", "mixtral_window"])
def ckpt(request):
    return _checkpoint(request.param)


def test_config_reaches_model_config(ckpt):
    name, model, cfg, _ = ckpt
    c = model.config
    E = c.num_local_experts
    assert (cfg.num_experts, cfg.num_experts_per_tok) == (E, c.num_experts_per_tok)
    if name.startswith("mixtral"):
        assert cfg.norm_topk_prob and cfg.moe_intermediate_size == c.intermediate_size and cfg.moe_layers is None
        assert cfg.sliding_window == c.sliding_window
    else:
        assert cfg.norm_topk_prob == c.norm_topk_prob and cfg.moe_intermediate_size == c.moe_intermediate_size
        assert cfg.qk_norm
    moe_hf = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    assert [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)] == moe_hf
    assert cfg.scan_layers == (len(moe_hf) == cfg.n_layers)  # a dense/MoE mix loads unrolled


def test_full_forward_logits_match(ckpt):
    _, model, cfg, params = ckpt
    ids = _tokens(PROMPT_LEN, 1)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    ours = np.asarray(infer.forward(params, cfg, ids.astype(np.int32)))
    err = np.abs(ours - ref)
    assert err.max() <= ATOL, f"max |diff| {err.max():.3g} at position {np.unravel_index(err.argmax(), err.shape)[1]}"
    assert np.abs(ref).max() > 1.0


def test_prefill_then_decode_past_256_matches_cached_transformers(ckpt):
    _, model, cfg, params = ckpt
    hf.assert_cached_decode_matches(model, params, cfg, _tokens(PREFILL_LEN + DECODE_STEPS, 2), PREFILL_LEN, ATOL)


def test_greedy_generate_matches_transformers():
    """One architecture: the generation loop around the model is the same program for every model (the dense/MoE
    mix's unrolled layout has its cached steps checked above)."""
    _, model, cfg, params = _checkpoint("mixtral_window")
    prompt = _tokens(24, 3)
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = model.generate(torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                             do_sample=False, max_new_tokens=16, pad_token_id=0)
    ours = generate(params, cfg, [prompt[0].tolist()], infer.SamplingParams(temperature=0.0, max_new_tokens=16))
    assert ours.tokens[0] == ref[0, prompt.shape[1]:].tolist()


def test_routing_ties_at_the_kth_place_use_exactly_k_experts(tmp_path):
    """Experts 0 and 1 made identical (router rows and weights): their probabilities tie exactly on every token,
    and where they tie at the k-th place only one of them may be used (torch.topk's pick among the tied is
    unspecified; the two are the same function, so either pick gives the same logits). An implementation that
    kept every expert at or above the k-th probability would use k + 1 experts there and differ."""
    model = hf.build_model("qwen3_moe_norm", seed=11, num_experts=4)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight[1] = layer.mlp.gate.weight[0]
            layer.mlp.experts.gate_up_proj[1] = layer.mlp.experts.gate_up_proj[0]
            layer.mlp.experts.down_proj[1] = layer.mlp.experts.down_proj[0]
    cfg, params = infer.load_hf_checkpoint(hf.save(model, str(tmp_path / "tie")), dtype="float32")
    ids = _tokens(64, 4)
    with torch.no_grad():
        out = model(torch.from_numpy(ids), output_router_logits=True)
    probs = torch.softmax(torch.stack(out.router_logits).float(), -1).numpy()  # [L, T, E]
    assert (probs[..., 0] == probs[..., 1]).all()
    better = (probs[..., 2:] > probs[..., :1]).sum(-1)  # experts ranked above the tied pair
    assert (better == cfg.num_experts_per_tok - 1).sum() >= 5  # the pair straddles the k-th place on these tokens
    ours = np.asarray(infer.forward(params, cfg, ids.astype(np.int32)))
    assert np.abs(ours - out.logits.numpy()).max() <= ATOL


def test_decode_layouts_keep_the_moe_logits():
    """The decode layouts (one subtree per layer; q|k|v fused: the MoE blocks keep their experts as they are) give
    the stacked model's logits; a dense/MoE mix has no stacked layout to convert to."""
    from infer.model.layout import for_decode, fuse_projections
    _, _, cfg, params = _checkpoint("mixtral_window")
    ids = _tokens(PROMPT_LEN, 1).astype(np.int32)
    ref = np.asarray(infer.forward(params, cfg, ids))  # compiled by test_full_forward_logits_match already
    cfg_u, params_u = fuse_projections(*for_decode(cfg, params, "unrolled"))
    assert not cfg_u.scan_layers and cfg_u.fused_projections and "qkv" in params_u["layers_0"]["attn"]
    np.testing.assert_allclose(np.asarray(infer.forward(params_u, cfg_u, ids)), ref, atol=1e-5)
    _, _, mixed, mixed_params = _checkpoint("qwen3_moe_mixed")
    with pytest.raises(ConfigError, match="^scan_layers:"):
        for_decode(mixed, mixed_params, "stacked")


# Refusals ----------------------------------------------------------------------------------------------------

def test_bad_moe_configs_are_refused_by_name():
    base = dict(vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=8, d_ff=32)
    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8)
    for bad, field in ((dict(num_experts_per_tok=5), "num_experts_per_tok"),
                       (dict(num_experts_per_tok=0), "num_experts_per_tok"),
                       (dict(moe_intermediate_size=None), "moe_intermediate_size"),
                       (dict(moe_layers=(0, 2), scan_layers=False), "moe_layers"),
                       (dict(moe_layers=(1,)), "scan_layers"),  # a dense/MoE mix has no stacked layout
                       (dict(weight_format="int8"), "weight_format")):
        with pytest.raises(ConfigError, match=f"^{field}:"):
            infer.ModelConfig(**base, **dict(moe, **bad))
    with pytest.raises(ConfigError, match="^num_experts_per_tok:"):  # an MoE field without experts
        infer.ModelConfig(**base, num_experts_per_tok=2)
    assert infer.ModelConfig(**base, **moe, moe_layers=[0, 1]).moe_layers is None  # every layer: canonical None
    mixed = infer.ModelConfig(**base, **moe, moe_layers=[1], scan_layers=False)
    assert hash(mixed) and mixed.moe_layers == (1,)
    assert infer.ModelConfig.from_dict(json.loads(json.dumps(mixed.to_dict()))) == mixed  # checkpoints' JSON


def test_bad_hf_moe_config_is_refused_naming_the_field(tmp_path):
    model = hf.build_model("mixtral_window", seed=1)
    d = json.loads(model.config.to_json_string())
    with pytest.raises(HFConfigError, match="num_experts_per_tok"):
        hf_to_model_config(dict(d, num_experts_per_tok=d["num_local_experts"] + 1))
    d = json.loads(hf.build_model("qwen3_moe_norm", seed=1).config.to_json_string())
    with pytest.raises(HFConfigError, match="decoder_sparse_step"):
        hf_to_model_config(dict(d, decoder_sparse_step=0))
    with pytest.raises(HFConfigError, match="num_experts"):
        hf_to_model_config(dict(d, num_experts=3, num_local_experts=8))
    assert not hf_to_model_config(dict(d, mlp_only_layers=[0, 1])).is_moe  # no MoE layer left: a dense model


# Roofline ----------------------------------------------------------------------------------------------------

def test_roofline_counts_moe_params_and_the_experts_a_step_reads():
    from infer.perf import roofline as rl
    for cfg in (make_cfg(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24),
                make_cfg(n_layers=3, num_experts=5, num_experts_per_tok=1, moe_intermediate_size=8, moe_layers=[0, 2],
                         scan_layers=False)):
        shapes = jax.eval_shape(lambda: infer.init_params(cfg, jax.random.PRNGKey(0)))
        assert rl.num_params(cfg) == sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    # The model cards: Qwen3-30B-A3B 30.5B total / 3.3B active, Mixtral 8x7B 46.7B / 12.9B.
    for name, total, active in (("qwen3-30b-a3b", 30.5e9, 3.3e9), ("mixtral-8x7b", 46.7e9, 12.9e9)):
        cfg = infer.load_config(name)
        assert abs(rl.num_params(cfg) / total - 1) < 0.01 and abs(rl.active_params(cfg) / active - 1) < 0.02
    cfg = infer.load_config("qwen3-30b-a3b")
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    assert rl.experts_touched(cfg, 1) == k and E - 1e-6 < rl.experts_touched(cfg, 4096) <= E
    expert_bytes = sum(p.bytes(rl.WeightFormat.get("bfloat16")) for p in rl.param_groups(cfg)
                       if p.name.startswith("expert_"))
    by_batch = [rl.decode_cost(cfg, b, 1024).weight_bytes for b in (1, 4, 16, 64, 256)]
    assert all(a < b for a, b in zip(by_batch, by_batch[1:]))  # more tokens, more distinct experts read
    assert np.isclose(by_batch[-1] - by_batch[0], expert_bytes * (rl.experts_touched(cfg, 256) - k) / E
                      + (256 - 1) * cfg.d_model * 2)  # the rest: gathered embedding rows
    hot = np.zeros(E)
    hot[:k] = 1.0  # a measured routing that always picks the same k experts reads only them at any batch
    assert rl.experts_touched(cfg, 256, routing=hot) == k
    flops = rl.decode_cost(cfg, 1, 0).flops  # each token multiplies its k experts only
    assert flops < 2 * rl.active_params(cfg) * 1.01 and flops > 2 * (rl.active_params(cfg) - cfg.vocab_size
                                                                     * cfg.d_model) * 0.99
