"""Bad input gets a clear error naming the problem, never a crash or silent truncation."""
import os

import numpy as np
import pytest

import infer
from infer.config.model_config import MODEL_CONFIG_DIR
from infer.config import SamplingParams

BASE = dict(vocab_size=32, d_model=16, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=4, d_ff=32)


@pytest.mark.parametrize("change,field", [
    (dict(n_kv_heads=3), "n_heads"),
    (dict(n_layers=0), "n_layers"),
    (dict(d_model=16.0), "d_model"),
    (dict(head_dim=5), "head_dim"),
    (dict(dtype="float64"), "dtype"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(sliding_window=0), "sliding_window"),
])
def test_invalid_config_fields_are_named(change, field):
    with pytest.raises(infer.ConfigError, match=field):
        infer.ModelConfig(**{**BASE, **change})


def test_unknown_and_bad_yaml_fields_are_named(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("vocab_size: 32\nd_model: 16\nn_layers: 1\nn_heads: 4\nn_kv_heads: 2\nhead_dim: 4\nd_ff: 32\n"
                 "hidden_size: 7\n")
    with pytest.raises(infer.ConfigError, match="hidden_size"):
        infer.load_config(str(p))
    with pytest.raises(infer.ConfigError, match="rope_scaling.type"):
        infer.ModelConfig(**BASE, rope_scaling=infer.RopeScaling(type="dynamic", factor=2.0))
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        infer.load_config("no-such-model")


def test_every_shipped_model_config_loads():
    names = [f[:-5] for f in os.listdir(MODEL_CONFIG_DIR) if f.endswith(".yaml")]
    assert {"llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b", "mistral-7b", "qwen2.5-7b"} <= set(names)
    for n in names:
        cfg = infer.load_config(n)
        assert cfg.name == n
        hash(cfg)  # usable as a static jit argument


def test_generate_rejects_bad_prompts(tiny):
    cfg, params = tiny
    sp = SamplingParams(max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompts\[1\]: empty prompt"):
        infer.generate(params, cfg, [[1, 2], []], sp)
    with pytest.raises(ValueError, match=r"token id 256 outside \[0, vocab_size=256\)"):
        infer.generate(params, cfg, [[1, 256]], sp)
    with pytest.raises(ValueError, match="token id -1"):
        infer.generate(params, cfg, [[-1]], sp)
    with pytest.raises(ValueError, match="exceeds the cache"):
        infer.generate(params, cfg, [[1] * (cfg.max_seq_len - 2)], sp)
    with pytest.raises(ValueError, match="no prompts"):
        infer.generate(params, cfg, [], sp)


def test_prefill_rejects_prompt_longer_than_cache_and_bad_ids(tiny):
    cfg, params = tiny
    cache = infer.init_cache(cfg, 1, 8)
    cap = infer.model.capacity(cache)  # 8 positions rounded up to whole pages
    with pytest.raises(ValueError, match="past its .* reserved positions"):
        infer.prefill(params, cfg, np.ones((1, cap + 1), np.int32), np.array([cap + 1]), cache)
    with pytest.raises(ValueError, match="outside"):
        infer.prefill(params, cfg, np.full((1, 4), 300, np.int32), np.array([4]), cache)
    with pytest.raises(ValueError, match="lengths"):
        infer.prefill(params, cfg, np.ones((1, 4), np.int32), np.array([5]), cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        infer.init_cache(cfg, 1, cfg.max_seq_len + 1)


def test_decode_step_rejects_bad_ids_and_wrong_batch(tiny):
    cfg, params = tiny
    cache = infer.init_cache(cfg, 2, 8)
    with pytest.raises(ValueError, match=r"token id 256 is outside \[0, vocab_size=256\)"):
        infer.decode_step(params, cfg, np.array([1, 256]), cache)
    with pytest.raises(ValueError, match="one token per cache row"):
        infer.decode_step(params, cfg, np.array([1, 2, 3]), cache)
    logits, cache = infer.decode_step(params, cfg, np.array([1, 2]), cache)  # the cache was not consumed
    assert logits.shape == (2, cfg.vocab_size)


def test_decode_step_on_a_full_cache_is_refused_and_the_cache_survives(tiny):
    """A row with no reserved position left: refused on the host, nothing written, the cache not consumed."""
    cfg, params = tiny
    cache = infer.init_cache(cfg, 2, 16)
    cap = infer.model.capacity(cache)
    tokens = np.ones((2, cap), np.int32)
    _, cache = infer.prefill(params, cfg, tokens, np.array([cap, 3]), cache)
    before = np.asarray(cache["kv"]["k"]).copy()
    with pytest.raises(ValueError, match=f"row 0 would reach {cap + 1} positions, past its {cap} reserved"):
        infer.decode_step(params, cfg, np.array([1, 2]), cache)
    np.testing.assert_array_equal(np.asarray(cache["kv"]["k"]), before)
    np.testing.assert_array_equal(np.asarray(cache["lengths"]), [cap, 3])
