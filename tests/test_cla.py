"""CLA (cross-layer attention): groups of kv_share_every layers read the keys and values of the group's first.

Checked against an independent construction: the same computation written out layer by layer in numpy-free
JAX from the parameters (`reference_forward`), the cached paths against the uncached forward, the pools and
the roofline against the halved layer count, and training with the project's optax step.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infer
from infer.config import ConfigError, SamplingParams
from infer.model.forward import forward
from infer.perf.roofline import kv_bytes_per_token, num_params
from infer.train.config import TrainConfig
from infer.train.train import lm_loss, make_optimizer, make_train_step
from layers.attention.dense import attend
from layers.rope import apply_rope, inv_frequencies

BASE = dict(vocab_size=89, d_model=48, n_layers=4, n_heads=6, n_kv_heads=2, head_dim=8, d_ff=64, dtype="float32",
            max_seq_len=256)


def _rms(x, w, eps):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * w


def reference_forward(params, cfg, tokens_BT):
    """CLA written out directly: layer i uses the k/v projections of layer n * (i // n)."""
    n = cfg.kv_share_every
    B, T = tokens_BT.shape
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    inv = inv_frequencies(cfg.head_dim, cfg.rope_theta)
    x = params["embed"]["embedding"][tokens_BT]
    blocks = [("first", None)] + [(f"follow{j}", None) for j in range(1, n)]
    for g in range(cfg.n_layers // n):
        for name, _ in blocks:
            p = jax.tree_util.tree_map(lambda a: a[g], params["layers"][name])
            h = _rms(x, p["attn_norm"]["scale"], cfg.norm_eps)
            q = apply_rope(jnp.einsum("btd,dnh->btnh", h, p["attn"]["q"]["kernel"]), pos, inv)
            if name == "first":
                k = apply_rope(jnp.einsum("btd,dkh->btkh", h, p["attn"]["k"]["kernel"]), pos, inv)
                v = jnp.einsum("btd,dkh->btkh", h, p["attn"]["v"]["kernel"])
            o = attend(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), pos, jnp.full((B,), T),
                       sliding_window=cfg.sliding_window)
            x = x + jnp.einsum("btnh,nhd->btd", o, p["attn"]["o"]["kernel"])
            h = _rms(x, p["mlp_norm"]["scale"], cfg.norm_eps)
            m = p["mlp"]
            x = x + jnp.einsum("btf,fd->btd", jax.nn.silu(h @ m["gate"]["kernel"]) * (h @ m["up"]["kernel"]),
                               m["down"]["kernel"])
    x = _rms(x, params["final_norm"]["scale"], cfg.norm_eps)
    return x @ params["lm_head"]["kernel"]


@pytest.mark.parametrize("share, window", [(2, None), (4, None), (2, 12)])
def test_cla_forward_equals_the_written_out_model_and_the_cached_paths(share, window):
    cfg = infer.ModelConfig(**BASE, kv_share_every=share, sliding_window=window)
    params = infer.init_params(cfg, jax.random.PRNGKey(share))
    assert set(params["layers"]) == {"first"} | {f"follow{j}" for j in range(1, share)}
    assert "k" not in params["layers"].get("follow1", {}).get("attn", {})
    assert num_params(cfg) == sum(x.size for x in jax.tree_util.tree_leaves(params))
    toks = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 40))
    full = np.asarray(forward(params, cfg, jnp.asarray(toks)))
    np.testing.assert_allclose(full, np.asarray(reference_forward(params, cfg, jnp.asarray(toks))), atol=2e-5)
    cache = infer.init_cache(cfg, 2, 64, page_size=8)
    assert cache["kv"]["k"].shape[0] == cfg.n_layers // share
    lg, cache = infer.prefill(params, cfg, toks[:, :30], np.array([30, 30]), cache)
    np.testing.assert_allclose(np.asarray(lg), full[:, 29], atol=2e-5)
    for t in range(30, 39):
        lg, cache = infer.decode_step(params, cfg, toks[:, t], cache)
        np.testing.assert_allclose(np.asarray(lg), full[:, t], atol=2e-5)


def test_cla_halves_the_cache_and_the_engine_serves_it():
    from infer.engine import Engine
    cfg = infer.ModelConfig(**BASE, kv_share_every=2)
    plain = cfg.replace(kv_share_every=1)
    assert kv_bytes_per_token(cfg) == kv_bytes_per_token(plain) / 2
    pools = infer.init_pools(cfg, 8, 4)
    assert sum(x.nbytes for x in pools.values()) / (8 * 4) == kv_bytes_per_token(cfg)
    params = jax.tree_util.tree_map(lambda x: x * 2.0 if x.ndim > 2 else x,
                                    infer.init_params(cfg, jax.random.PRNGKey(1)))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, size=int(rng.integers(2, 25))).tolist() for _ in range(5)]
    sp = SamplingParams(temperature=0.0, max_new_tokens=8)
    want = infer.generate(params, cfg, prompts, sp).tokens
    assert len({tuple(t) for t in want}) > 1
    engine = Engine(params, cfg, num_pages=48, page_size=4, max_num_seqs=3, max_num_batched_tokens=8)
    ids = [engine.add_request(p, sp) for p in prompts]
    outs = engine.run_to_completion()
    assert [outs[i].token_ids for i in ids] == want


def test_cla_trains_with_the_projects_optax_step():
    cfg = infer.ModelConfig(**BASE, kv_share_every=2)
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    tc = TrainConfig(steps=30, batch_size=4, seq_len=16, peak_lr=3e-3, warmup_steps=2)
    tx = make_optimizer(tc)
    step = make_train_step(tx, lambda p, w: lm_loss(p, cfg, w))
    opt = tx.init(params)
    # A learnable stream: each window counts up modulo V from a random start.
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(tc.steps):
        starts = rng.integers(0, cfg.vocab_size, size=(tc.batch_size, 1))
        w = jnp.asarray((starts + np.arange(tc.seq_len + 1)) % cfg.vocab_size, jnp.int32)
        params, opt, loss, _ = step(params, opt, w)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    assert np.abs(np.asarray(params["layers"]["follow1"]["attn"]["q"]["kernel"])).sum() > 0


def test_cla_configs_that_do_not_divide_are_refused():
    with pytest.raises(ConfigError, match="kv_share_every: n_layers=4 is not divisible by kv_share_every=3"):
        infer.ModelConfig(**BASE, kv_share_every=3)
    with pytest.raises(ConfigError, match="kv_share_every: cross-layer sharing is not supported together with "
                                          "quantized"):
        infer.ModelConfig(**BASE, kv_share_every=2, weight_format="int8")
