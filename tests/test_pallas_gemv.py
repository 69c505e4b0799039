"""The decode GEMV (pallas_kernels/gemv/): the Triton kernel in interpret mode against its pure-JAX twin and a numpy
computation (masked columns, M = 1 and 3 rows, the add + RMSNorm prologue and the SwiGLU epilogue), which one the
dispatcher runs, and the model on a GPU target (kernel interpreted) against the CPU model."""
import functools
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gemv.dispatch import gemv
from pallas_kernels.gemv.gemv_gpu import choose_block_k, choose_block_n, gemv_gpu, row_tile
from pallas_kernels.gemv.gemv_reference import fused_gemv_reference
from pallas_kernels.platform import target_platform

EPS = 1e-5


def _case(M, K, N, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, r = (jnp.asarray(rng.normal(size=(M, K)), dtype) for _ in range(2))
    w = jnp.asarray(rng.normal(size=(K, N)) / np.sqrt(K), dtype)
    return x, r, jnp.asarray(rng.uniform(0.5, 1.5, size=(K,)), dtype), w


def _numpy(x, r, wn, w, norm, swiglu):
    """The same contract in float64 numpy (from the inputs' stored values)."""
    f = lambda a: np.asarray(a, np.float64)
    h = f(x) + f(r) if norm else f(x)
    xn = f(wn) * h / np.sqrt((h * h).mean(-1, keepdims=True) + EPS) if norm else h
    y = xn @ f(w)
    if swiglu:
        g, u = np.split(y, 2, axis=-1)
        y = g / (1 + np.exp(-g)) * u
    return h, y


# (M, K, N, dtype, norm, swiglu, block_n, block_k): N = 40 and 37 leave a masked column block; SwiGLU's F = 24
# too; block_k below K so the loop runs several chunks
# 20 and 33 rows: the 32- and 64-row tiles of a batch (their padding rows masked)
CASES = [(1, 64, 40, jnp.float32, False, False, 16, 32),
         (3, 64, 37, jnp.float32, True, False, 16, 16),
         (3, 128, 48, jnp.bfloat16, True, True, 16, 32),
         (20, 64, 74, jnp.bfloat16, False, True, 16, 32),
         (33, 128, 40, jnp.float32, False, False, 16, 64)]


@pytest.mark.parametrize("M,K,N,dtype,norm,swiglu,bn,bk", CASES)
def test_kernel_matches_the_twin_and_numpy(M, K, N, dtype, norm, swiglu, bn, bk):
    x, r, wn, w = _case(M, K, N, dtype)
    args = (r, wn) if norm else ()
    got = gemv_gpu(x, w, *args, eps=EPS, swiglu=swiglu, block_n=bn, block_k=bk, interpret=True)
    want = fused_gemv_reference(x, w, (r, wn, EPS) if norm else None, swiglu)
    h_np, y_np = _numpy(x, r, wn, w, norm, swiglu)
    if norm:
        (h, got), (rh, want) = got, want
        np.testing.assert_array_equal(np.asarray(h, np.float32), np.asarray(rh, np.float32))  # the same add
        np.testing.assert_allclose(np.asarray(h, np.float64), h_np, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)
    assert got.shape == (M, N // 2 if swiglu else N) and got.dtype == dtype
    # float32: summation order only; bfloat16: an output rounding (and gate / up's) apart
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    g32, w32 = np.asarray(got, np.float32), np.asarray(want, np.float32)
    np.testing.assert_allclose(g32, w32, rtol=tol, atol=tol * np.abs(w32).max())
    np.testing.assert_allclose(g32, y_np, rtol=tol, atol=tol * np.abs(y_np).max())


def test_block_choices_at_llama3_8b_shapes():
    """About one program per H100 SM without a K split, and 16 KB of weight per pipeline stage."""
    assert [choose_block_n(n) for n in (6144, 4096, 14336)] == [32, 16, 64]
    assert choose_block_k(4096, 32, 1, 2) == 256 and choose_block_k(14336, 16, 1, 2) == 512
    assert choose_block_k(4096, 64, 2, 2) == 64 and choose_block_k(576, 16, 1, 2) == 64  # SmolLM2's D = 64 x 9
    # a 64-row tile (batch 64): at most 16 KB of x per stage too, so three stages stay ~72 KB (one wave of programs)
    assert choose_block_k(4096, 32, 1, 2, rows=64) == 128 and choose_block_k(4096, 16, 1, 2, rows=32) == 256
    assert [row_tile(m) for m in (1, 16, 17, 33, 64)] == [16, 16, 32, 64, 64]
    with pytest.raises(ValueError, match="dividing K"):
        choose_block_k(96, 16, 1, 2, block_k=64)


def test_the_dispatcher_runs_the_kernel_only_where_it_applies():
    x, r, wn, w = _case(2, 64, 32, jnp.float32)
    jaxpr = lambda x, **kw: str(jax.make_jaxpr(lambda x, w: gemv(x, w, **kw))(x, w))
    assert "pallas_call" not in jaxpr(x)  # CPU: XLA's dot
    with target_platform("gpu"):
        assert "pallas_call" in jaxpr(x[None])  # [B, T, K] rows -> the kernel
        assert "pallas_call" in jaxpr(x, norm=(r, wn, EPS), swiglu=True)
        assert "pallas_call" in jaxpr(jnp.zeros((64, 64)))  # a batch of 64 rows: the kernel too
        assert "pallas_call" not in jaxpr(jnp.zeros((65, 64)))  # 65 rows: a GEMM
        # past 16 rows the norm is its own kernel before a GEMV without the prologue (see gemv_gpu.NORM_MAX_ROWS)
        x20, r20 = jnp.zeros((20, 64)), jnp.zeros((20, 64))
        names = set(re.findall(r"name=(\w+)", jaxpr(x20, norm=(r20, wn, EPS), swiglu=True)))
        assert any(n.startswith("add_rms_norm") for n in names) and any(
            n.startswith("gemv_swiglu_K64") for n in names), names
        k40 = jax.make_jaxpr(lambda x, w: gemv(x, w))(jnp.zeros((1, 40)), jnp.zeros((40, 8)))
        assert "pallas_call" not in str(k40)  # K = 40 is no multiple of 16: the twin
    h, y = gemv(x[None], w, norm=(r[None], wn, EPS), swiglu=True)  # the twin, with leading dims kept
    assert h.shape == (1, 2, 64) and y.shape == (1, 2, 16)


def test_twenty_rows_with_the_norm_run_the_norm_kernel_then_the_gemv(monkeypatch):
    """The dispatcher's path past the prologue's 16 rows, both kernels interpreted, equals the twin."""
    norm_gpu = importlib.import_module("pallas_kernels.norm.add_rms_norm_gpu")
    monkeypatch.setattr(norm_gpu, "add_rms_norm_gpu", functools.partial(norm_gpu.add_rms_norm_gpu, interpret=True))
    monkeypatch.setattr(importlib.import_module("pallas_kernels.gemv.gemv_gpu"), "gemv_gpu",
                        functools.partial(gemv_gpu, interpret=True))
    x, r, wn, w = _case(20, 64, 48, jnp.float32, seed=3)
    with target_platform("gpu"):
        h, y = gemv(x, w, norm=(r, wn, EPS), swiglu=True)
    rh, ry = fused_gemv_reference(x, w, (r, wn, EPS), swiglu=True)
    np.testing.assert_array_equal(np.asarray(h), np.asarray(rh))
    np.testing.assert_allclose(np.asarray(y), np.asarray(ry), rtol=1e-5, atol=1e-5)


def test_the_model_on_a_gpu_target_matches_the_cpu_model(monkeypatch):
    """Tiny Llama with fused projections, one 3-token row: traced for a GPU, every projection is the GEMV kernel
    (here interpreted), both norms folded into q|k|v and gate|up; the logits are the CPU model's. With
    INFER_DECODE_GEMV=0 the GPU program has no GEMV kernel."""
    import infer
    from infer.model.layout import fuse_projections
    monkeypatch.setattr(importlib.import_module("pallas_kernels.gemv.gemv_gpu"), "gemv_gpu", functools.partial(gemv_gpu, interpret=True))
    cfg = infer.load_config("tiny", dtype="float32", n_layers=1)
    rng = np.random.default_rng(0)  # random values at the params' shapes (no init program to compile)
    shapes = jax.eval_shape(lambda: infer.init_params(cfg, jax.random.PRNGKey(0)))
    cfg, params = fuse_projections(cfg, jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) if len(a.shape) == 1 else
                              rng.normal(size=a.shape) * 0.3, a.dtype), shapes))
    tokens = jnp.asarray([[5, 9, 14]], jnp.int32)
    want = infer.forward(params, cfg, tokens)
    fwd = lambda p, t: infer.forward(p, cfg, t)
    with target_platform("gpu"):
        jaxpr = jax.make_jaxpr(fwd)(params, tokens).pretty_print()
        names = {ln.split("name=")[1].split()[0] for ln in jaxpr.splitlines() if "name=gemv" in ln} - {"gemv_gpu"}
        assert {n.split("_K")[0] for n in names} == {"gemv", "gemv_norm", "gemv_norm_swiglu"}, names
        got = jax.jit(fwd)(params, tokens)
        monkeypatch.setenv("INFER_DECODE_GEMV", "0")
        jax.clear_caches()  # the switch is read when a program is traced
        assert "pallas_call" not in jax.make_jaxpr(fwd)(params, tokens).pretty_print()
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,swiglu", [(jnp.float32, False), (jnp.float32, True), (jnp.bfloat16, True)])
def test_the_expert_gemv_matches_its_twin_and_numpy(dtype, swiglu):
    """An MoE decode step's expert projections (pallas_kernels/gemv/expert_gemv_gpu.py, interpreted): 3 tokens x 2
    picked experts (one expert picked twice, one by two tokens), each assignment reading its expert's slice of the
    stacked weight; N = 48 in three column blocks, K = 64 in two chunks."""
    from pallas_kernels.gemv.expert_gemv_gpu import choose_expert_block_n, expert_gemv_gpu
    from pallas_kernels.gemv.expert_gemv_reference import expert_gemv_reference
    rng = np.random.default_rng(5)
    E, K, N, T, k = 6, 64, 48, 3, 2
    x = jnp.asarray(rng.normal(size=(T, K)), dtype)
    w, w2 = (jnp.asarray(rng.normal(size=(E, K, N)) / 8, dtype) for _ in range(2))
    ids = jnp.asarray([1, 4, 4, 0, 5, 5], jnp.int32)
    rows = jnp.arange(T * k, dtype=jnp.int32) // k
    got = expert_gemv_gpu(x, w, ids, rows, w2 if swiglu else None, block_n=16, block_k=32, interpret=True)
    want = expert_gemv_reference(x, w, ids, rows, w2 if swiglu else None)
    f = lambda a: np.asarray(a, np.float64)
    y = np.einsum("ak,akn->an", f(x)[np.asarray(rows)], f(w)[np.asarray(ids)])
    if swiglu:
        y2 = np.einsum("ak,akn->an", f(x)[np.asarray(rows)], f(w2)[np.asarray(ids)])
        y = y / (1 + np.exp(-y)) * y2
    assert got.shape == (T * k, N) and got.dtype == dtype
    # block_n divides N whatever the grid: 48 columns over 512 assignments would take 64 if only the grid counted
    assert choose_expert_block_n(512, 48) == 16 and choose_expert_block_n(64, 768) == 64
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    g32, w32 = np.asarray(got, np.float32), np.asarray(want, np.float32)
    np.testing.assert_allclose(g32, w32, rtol=tol, atol=tol * np.abs(w32).max())
    np.testing.assert_allclose(g32, y, rtol=tol, atol=tol * np.abs(y).max())
