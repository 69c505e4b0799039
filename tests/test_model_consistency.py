"""The cached path equals the uncached reference at every position (failure-modes: positions and caches)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infer
from conftest import make_cfg

VARIANTS = {
    "MHA": dict(n_heads=4, n_kv_heads=4),
    "MQA": dict(n_heads=4, n_kv_heads=1),
    "GQA-6/2": dict(n_heads=6, n_kv_heads=2),  # non-power-of-two group size G=3
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_equals_prefill_then_decode(variant):
    cfg = make_cfg(**VARIANTS[variant])
    params = infer.init_params(cfg, jax.random.PRNGKey(1))
    T, k, B = 9, 6, 2
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (B, T + k)).astype(np.int32)
    full = np.asarray(infer.forward(params, cfg, jnp.asarray(tokens)))  # [B, T+k, V]

    cache = infer.init_cache(cfg, B, 32)
    logits, cache = infer.prefill(params, cfg, tokens[:, :T], np.full((B,), T), cache)
    np.testing.assert_allclose(logits, full[:, T - 1], atol=1e-5, rtol=0)
    for i in range(k):
        logits, cache = infer.decode_step(params, cfg, tokens[:, T + i], cache)
        np.testing.assert_allclose(logits, full[:, T + i], atol=1e-5, rtol=0, err_msg=f"decode step {i}")
    np.testing.assert_array_equal(cache["lengths"], [T + k] * B)


def test_extend_verify_pass_equals_forward_at_every_position(tiny):
    """prefill(T-k) + one k-token pass == forward over T (the speculative verify shape)."""
    cfg, params = tiny
    T, k = 14, 5
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, T)).astype(np.int32)
    full = np.asarray(infer.forward(params, cfg, jnp.asarray(tokens)))
    cache = infer.init_cache(cfg, 2, 32)
    _, cache = infer.prefill(params, cfg, tokens[:, :T - k], np.full((2,), T - k), cache)
    logits, cache = infer.extend(params, cfg, jnp.asarray(tokens[:, T - k:]), jnp.full((2,), k), cache)
    np.testing.assert_allclose(logits, full[:, T - k:], atol=1e-5, rtol=0)


def test_mixed_length_batch_prefill_matches_each_row_alone(tiny):
    """Right-padded rows of different lengths: each row's logits and subsequent decode equal the row alone."""
    cfg, params = tiny
    rng = np.random.RandomState(2)
    lens = [3, 11, 7]
    T = max(lens)
    tokens = np.zeros((3, T), np.int32)
    rows = [rng.randint(0, cfg.vocab_size, n) for n in lens]
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    cache = infer.init_cache(cfg, 3, 32)
    logits, cache = infer.prefill(params, cfg, tokens, np.array(lens), cache)
    nxt = rng.randint(0, cfg.vocab_size, 3)
    step_logits, cache = infer.decode_step(params, cfg, nxt, cache)
    for i, r in enumerate(rows):
        alone = np.asarray(infer.forward(params, cfg, jnp.asarray(np.append(r, nxt[i])[None])))[0]
        np.testing.assert_allclose(logits[i], alone[len(r) - 1], atol=1e-5, rtol=0)
        np.testing.assert_allclose(step_logits[i], alone[len(r)], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cache["lengths"], np.array(lens) + 1)


def test_rope_is_applied_at_the_row_position_not_zero(tiny):
    """A decode step at position p must differ from the same token at position 0 (RoPE not stuck at 0)."""
    cfg, params = tiny
    tok = np.array([5], np.int32)
    c0 = infer.init_cache(cfg, 1, 16)
    a, _ = infer.prefill(params, cfg, np.array([[7, 9, 11]]), np.array([3]), c0)
    c1 = infer.init_cache(cfg, 1, 16)
    _, c1 = infer.prefill(params, cfg, np.array([[7, 9, 11]]), np.array([3]), c1)
    b, _ = infer.decode_step(params, cfg, tok, c1)
    full = np.asarray(infer.forward(params, cfg, jnp.asarray([[7, 9, 11, 5]])))
    np.testing.assert_allclose(b[0], full[0, 3], atol=1e-5)
    assert not np.allclose(a, b)


def test_scan_params_are_layer_stacked_and_axes_named(tiny):
    cfg, params = tiny
    q = params["layers"]["attn"]["q"]["kernel"]
    assert q.shape == (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim)
    axes = infer.param_logical_axes(cfg)
    assert tuple(axes["layers"]["attn"]["q"]["kernel"]) == ("layers", "embed", "q_heads", "head_dim")
    assert tuple(axes["embed"]["embedding"]) == ("vocab", "embed")
    # every parameter has a named axis for every dimension
    for spec, leaf in zip(jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                          jax.tree_util.tree_leaves(params)):
        assert len(spec) == leaf.ndim and all(isinstance(a, str) for a in spec)


def test_decode_updates_the_donated_cache_in_place(tiny):
    """The cache passed to decode_step is donated: its buffers are consumed, not copied."""
    cfg, params = tiny
    cache = infer.init_cache(cfg, 2, 16)
    _, cache = infer.prefill(params, cfg, np.ones((2, 4), np.int32), np.array([4, 2]), cache)
    old_k = cache["kv"]["k"]
    _, new_cache = infer.decode_step(params, cfg, np.array([1, 2]), cache)
    assert old_k.is_deleted(), "decode_step did not donate the cache"
    np.testing.assert_array_equal(new_cache["lengths"], [5, 3])


def test_sliding_window_and_softcap_paths_match_forward():
    cfg = make_cfg(sliding_window=4, attn_logit_softcap=5.0)
    params = infer.init_params(cfg, jax.random.PRNGKey(3))
    tokens = np.random.RandomState(3).randint(0, cfg.vocab_size, (1, 12)).astype(np.int32)
    full = np.asarray(infer.forward(params, cfg, jnp.asarray(tokens)))
    cache = infer.init_cache(cfg, 1, 16)
    _, cache = infer.prefill(params, cfg, tokens[:, :6], np.array([6]), cache)
    for t in range(6, 12):
        lg, cache = infer.decode_step(params, cfg, tokens[:, t], cache)
        np.testing.assert_allclose(lg[0], full[0, t], atol=1e-5)
    # the window matters: without it the logits differ
    nowin = np.asarray(infer.forward(params, cfg.replace(sliding_window=None), jnp.asarray(tokens)))
    assert np.abs(nowin[0, -1] - full[0, -1]).max() > 1e-3
