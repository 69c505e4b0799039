"""What the current device can actually do: memory bandwidth, matmul FLOP/s, and who it is.

    measure_bandwidth(n_bytes)   bytes/s of reading a large float32 array (column sums; the
                                 decode access pattern), or of a copy with mode="copy"
    measure_matmul_flops(M, dt)  FLOP/s of an [M, M] @ [M, M] matmul (2·M³ FLOPs)
    device_info()                platform, device kind, count, JAX version, memory

On CPU these measured numbers stand in for a datasheet (`HardwareProfile.measured`);
on GPU/TPU they are reported beside the datasheet peak. Results are cached per process
(same arguments -> same number), so every experiment of one run uses the same probe.
"""
from __future__ import annotations

import functools
import os
import platform
import sys

import jax
import jax.numpy as jnp

from infer.bench.timing import time_fn


@functools.lru_cache(maxsize=None)
def measure_bandwidth(n_bytes: int = 256 << 20, mode: str = "read", repeats: int = 10) -> float:
    """Achievable memory bandwidth in bytes/s (median of `repeats` blocked runs).

    mode "read": column sums of a [n/4096, 1024] float32 array (reads n bytes, writes 4 KiB), the
    access pattern of a decode step, which reads weights and KV and writes almost nothing.
    mode "copy": y = x + 1 (reads n, writes n; counted as 2n). On CPU a copy's fresh output
    pages are faulted in on every call, so it reports far below the read bandwidth.
    """
    if mode not in ("read", "copy"):
        raise ValueError(f"mode: must be 'read' or 'copy', got {mode!r}")
    cols = 1024
    rows = max(1, n_bytes // (4 * cols))
    x = jax.block_until_ready(jnp.ones((rows, cols), jnp.float32))
    if mode == "read":
        f, moved = jax.jit(lambda a: jnp.sum(a, axis=0)), 4 * rows * cols
    else:
        f, moved = jax.jit(lambda a: a + 1.0), 2 * 4 * rows * cols
    t = time_fn(lambda: f(x), warmup=2, repeats=repeats)
    return moved / t.median_s


@functools.lru_cache(maxsize=None)
def measure_matmul_flops(size: int = 4096, dtype: str = "bfloat16", repeats: int = 10) -> float:
    """Achievable dense matmul FLOP/s for [size, size] @ [size, size] in `dtype`."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (size, size), jnp.float32).astype(dtype)
    a, b = jax.block_until_ready((a, b))
    f = jax.jit(lambda x, y: x @ y)
    t = time_fn(lambda: f(a, b), warmup=2, repeats=repeats)
    return 2 * size ** 3 / t.median_s


def device_memory_bytes() -> float:
    """Memory the first device may use: the allocator's limit on GPU/TPU, physical RAM on CPU."""
    d = jax.devices()[0]
    try:
        stats = d.memory_stats() or {}
    except Exception:  # not every backend implements memory_stats
        stats = {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("nan")


def device_info() -> dict:
    devs = jax.devices()
    d = devs[0]
    import jaxlib
    return {
        "backend": jax.default_backend(),
        "device_kind": d.device_kind,
        "device_count": len(devs),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jaxlib, "__version__", "?"),
        "python": sys.version.split()[0],
        "device_memory_bytes": device_memory_bytes(),
    }


def describe(info: dict) -> str:
    if info["backend"] == "cpu":
        return f"CPU ({info['processor']}, {info['cpu_count']} cores visible)"
    return f"{info['device_count']} x {info['device_kind']} ({info['backend']})"
