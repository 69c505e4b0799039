"""The fused residual add + RMSNorm (pallas_kernels/norm/): the Triton kernel in interpret mode against its pure-JAX
twin, the twin against the model's RMSNorm written out in numpy, and which one the dispatcher runs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.norm.add_rms_norm_gpu import add_rms_norm_gpu
from pallas_kernels.norm.add_rms_norm_reference import add_rms_norm_reference
from pallas_kernels.norm.dispatch import add_rms_norm
from pallas_kernels.platform import target_platform


def _case(M, D, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, d = (jnp.asarray(rng.normal(size=(M, D)) * 3, dtype) for _ in range(2))
    return x, d, jnp.asarray(rng.uniform(0.5, 1.5, size=(D,)), dtype)


@pytest.mark.parametrize("dtype,M,D", [(jnp.float32, 3, 64), (jnp.bfloat16, 5, 256), (jnp.float32, 1, 4096)])
def test_kernel_matches_the_twin(dtype, M, D):
    x, d, w = _case(M, D, dtype)
    h, y = add_rms_norm_gpu(x, d, w, 1e-5, interpret=True)
    rh, ry = add_rms_norm_reference(x, d, w, 1e-5)
    np.testing.assert_array_equal(np.asarray(h, np.float32), np.asarray(rh, np.float32))  # the same add
    tol = 1e-6 if dtype == jnp.float32 else 1e-2  # rsqrt vs 1/sqrt, then one bf16 rounding
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ry, np.float32), rtol=tol, atol=tol)


def test_the_twin_is_the_models_rms_norm():
    x, d, w = _case(4, 32, jnp.float32, seed=1)
    h = np.asarray(x, np.float64) + np.asarray(d, np.float64)
    want = np.asarray(w) * h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(add_rms_norm_reference(x, d, w, 1e-6)[1]), want, rtol=1e-5, atol=1e-6)


def test_the_dispatcher_runs_the_kernel_only_where_it_applies():
    x, d, w = _case(2, 64, jnp.float32)
    with pytest.raises(ValueError, match="D=48 must be a power of two"):
        add_rms_norm_gpu(*_case(2, 48, jnp.float32), 1e-5, interpret=True)
    jaxpr = lambda *a: str(jax.make_jaxpr(lambda x, d, w: add_rms_norm(x, d, w, 1e-5))(*a))
    assert "pallas_call" not in jaxpr(x, d, w)  # CPU: XLA's fusions
    with target_platform("gpu"):
        assert "pallas_call" in jaxpr(x[None], d[None], w)  # [B, T, D] rows -> the kernel
        assert "pallas_call" not in jaxpr(*_case(2, 48, jnp.float32))  # 48 is no Triton block: the twin
