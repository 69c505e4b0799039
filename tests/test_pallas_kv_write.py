"""The KV write (pallas_kernels/kv_write/): the Triton kernel in interpret mode against its pure-JAX twin, the
twin against a numpy loop over tokens, its rotation against the model's RoPE, which one the dispatcher runs, and
the kernel compiled for an H100 at Llama 3 8B's shapes, updating the pools in place."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gpu_aot import h100_sharding

from infer.perf.aot_target import abstract
from layers.rope import apply_rope, inv_frequencies, rope_cos_sin
from pallas_kernels.kv_write.dispatch import write_pages
from pallas_kernels.kv_write.write_gpu import write_pages_gpu
from pallas_kernels.kv_write.write_reference import rotate_half, write_pages_reference
from pallas_kernels.platform import target_platform

L, P, K, Z, H, N = 3, 5, 2, 4, 32, 4
SLOTS = [3, -1, 7, 19, -5, 0]  # two padding tokens; 19 is the last slot of the last page


def _case(dtype, seed=0):
    rng = np.random.default_rng(seed)
    pools = [jnp.asarray(rng.normal(size=(L, P, K, Z, H)), dtype) for _ in range(2)]
    T = len(SLOTS)
    qkv = jnp.asarray(rng.normal(size=(T, N + 2 * K, H)), jnp.bfloat16)
    angles = rng.uniform(0, 50, size=(T, H // 2))
    rope = (jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32))
    return pools, qkv, rope, jnp.asarray(SLOTS, jnp.int32)


@pytest.mark.parametrize("pool_dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("rotate", [False, True])
def test_kernel_matches_the_twin(pool_dtype, rotate):
    (k, v), qkv, rope, slot = _case(pool_dtype)
    args = (k, v, jnp.int32(1), qkv, N, qkv, N + K, slot, rope if rotate else None)
    got = write_pages_gpu(*args, interpret=True)
    want = write_pages_reference(*args)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))


@pytest.mark.parametrize("pool_dtype", [jnp.bfloat16, jnp.float32])
def test_the_queries_rotate_in_the_same_kernel_as_the_model_rotates_them(pool_dtype):
    """q = (source, head, N): the kernel also returns the N query heads rotated (G = 2 per kv head), equal to the
    twin's and, bit for bit, to the model's apply_rope of the same angles; the pools as without q."""
    (k, v), qkv, rope, slot = _case(pool_dtype, seed=2)
    args = (k, v, jnp.int32(1), qkv, N, qkv, N + K, slot, rope)
    got = write_pages_gpu(*args, q=(qkv, 0, N), interpret=True)
    want = write_pages_reference(*args, q=(qkv, 0, N))
    assert len(got) == 3 and got[2].shape == (len(SLOTS), N, H) and got[2].dtype == qkv.dtype
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
    for g, w in zip(got[:2], write_pages_reference(*args)):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
    # the model's RoPE: apply_rope over [1, T, N, H] at positions whose angles rope_cos_sin gives
    pos = jnp.arange(len(SLOTS), dtype=jnp.int32) * 37 + 5
    inv = inv_frequencies(H, 10000.0, None)
    model = apply_rope(qkv[None, :, :N], pos[None], inv)[0]
    fused = write_pages_gpu(*args[:8], rope_cos_sin(pos, inv), q=(qkv, 0, N), interpret=True)[2]
    np.testing.assert_array_equal(np.asarray(fused, np.float32), np.asarray(model, np.float32))
    with pytest.raises(ValueError, match="needs the rotation"):
        write_pages_reference(*args[:8], None, q=(qkv, 0, N))


def test_the_twin_is_a_loop_over_tokens():
    (k, v), qkv, rope, slot = _case(jnp.float32, seed=1)
    got_k, got_v = write_pages_reference(k, v, 2, qkv, N, qkv, N + K, slot, rope)
    want_k, want_v = np.array(k), np.array(v)
    x = np.asarray(qkv, np.float64)
    c, s = (np.asarray(a, np.float64)[:, None, :] for a in rope)
    for t, sl in enumerate(SLOTS):
        if sl < 0:
            continue  # padding writes nothing
        k1, k2 = x[t, N:N + K, :H // 2], x[t, N:N + K, H // 2:]
        want_k[2, sl // Z, :, sl % Z] = np.concatenate([k1 * c[t] - k2 * s[t], k2 * c[t] + k1 * s[t]], -1)
        want_v[2, sl // Z, :, sl % Z] = x[t, N + K:]
    np.testing.assert_allclose(np.asarray(got_k), want_k, rtol=1e-2, atol=1e-2)  # the keys round to bf16 once
    np.testing.assert_array_equal(np.asarray(got_v), want_v)
    untouched = np.ones((L, P, Z), bool)
    for sl in SLOTS:
        if sl >= 0:
            untouched[2, sl // Z, sl % Z] = False
    np.testing.assert_array_equal(np.asarray(got_k).transpose(0, 1, 3, 2, 4)[untouched],
                                  np.asarray(k).transpose(0, 1, 3, 2, 4)[untouched])


def test_the_rotation_is_the_models_rope():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(1, 7, K, H)), jnp.bfloat16)
    pos = jnp.asarray([[0, 1, 5, 100, 2047, 8191, 3]])
    inv = inv_frequencies(H, 500000.0)
    want = apply_rope(x, pos, inv, 1.25)[0]
    got = rotate_half(x[0], *rope_cos_sin(pos[0], inv, 1.25))
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_the_dispatcher_runs_the_kernel_only_where_it_applies():
    (k, v), qkv, rope, slot = _case(jnp.bfloat16)
    jaxpr = lambda k, v: str(jax.make_jaxpr(
        lambda k, v: write_pages(k, v, 0, qkv, N, qkv, N + K, slot, rope))(k, v))
    assert "pallas_call" not in jaxpr(k, v)  # CPU: XLA's scatter
    with target_platform("gpu"):
        assert "pallas_call" in jaxpr(k, v)
        narrow = jnp.zeros((L, P, K, Z, 16), jnp.bfloat16)  # half a 16-wide row is no Triton block: the twin
        assert "pallas_call" not in str(jax.make_jaxpr(lambda k, v: write_pages(
            k, v, 0, qkv[..., :16], N, qkv[..., :16], N + K, slot, (rope[0][:, :8], rope[1][:, :8])))(narrow, narrow))
    with pytest.raises(ValueError, match="H=16 must be a power of two >= 32"):
        write_pages_gpu(narrow, narrow, 0, qkv[..., :16], N, qkv[..., :16], N + K, slot, interpret=True)


def test_compiles_for_an_h100_in_place_at_llama3_8b_shapes():
    """Llama 3 8B: 32 layers, 8 KV heads of 128, 4096 pages of 16 (2 GiB per pool), a 64-token step reading the
    fused q|k|v product; the pools are donated and updated in place (no copy of them in the program)."""
    sharding = h100_sharding()
    L8, P8, T = 32, 4096, 64
    pool = jax.ShapeDtypeStruct((L8, P8, 8, 16, 128), jnp.bfloat16)
    qkv = jax.ShapeDtypeStruct((T, 48, 128), jnp.bfloat16)
    cs = jax.ShapeDtypeStruct((T, 64), jnp.float32)
    step = jax.jit(lambda k, v, x, slot, c, s: write_pages(k, v, 3, x, 32, x, 40, slot, (c, s)),
                   donate_argnums=(0, 1))
    with target_platform("gpu"):
        compiled = step.lower(*abstract((pool, pool, qkv, jax.ShapeDtypeStruct((T,), jnp.int32), cs, cs),
                                        sharding)).compile()
    text = compiled.as_text()
    assert "kv_write_K8_H128" in text
    assert " copy(" not in text and "copy-start" not in text  # the 2 GiB pools are never copied
    assert compiled.memory_analysis().temp_size_in_bytes < 1 << 20
