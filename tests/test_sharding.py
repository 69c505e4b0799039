"""Sharding the model over a device mesh from logical axis names changes placement, not results.

Runs in a subprocess with 8 forced host devices (the flag must be set before JAX starts).
"""
import os
import subprocess
import sys
import textwrap

from conftest import subprocess_xla_flags

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh
    import infer
    from infer.parallel import sharding
    assert jax.device_count() == 8, jax.devices()
    cfg = infer.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=8, d_ff=64,
                            max_seq_len=64, dtype="float32")
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    tokens = np.random.RandomState(0).randint(0, 64, (2, 7)).astype(np.int32)
    lens = np.array([7, 4])

    def run(p, cache):
        lg0, cache = infer.prefill(p, cfg, tokens, lens, cache)
        lg1, cache = infer.decode_step(p, cfg, np.array([3, 5]), cache)
        return np.asarray(lg0), np.asarray(lg1), cache

    want0, want1, _ = run(params, infer.init_cache(cfg, 2, 16))
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    sp = sharding.shard(params, sharding.param_shardings(cfg, mesh))
    cache = infer.init_cache(cfg, 2, 16)
    cache["kv"] = sharding.shard(cache["kv"], sharding.pool_shardings(cache["kv"], mesh))
    q = sp["layers"]["attn"]["q"]["kernel"]
    assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape == (2, 32, 2, 8), q.sharding
    # pools [L, P, K, Z, H] = [2, 2 rows x 1 page, 4, 16, 8]: the KV-head axis split over "model"
    assert cache["kv"]["k"].addressable_shards[0].data.shape == (2, 2, 1, 16, 8)
    got0, got1, cache = run(sp, cache)
    np.testing.assert_allclose(got0, want0, atol=1e-5)
    np.testing.assert_allclose(got1, want1, atol=1e-5)
    print("SHARDED_OK")
""")


def test_sharded_prefill_and_decode_equal_unsharded():
    env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags("--xla_force_host_platform_device_count=8"),
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "SHARDED_OK" in r.stdout, r.stdout + r.stderr
