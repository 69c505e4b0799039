"""Shared fixtures. Tests run on CPU in float32 unless they say otherwise."""
import gc
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

import infer  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drop every compiled program after each test module.

    XLA:CPU maps each compiled executable's code into memory (many mappings for a model step), and jax's
    caches keep them all alive. One xdist worker running half the suite reached ~59,000 mappings, close to
    Linux's default vm.max_map_count of 65,530; past it mmap fails and XLA segfaults inside backend_compile
    (how CI crashed three times, at whichever test compiled next). Clearing per module keeps a worker's
    mappings at what one module needs (a full run peaked at ~24,000).

    To measure it: INFER_MAPS_LOG=/tmp/maps.txt appends each test's mapping count per worker (add
    INFER_KEEP_COMPILED=1 to see the growth without the clearing), e.g.
    INFER_MAPS_LOG=/tmp/maps.txt .venv/bin/python -m pytest -q -n 2 tests; sort -n -k1 /tmp/maps.txt | tail -1
    """
    yield
    if not os.environ.get("INFER_KEEP_COMPILED"):
        jax.clear_caches()
        gc.collect()


def pytest_runtest_logfinish(nodeid, location):
    path = os.environ.get("INFER_MAPS_LOG")
    if path and os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as f:
            n = sum(1 for _ in f)
        with open(path, "a") as f:
            f.write(f"{n} {os.environ.get('PYTEST_XDIST_WORKER', 'main')} {nodeid}\n")


def wait_until(cond, timeout=120.0, interval=0.01):
    """Poll `cond()` until it returns something truthy or `timeout` seconds pass; returns its last value.

    For tests that wait on another thread or process: the deadline only bounds a hang (generous, so a slow or
    loaded machine passes); a fast machine returns at the first poll that sees the condition."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(interval)


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
