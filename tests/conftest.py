"""Shared fixtures. Tests run on CPU in float32 unless they say otherwise."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

import infer  # noqa: E402


def make_cfg(n_heads=6, n_kv_heads=2, **kw):
    base = dict(vocab_size=97, d_model=48, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=8,
                d_ff=64, max_seq_len=256, dtype="float32")
    base.update(kw)
    return infer.ModelConfig(**base)


@pytest.fixture(scope="session")
def tiny():
    """(cfg, params) of the configs/models/tiny.yaml model (GQA N=6, K=2)."""
    cfg = infer.load_config("tiny")
    return cfg, infer.init_params(cfg, jax.random.PRNGKey(0))
