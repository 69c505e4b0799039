"""The paged step's cost follows the step's sequences, not the pool, and a mix of steps reuses the compiled step.

FLOPs come from XLA's cost_analysis of the compiled step (no timing: performance is measured by
`python -m infer.bench --only step_scaling`).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infer
from infer.bench.step_scaling import compiled_cost, decode_batch
from infer.kv import SequenceStep, build_metadata, init_pools
from infer.model.step import run_step, step

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
Z = 16


@pytest.fixture(scope="module")
def model():
    cfg = infer.load_config("tiny", dtype="float32")
    return cfg, infer.init_params(cfg, jax.random.PRNGKey(0))


def _step_flops(params, cfg, tokens_T, meta, num_pages):
    kv = init_pools(cfg, num_pages, Z)
    lowered = jax.jit(run_step, static_argnames="cfg").lower(
        params, cfg, jnp.asarray(tokens_T), jax.tree_util.tree_map(jnp.asarray, meta), kv)
    flops = compiled_cost(lowered.compile()).get("flops", 0.0)
    assert flops > 0, "cost_analysis reported no FLOPs"
    return flops


def _case(kind, cached, num_pages, cfg):
    """(tokens_T, meta): a 64-token prefill chunk after `cached` tokens, or 4 decode rows after `cached` tokens."""
    if kind == "decode":
        return decode_batch(4, cached, Z, num_pages, np.random.default_rng(0))
    n = 64
    pages = np.random.default_rng(0).choice(num_pages, -(-(cached + n) // Z), replace=False)
    seq = SequenceStep(tokens=(np.arange(n) % cfg.vocab_size).tolist(), pages=pages.tolist(), cached=cached)
    return build_metadata([seq], page_size=Z, num_pages=num_pages)


@pytest.mark.parametrize("kind", ["prefill", "decode"])
def test_step_flops_do_not_grow_with_the_pool(model, kind):
    cfg, params = model
    P = 40
    flops = {pool: _step_flops(params, cfg, *_case(kind, 40, pool, cfg), pool) for pool in (P, 8 * P)}
    assert abs(flops[8 * P] - flops[P]) / flops[P] < 0.05, flops
    # The measure is sensitive: ten times the cached context (more pages per sequence) does cost more.
    assert _step_flops(params, cfg, *_case(kind, 400, 8 * P, cfg), 8 * P) > 1.05 * flops[8 * P]


BUCKETS = dict(num_tokens=32, num_seqs=4, pages_per_seq=8, num_logits=16)  # positions per sequence: 8 * Z = 128
NUM_PAGES = 64


def _random_mix(rng, cfg):
    """A step of 1..4 sequences: decode rows, prefill chunks, chunks continuing a prefix, verify runs."""
    seqs, budget = [], BUCKETS["num_tokens"]
    pages = rng.permutation(NUM_PAGES)[:BUCKETS["num_seqs"] * BUCKETS["pages_per_seq"]].reshape(BUCKETS["num_seqs"], -1)
    logits = 0
    for r in range(rng.integers(1, BUCKETS["num_seqs"] + 1)):
        kind = rng.choice(["decode", "prefill", "continue", "verify"])
        n = {"decode": 1, "prefill": rng.integers(1, 17), "continue": rng.integers(2, 17),
             "verify": rng.integers(2, 6)}[kind]
        n = int(min(n, budget))
        if n == 0:
            break
        cached = 0 if kind == "prefill" else int(rng.integers(1, 128 - n))
        mode = "all" if kind == "verify" and logits + n <= BUCKETS["num_logits"] else "last"
        logits += n if mode == "all" else 1
        seqs.append(SequenceStep(tokens=rng.integers(0, cfg.vocab_size, n).tolist(),
                                 pages=pages[r, :-(-(cached + n) // Z)].tolist(), cached=cached, logits=mode))
        budget -= n
    return build_metadata(seqs, page_size=Z, num_pages=NUM_PAGES, **BUCKETS)


def test_no_recompilation_for_a_new_mix_of_steps():
    """Runs the check below in a fresh process: compile counts are per process, and on the CI machine the
    first compile of this test twice crashed XLA (a segfault inside backend_compile) in a worker whose
    earlier tests had filled its caches; a fresh process has neither problem."""
    import subprocess
    import sys
    env = dict(os.environ, INFER_STEP_COST_INNER="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                        f"{__file__}::test_no_recompilation_in_a_fresh_process"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.skipif(os.environ.get("INFER_STEP_COST_INNER") != "1",
                    reason="run in its own process by test_no_recompilation_for_a_new_mix_of_steps")
def test_no_recompilation_in_a_fresh_process(model):
    cfg, params = model
    kv = init_pools(cfg, NUM_PAGES, Z)
    rng = np.random.default_rng(0)
    # Warm-up: the compiled step is keyed by the buckets and by max_q_len (the power-of-two bucket of the
    # longest query run in the step, a static field that sizes the attention grid): one step per value.
    for q in (1, 2, 4, 8, 16, 32):
        tokens_T, meta = build_metadata([SequenceStep(tokens=[1] * q, pages=[0, 1])], page_size=Z,
                                        num_pages=NUM_PAGES, **BUCKETS)
        _, kv = step(params, cfg, tokens_T, meta, kv)
    compiles = []
    listener = lambda event, duration, **kw: compiles.append(event) if event == COMPILE_EVENT else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        seen = set()
        for _ in range(12):
            tokens_T, meta = _random_mix(rng, cfg)
            seen.add(meta.max_q_len)
            logits_OV, kv = step(params, cfg, tokens_T, meta, kv)
        jax.block_until_ready(logits_OV)
        assert len(seen) > 1, "the random mixes should span several max_q_len buckets"
        assert compiles == [], f"{len(compiles)} compilations after warm-up"
        # the counter itself works: a new num_tokens bucket does compile (56: a size no other test pins, since the
        # jit caches are per process and other tests in this worker may have compiled the powers of two)
        tokens_T, meta = build_metadata([SequenceStep(tokens=[1], pages=[0])], page_size=Z, num_pages=NUM_PAGES,
                                        **{**BUCKETS, "num_tokens": 56})
        _, kv = step(params, cfg, tokens_T, meta, kv)
        assert compiles, "compilation listener saw nothing for a new bucket"
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
