"""The whole model through attention_impl="pallas" matches "reference" (float32, tight).

Prefill runs the ragged kernel (multi-token rows), decode the split-K paged decode kernel,
and a mixed step (decode rows + a prefill chunk continuing a prefix) the ragged kernel:
all on CPU in interpret mode.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infer
from infer.kv import SequenceStep, build_metadata, init_pools
from layers.attention import registry

PROMPTS = [[5, 9, 14, 3, 7, 11, 2], [8, 1], [4, 4, 6, 200, 17, 13, 9, 90, 31, 2, 77]]


def _cfg(**overrides):
    # head_dim 16: the Triton tiles need H to be a power of two >= 16
    return infer.load_config("tiny", dtype="float32", head_dim=16, **overrides)


def _decode_logits(cfg, params, cache_dtype, n_steps=3, max_len=24):
    T = max(len(p) for p in PROMPTS)
    tokens = np.zeros((len(PROMPTS), T), np.int32)
    for i, p in enumerate(PROMPTS):
        tokens[i, :len(p)] = p
    lengths = np.array([len(p) for p in PROMPTS], np.int32)
    cache = infer.init_cache(cfg, len(PROMPTS), max_len, dtype=cache_dtype)
    logits, cache = infer.prefill(params, cfg, tokens, lengths, cache)
    out = [logits]
    for _ in range(n_steps):
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits, cache = infer.decode_step(params, cfg, nxt, cache)
        out.append(logits)
    return np.stack([np.asarray(x) for x in out])


@pytest.mark.parametrize("overrides,cache_dtype", [
    ({}, None),
    ({"sliding_window": 5, "attn_logit_softcap": 2.0}, "int8"),
])
def test_pallas_prefill_and_decode_match_reference(overrides, cache_dtype):
    cfg = _cfg(**overrides)
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    ref = _decode_logits(cfg.replace(attention_impl="reference"), params, cache_dtype)
    got = _decode_logits(cfg.replace(attention_impl="pallas"), params, cache_dtype)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # the comparison is not vacuous: decode steps move the logits
    assert np.abs(ref[1:] - ref[:-1]).max() > 1e-3


def test_pallas_mixed_step_matches_reference():
    """Decode rows and a prefill chunk continuing a cached prefix in one step, shuffled pages."""
    cfg = _cfg()
    params = infer.init_params(cfg, jax.random.PRNGKey(1))
    Z, P = 4, 16
    rng = np.random.RandomState(0)
    pages = rng.permutation(P).tolist()
    first = [SequenceStep(tokens=rng.randint(0, 256, 6).tolist(), pages=pages[0:3]),
             SequenceStep(tokens=rng.randint(0, 256, 9).tolist(), pages=pages[3:6])]
    second = [SequenceStep(tokens=[7], pages=pages[0:3], cached=6),
              SequenceStep(tokens=rng.randint(0, 256, 3).tolist(), pages=pages[3:6], cached=9, logits="all"),
              SequenceStep(tokens=rng.randint(0, 256, 5).tolist(), pages=pages[6:8])]
    outs = []
    for impl in ("reference", "pallas"):
        c = cfg.replace(attention_impl=impl)
        kv = init_pools(c, P, Z)
        lg = []
        for seqs in (first, second):
            tokens, meta = build_metadata(seqs, page_size=Z, num_pages=P)
            logits, kv = infer.step(params, c, tokens, meta, kv)
            lg.append(np.asarray(logits))
        outs.append(lg)
    for got, ref in zip(outs[1], outs[0]):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_auto_picks_the_kernels_on_accelerators_and_the_reference_on_cpu():
    assert registry.resolve("auto", "cpu") == "reference"
    assert registry.resolve("auto", "gpu") == "pallas" and registry.resolve("auto", "tpu") == "pallas"
    with pytest.raises(ValueError, match="unknown implementation 'nope'"):
        registry.resolve("nope")
    with pytest.raises(infer.ConfigError, match="attention_impl"):
        _cfg(attention_impl="nope")
