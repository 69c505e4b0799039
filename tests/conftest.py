"""Shared fixtures. Tests run on CPU in float32 unless they say otherwise."""
import atexit
import contextlib
import gc
import os
import shutil
import tempfile
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _persistent_compilation_cache():
    """One XLA compilation cache on disk for the whole test run, shared by the xdist workers and every
    subprocess a test starts (they inherit the environment).

    `release_compiled_programs` below drops every compiled program after each module, so without it each module
    compiles the tiny model's and SmolLM2's step programs again; with it a later module (or worker, or fresh
    process) loads the executable the first one wrote (XLA:CPU executables serialize in JAX 0.10: a hit skips
    the backend compile; the /jax/core/compile/backend_compile_duration event still fires, so the tests that
    count compilations count the same). A fresh directory per session, made by the process that starts first
    (the xdist controller, or plain pytest) before the workers start, and removed when it exits; set
    JAX_COMPILATION_CACHE_DIR yourself to keep one across runs, or INFER_TEST_NO_COMPILE_CACHE=1 to run
    without it.

    No size limit: with one, jax's LRU cache scans the whole directory on every write (a stat and an atime-file
    read per entry, ~27 us each: 27 ms per write at 1,000 entries, 137 ms at 5,000), so the suite's thousands of
    entries made its writes quadratic (300 tiny programs: 51 CPU-s without the limit, 94 with it;
    tests/test_ragged_reference.py over a cache dir already holding 5,000 entries: 12.6 CPU-s without, 22.4 with).
    Without the limit there is no file lock either: an entry read while the other worker is half-way through
    writing it fails jax's zlib decompression (truncated stream or checksum), which jax reports as a warning and
    answers with a fresh compile."""
    if os.environ.get("INFER_TEST_NO_COMPILE_CACHE"):
        return
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        path = tempfile.mkdtemp(prefix="infer-test-xla-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


_persistent_compilation_cache()


def _fast_xla_compiles():
    """Tests compile many small programs and run each a few times, so XLA:CPU's LLVM optimization is most of
    their cost: at optimization level 0 the suite's tests spend 30-40% less CPU (tests/test_generate.py +
    test_speculative_accept.py 121 -> 74 CPU-s, tests/test_engine.py 473 -> 328, measured back to back without
    the persistent cache; BENCHMARKS.md, "The test suite's time"). The programs' results stay within the tests'
    tolerances (the same HLO, less optimized machine code); benchmarks and the product keep XLA's default.
    Subprocesses inherit it. INFER_TEST_XLA_OPT=1 runs the tests with XLA's default level; a level already
    in XLA_FLAGS is kept."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("INFER_TEST_XLA_OPT") or "xla_backend_optimization_level" in flags:
        return
    os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


_fast_xla_compiles()


def subprocess_xla_flags(*extra: str) -> str:
    """XLA_FLAGS for a subprocess that sets flags of its own (e.g. a forced host device count): `extra` plus the
    test run's optimization level (`_fast_xla_compiles`), which replacing XLA_FLAGS outright would drop
    (tests/test_multiprocess.py's `python -m infer generate --config tiny` process: 30.0 CPU-s at XLA's default
    level, 15.6 at level 0)."""
    keep = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_backend_optimization_level")]
    return " ".join(keep + list(extra))

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

import infer  # noqa: E402

# Hypothesis: "ci" (chosen when CI is set) is derandomized, so a run cannot pass or fail by which examples it
# drew; "dev" (the default elsewhere) draws new examples each run; HYPOTHESIS_PROFILE=long runs 10x the
# examples. The property tests scale their own example counts with `hypothesis_examples`.
hypothesis_settings.register_profile("ci", max_examples=100, derandomize=True, database=None, deadline=None,
                                     print_blob=True)
hypothesis_settings.register_profile("dev", max_examples=100, deadline=None)
hypothesis_settings.register_profile("long", max_examples=1000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def hypothesis_examples(n: int) -> int:
    """`n` examples under the ci and dev profiles, scaled with the loaded profile's max_examples (10x for long)."""
    return max(1, n * hypothesis_settings.default.max_examples // 100)


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


@pytest.fixture
def no_persistent_compilation_cache():
    """For a test that means a real XLA compile (not a load from the session's persistent cache)."""
    from jax.experimental.compilation_cache import compilation_cache
    was = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # jax decides once per process whether the cache is used: ask again
    yield
    jax.config.update("jax_enable_compilation_cache", was)
    compilation_cache.reset_cache()


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


@contextlib.contextmanager
def serving(config, engine):
    """Run uvicorn with `config` (a uvicorn.Config of one of our apps) in a thread; yields its port. On exit it
    stops the server and checks that the server and `engine`'s loop thread both ended."""
    import uvicorn
    srv = uvicorn.Server(config)
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    assert wait_until(lambda: srv.started or not th.is_alive()) and srv.started, "the server did not start"
    try:
        yield srv.servers[0].sockets[0].getsockname()[1]
    finally:
        srv.should_exit = True
        th.join(30)
        assert not th.is_alive(), "the server did not shut down"
        assert not engine._thread.is_alive(), "the engine loop did not stop"


def serve_requests(engine, prompts, sampling, arrivals=None, n=1, each_step=None):
    """Add each request at its arrival step (default all at step 0) and step the engine until all finish; outputs in
    prompt order. `each_step(engine)` runs after every step (checks of the engine's state); at the end the block
    manager must be consistent and own no page."""
    arrivals = arrivals or [0] * len(prompts)
    per = sampling if isinstance(sampling, (list, tuple)) else [sampling] * len(prompts)
    ids, outs, step = {}, {}, 0
    while len(outs) < len(prompts):
        for i, a in enumerate(arrivals):
            if a == step:
                ids[engine.add_request(prompts[i], per[i], n=n)] = i
        for u in engine.step():
            if u.output is not None:
                outs[ids[u.request_id]] = u.output
        if each_step is not None:
            each_step(engine)
        step += 1
        assert step < 2000, "the engine stopped making progress"
    engine.blocks.check()
    assert engine.stats()["pages_in_use"] == 0, "finished requests left pages owned"
    return [outs[i] for i in range(len(prompts))]


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


SMOLLM2 = "smollm2-135m-instruct"
# The modules that load SmolLM2 carry this mark: with `--dist loadgroup` (the Makefile's test line) they run on
# one xdist worker, which loads the model once (`smollm2` below) and compiles its programs for one worker.
smollm2_group = pytest.mark.xdist_group("smollm2")


@pytest.fixture(scope="session")
def smollm2():
    """(cfg, params, tokenizer) of SmolLM2-135M-Instruct from its GGUF (float32), loaded once per worker."""
    cfg, params = infer.load_model_dir(SMOLLM2)
    return cfg, params, infer.load_tokenizer(SMOLLM2, vocab_size=cfg.vocab_size)

