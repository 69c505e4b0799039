"""MLA (DeepSeek-V2/V3 multi-head latent attention): parity with transformers, the latent cache, absorbed decode.

Tiny random-weight DeepseekV2/V3 checkpoints with all-dense layers are saved with save_pretrained (float32,
eager attention) and loaded with `infer.load_hf_checkpoint`: with and without q_lora_rank, YaRN scaling with
both of its magnitude corrections, interleaved and half-split RoPE layouts.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_fixtures as hf
import infer
from infer.config import ConfigError, SamplingParams
from infer.generation.batch import generate
from infer.io.hf_config import HFConfigError, hf_to_model_config
from infer.kv.metadata import SequenceStep, build_metadata
from infer.perf.roofline import kv_bytes_per_token
from layers.attention.mla import MLAttention

ATOL = 1e-4
MLA = dict(vocab_size=hf.V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
           kv_lora_rank=32, q_lora_rank=48, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
           first_k_dense_replace=2, n_routed_experts=4, tie_word_embeddings=False)
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
        "beta_fast": 32, "beta_slow": 1}
ARCHS = {
    # V3 as shipped: q compressed, interleaved RoPE, YaRN with mscale == mscale_all_dim (cos/sin factor 1).
    "v3_qlora_yarn": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                      dict(rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=1.0))),
    # V3 without query compression, half-split RoPE, no scaling.
    "v3_noqlora_halfsplit": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(q_lora_rank=None,
                                                                              rope_interleave=False)),
    # V2 (complex-number RoPE, always interleaved), YaRN with mscale != mscale_all_dim: both corrections act.
    "v2_yarn_mscale": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                       dict(rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=0.707))),
}


def build(arch, seed=0, **overrides):
    import transformers
    cfg_cls, model_cls, kw = ARCHS[arch]
    cfg = getattr(transformers, cfg_cls)(**dict(MLA, **kw, **overrides))
    model = getattr(transformers, model_cls)._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    hf.randomize_(model, seed)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def ckpt(request, tmp_path_factory):
    model = build(request.param, seed=len(request.param))
    path = hf.save(model, str(tmp_path_factory.mktemp(request.param)))
    cfg, params = infer.load_hf_checkpoint(path, dtype="float32")
    return request.param, model, cfg, params


def _tokens(n, seed):
    return np.random.RandomState(seed).randint(0, hf.V, size=(1, n)).astype(np.int64)


def test_forward_prefill_decode_and_greedy_match_transformers(ckpt):
    name, model, cfg, params = ckpt
    assert cfg.is_mla and cfg.kv_lora_rank == 32 and (cfg.q_lora_rank is None) == ("noqlora" in name)
    assert (cfg.rope_scaling is not None) == ("yarn" in name)
    ids = _tokens(300, 1)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    ours = np.asarray(infer.forward(params, cfg, ids.astype(np.int32)))
    assert np.abs(ours - ref).max() <= ATOL and np.abs(ref).max() > 1.0

    # Prefill 250 + decode past 256 (the absorbed path) against transformers' own cache.
    P, steps = 250, 12
    ids = _tokens(P + steps, 2)
    ref, got = hf.prefill_then_decode_logits(model, params, cfg, ids, P)
    for step, (o, r) in enumerate(zip(got, ref)):
        assert np.abs(o - r).max() <= ATOL, f"position {P - 1 + step}"

    prompt = _tokens(40, 3)
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = model.generate(torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                             do_sample=False, max_new_tokens=32, pad_token_id=0)
    ours = generate(params, cfg, [prompt[0].tolist()], SamplingParams(temperature=0.0, max_new_tokens=32))
    assert ours.tokens[0] == ref[0, prompt.shape[1]:].tolist()


def test_latent_cache_holds_c_plus_e_values_per_token_and_layer(ckpt):
    _, _, cfg, _ = ckpt
    cache = infer.init_cache(cfg, 2, 64, page_size=8)
    kv = cache["kv"]
    assert set(kv) == {"c", "kr"} and kv["c"].shape == (cfg.n_layers, 16, 8, 32) and kv["kr"].shape[-1] == 8
    slots = 16 * 8
    per_token = sum(x.nbytes for x in kv.values()) / slots
    assert per_token == (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.n_layers * 4
    assert kv_bytes_per_token(cfg) == per_token


def _random_mla_params(cfg, seed=0):
    params = infer.init_params(cfg, jax.random.PRNGKey(seed))
    return jax.tree_util.tree_map(lambda x: x * 1.5 if x.ndim > 1 else x, params)


@pytest.mark.parametrize("batch", [1, 5])
def test_absorbed_decode_equals_expanded_attention_at_every_position(batch):
    """The decode step (absorbed, one token per sequence) against the multi-token path (expanded) on the same
    pools: a ragged batch, every sequence at its own length, positions 1..40."""
    cfg = infer.ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4, head_dim=12, d_ff=48,
                            dtype="float32", kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8,
                            qk_rope_head_dim=4, v_head_dim=6)
    mod = MLAttention(cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 1, cfg.d_model))
    params = mod.init(jax.random.PRNGKey(0), x, jnp.zeros((1, 1), jnp.int32))
    Z, M = 4, 12
    rng = np.random.RandomState(batch)
    lengths = rng.randint(1, 41, size=batch)
    perm = rng.permutation(batch * M)
    pages = [perm[b * M:(b + 1) * M].tolist() for b in range(batch)]
    kv = infer.init_pools(cfg, batch * M, Z)
    kv = {k: jnp.full_like(v, jnp.nan) for k, v in kv.items()}  # every slot not written is NaN
    xs = jax.random.normal(jax.random.PRNGKey(2), (batch, 40, cfg.d_model))

    apply = jax.jit(mod.apply, static_argnums=4)  # eagerly every op compiled on its own: most of the time

    def run(seqs, tokens_x, max_q_len=None):
        _, meta = build_metadata(seqs, page_size=Z, num_pages=batch * M, max_q_len=max_q_len)
        meta = jax.tree_util.tree_map(jnp.asarray, meta)
        return apply(params, tokens_x[None], meta.positions_T[None], kv, 0, meta)

    # Fill each sequence's first length-1 tokens with one multi-token (expanded) step.
    seqs = [SequenceStep(tokens=[0] * (int(n) - 1), pages=p, cached=0, logits="none") for n, p in zip(lengths, pages)]
    fill_x = jnp.concatenate([xs[b, :int(n) - 1] for b, n in enumerate(lengths)])
    pad = sum(int(n) - 1 for n in lengths)
    _, meta = build_metadata(seqs, page_size=Z, num_pages=batch * M)
    fill_x = jnp.pad(fill_x, ((0, meta.positions_T.shape[0] - pad), (0, 0)))
    _, kv, _ = run(seqs, fill_x)
    # The last token of each: absorbed (decode step) vs expanded (the same step forced to max_q_len = 2).
    last = [SequenceStep(tokens=[0], pages=p, cached=int(n) - 1) for n, p in zip(lengths, pages)]
    last_x = jnp.stack([xs[b, int(n) - 1] for b, n in enumerate(lengths)])
    _, meta1 = build_metadata(last, page_size=Z, num_pages=batch * M)
    last_x = jnp.pad(last_x, ((0, meta1.positions_T.shape[0] - batch), (0, 0)))
    o_abs = run(last, last_x)[0]
    o_exp = run(last, last_x, max_q_len=2)[0]
    o_abs, o_exp = np.asarray(o_abs[0, :batch]), np.asarray(o_exp[0, :batch])
    assert np.isfinite(o_abs).all() and np.abs(o_exp).max() > 0.1
    np.testing.assert_allclose(o_abs, o_exp, rtol=1e-5, atol=1e-5)


def test_moe_layers_and_bad_mla_configs_are_refused():
    d = dict(MLA, model_type="deepseek_v3", first_k_dense_replace=1)
    with pytest.raises(HFConfigError, match="first_k_dense_replace.*layers 1..1 are mixture-of-experts"):
        hf_to_model_config(d)
    with pytest.raises(HFConfigError, match="num_key_value_heads"):
        hf_to_model_config(dict(MLA, model_type="deepseek_v3", num_key_value_heads=2))
    base = dict(vocab_size=50, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4, head_dim=12, d_ff=48,
                kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)
    with pytest.raises(ConfigError, match="head_dim: with MLA must equal"):
        infer.ModelConfig(**dict(base, head_dim=16))
    with pytest.raises(ConfigError, match="v_head_dim: is an MLA field"):
        infer.ModelConfig(**dict(base, kv_lora_rank=None, qk_nope_head_dim=None, qk_rope_head_dim=None))
    with pytest.raises(ConfigError, match="weight_format: is not supported together with MLA"):
        infer.ModelConfig(**dict(base, weight_format="int8"))


@pytest.fixture(scope="module")
def mla_model():
    """A small random MLA model (no YaRN), its weights scaled so greedy outputs differ from prompt to prompt."""
    cfg = infer.ModelConfig(vocab_size=97, d_model=48, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=24, d_ff=64,
                            dtype="float32", max_seq_len=256, kv_lora_rank=16, q_lora_rank=24,
                            qk_nope_head_dim=8, qk_rope_head_dim=16, v_head_dim=8)  # C, E: Triton tile sizes
    return cfg, _random_mla_params(cfg)


def test_engine_and_speculative_decoding_serve_mla_unchanged(mla_model):
    """The engine (continuous batching, chunked prefill, prefix cache, NaN-poisoned reused pages) and
    speculative decoding on an MLA model give exactly generate's greedy tokens, as for GQA."""
    from infer.engine import Engine
    from infer.generation.speculative import speculative_generate, truncated_draft
    cfg, params = mla_model
    rng = np.random.default_rng(0)
    prefix = rng.integers(0, cfg.vocab_size, size=9).tolist()
    prompts = [(prefix if i % 2 else []) + rng.integers(0, cfg.vocab_size, size=int(rng.integers(1, 30))).tolist()
               for i in range(6)]
    sp = SamplingParams(temperature=0.0, max_new_tokens=10)
    want = generate(params, cfg, prompts, sp).tokens
    assert len({tuple(t) for t in want}) > 1
    engine = Engine(params, cfg, num_pages=64, page_size=4, max_num_seqs=4, max_num_batched_tokens=8,
                    poison_freed_pages=True)
    ids = [engine.add_request(p, sp) for p in prompts]
    outs = engine.run_to_completion()
    assert [outs[i].token_ids for i in ids] == want
    assert engine.stats()["pages_in_use"] == 0
    dparams, dcfg = truncated_draft(params, cfg, 1)
    spec = speculative_generate(params, cfg, dparams, dcfg, prompts[:3], sp, k=3)
    assert spec.tokens == want[:3]


def test_the_mla_pallas_kernel_decodes_the_same_tokens(mla_model):
    """The model with attention_impl="pallas" (the MLA decode kernel, Triton interpret mode on CPU) decodes
    the reference's greedy tokens, and its logits agree."""
    cfg, params = mla_model
    prompt = [[5, 17, 3, 88, 41, 9, 60]]
    sp = SamplingParams(temperature=0.0, max_new_tokens=5)
    ref = generate(params, cfg, prompt, sp)
    pal = generate(params, cfg.replace(attention_impl="pallas"), prompt, sp)
    assert pal.tokens == ref.tokens


def test_yarn_on_a_llama_checkpoint_matches_transformers(tmp_path):
    """YaRN is a rope option of any architecture: a Llama checkpoint with it (cos/sin scaled by 1 + 0.1 ln 4)."""
    model = hf.build_model("llama3_rope_gqa", seed=3, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 50000.0})
    cfg, params = infer.load_hf_checkpoint(hf.save(model, str(tmp_path / "yarn")), dtype="float32")
    assert cfg.rope_scaling.type == "yarn"
    ids = _tokens(300, 4)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(np.asarray(infer.forward(params, cfg, ids.astype(np.int32))) - ref).max() <= ATOL


def test_deepseek_shaped_configs_and_their_kv_bytes():
    v3 = infer.load_config("deepseek-v3-dense")
    assert v3.is_mla and v3.rope_scaling.type == "yarn"
    assert kv_bytes_per_token(v3) == (512 + 64) * 61 * 2  # 70,272 bytes: bf16 latent + RoPE key, 61 layers
    mha = v3.replace(kv_lora_rank=None, q_lora_rank=None, qk_nope_head_dim=None, qk_rope_head_dim=None,
                     v_head_dim=None, head_dim=128)
    assert kv_bytes_per_token(mha) / kv_bytes_per_token(v3) == 2 * 128 * 128 / 576  # 56.9x smaller
    lite = infer.load_config("deepseek-v2-lite-dense")
    assert lite.q_lora_rank is None and kv_bytes_per_token(lite) == 576 * 27 * 2


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_absorbed_decode_equals_expanded_forward_at_every_position(mla_model, batch):
    """Token by token from position 0: every decode step (absorbed, over the latent pages) against the uncached
    forward (expanded keys and values) at the same position, for every row of the batch."""
    cfg, params = mla_model
    toks = np.random.RandomState(batch).randint(0, cfg.vocab_size, (batch, 40))
    full = np.asarray(infer.forward(params, cfg, toks.astype(np.int32)))
    cache = infer.init_cache(cfg, batch, 48, page_size=4)
    for t in range(40):
        logits, cache = infer.decode_step(params, cfg, toks[:, t].astype(np.int32), cache)
        np.testing.assert_allclose(np.asarray(logits), full[:, t], rtol=1e-5, atol=5e-5, err_msg=f"position {t}")
