"""Speculative decoding inside the engine (infer/engine/speculation.py, infer/engine/verify_step.py).

Greedy: every request's tokens equal those of the same engine without speculation, under random arrivals,
shared prefixes, parallel samples and preemption, with proposals both accepted and rejected. After every
step each running sequence owns exactly the pages its computed tokens need, and the prefix cache holds only
pages whose keys/values are those of committed tokens. Sampled: the first tokens are exact samples of the
target (a chi-square test against exact enumeration on a model with an 8-token vocabulary).
"""
import dataclasses

import jax
import numpy as np
import pytest
from conftest import make_cfg, serve_requests

import infer
from infer.engine import Engine
from infer.engine.block_manager import ROOT_HASH, page_hash
from infer.engine.speculation import NgramProposer, SpeculativeConfig
from infer.generation.ngram import ngram_proposals

Z = 8
V = 4  # a 4-token vocabulary: exact enumeration of the first tokens, and contexts prompt lookup matches often
# One model and one set of engine options (one set of compiled step shapes: compiling is what these tests
# would spend their time on) for every test; 12 pages make the greedy workload preempt.
OPTS = dict(num_pages=12, page_size=Z, max_num_seqs=8, max_num_batched_tokens=32, max_model_len=32)
SPEC = SpeculativeConfig("ngram", k=3, max_batch=8, min_ngram=1, max_ngram=3)


@pytest.fixture(scope="module")
def small():
    cfg = make_cfg(vocab_size=V, max_seq_len=64)
    params = infer.init_params(cfg, jax.random.PRNGKey(1))
    # sharper next-token distributions than the random init's (a stronger statistical test)
    return cfg, jax.tree_util.tree_map(lambda x: x * 4.0 if x.ndim == 2 and x.shape[-1] == V else x, params)


def repetitive_workload(cfg, seed, n=8, shared=6):
    """Prompts made of repeated random fragments (prompt lookup finds matches), half sharing a prefix, random
    arrival steps, greedy and sampled requests, lengths up to 20 new tokens."""
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, cfg.vocab_size, size=shared).tolist()
    prompts, per = [], []
    for i in range(n):
        frag = rng.integers(0, cfg.vocab_size, size=int(rng.integers(2, 6))).tolist()
        body = (frag * 8)[:int(rng.integers(3, 14))]
        prompts.append((prefix if i % 2 == 0 else []) + body)
        per.append(infer.SamplingParams(temperature=0.0, max_new_tokens=int(rng.integers(4, 12)),
                                        speculate=i % 4 != 3))  # every fourth opts out
    arrivals = sorted(int(a) for a in rng.integers(0, 10, size=n))
    return prompts, per, arrivals


def _pages_follow_computed(engine):
    """After a step, each running sequence owns exactly the pages of its computed tokens, and hashes no more."""
    bm = engine.blocks
    for s in engine.scheduler.running:
        assert len(bm.table(s.seq_id)) == bm.pages_for(s.num_computed), "pages past the computed tokens"
        assert len(bm.hashes[s.seq_id]) <= s.num_computed // Z
    bm.check()


def serve(engine, prompts, per, arrivals, n=1):
    """Each request added at its arrival step, the pages checked after every step; outputs in prompt order."""
    return serve_requests(engine, prompts, per, arrivals, n, each_step=_pages_follow_computed)


@pytest.fixture(scope="module")
def greedy_pair(small):
    """The same workload (n = 2 samples each) through an engine without and one with speculation.

    "Without": the same speculative engine with every request opted out (speculate=False), so it never
    proposes: its decode steps run the plain program (infer/engine/device_step.py), its prefill steps the
    verify program with no proposals, which draws exactly as the plain one (and shares this module's compiled
    shapes; test_engine.py checks the plain engine against infer.generate)."""
    cfg, params = small
    prompts, per, arrivals = repetitive_workload(cfg, seed=0)
    plain = Engine(params, cfg, **OPTS, speculative=SPEC)
    serve_plain = [dataclasses.replace(p, speculate=False) for p in per]
    spec = Engine(params, cfg, **OPTS, speculative=SPEC)
    spec.shapes_seen, step_shapes = set(), spec.step_shapes

    def recorded(scheduled):
        shape = step_shapes(scheduled)
        spec.shapes_seen.add(tuple(sorted(shape.items())))
        return shape
    spec.step_shapes = recorded
    want = serve(plain, prompts, serve_plain, arrivals, n=2)
    assert plain.stats()["spec_proposed_tokens"] == 0
    return prompts, want, serve(spec, prompts, per, arrivals, n=2), plain, spec


def test_greedy_tokens_are_identical_with_and_without_speculation(greedy_pair):
    prompts, want, got, _, spec = greedy_pair
    for w, g in zip(want, got):
        assert [o.token_ids for o in g.outputs] == [o.token_ids for o in w.outputs]
        assert [o.finish_reason for o in g.outputs] == [o.finish_reason for o in w.outputs]
    s = spec.stats()
    assert s["preemptions"] > 0
    assert s["spec_accepted_tokens"] > 0, "no proposal was ever accepted: the test proves nothing"
    assert s["spec_proposed_tokens"] > s["spec_accepted_tokens"], "no proposal was ever rejected"
    assert s["spec_emitted_tokens"] == s["spec_accepted_tokens"] + s["spec_verify_runs"]
    assert s["spec_tokens_per_pass"] > 1


def _committed_hashes(outputs):
    """The chained hashes of every full page of every committed token prefix (prompt + output[:-1])."""
    out = set()
    for o in outputs:
        for c in o.outputs:
            toks = o.prompt_token_ids + c.token_ids[:-1]
            h = ROOT_HASH
            for j in range(len(toks) // Z):
                h = page_hash(h, toks[j * Z:(j + 1) * Z])
                out.add(h)
    return out


def test_the_prefix_cache_never_covers_a_rejected_token(greedy_pair):
    _, want, got, plain, spec = greedy_pair
    assert set(spec.blocks.cached) <= _committed_hashes(got)
    # the pages' contents too: a page hashed with rejected proposals' keys/values in it differs from the plain
    # engine's page of the same prefix
    common = set(spec.blocks.cached) & set(plain.blocks.cached)
    assert len(common) > 3
    for h in common:
        for name in ("k", "v"):
            a = np.asarray(spec.kv[name][:, spec.blocks.cached[h]])
            b = np.asarray(plain.kv[name][:, plain.blocks.cached[h]])
            np.testing.assert_allclose(a, b, atol=1e-4, err_msg=f"cached page {h.hex()[:8]} ({name})")


def test_every_step_shape_is_one_warmup_compiles(greedy_pair):
    """Warm-up compiles all_step_shapes (test_engine.py counts the compilations of that path); here every shape
    the speculative engine stepped with is among them (compiling them all costs more than this module)."""
    spec = greedy_pair[4]
    table = [tuple(sorted(d.items())) for d in spec.all_step_shapes()]
    assert spec.shapes_seen and all(shape in table for shape in spec.shapes_seen)
    assert any(dict(sh).get("verify") and dict(sh)["max_q_len"] == 4 for sh in spec.shapes_seen)


def test_the_batch_and_sequence_off_switches(small):
    cfg, params = small
    prompts, per, arrivals = repetitive_workload(cfg, seed=3, n=4)
    busy = Engine(params, cfg, **OPTS, speculative=SpeculativeConfig(k=3, max_batch=1, min_ngram=1))
    serve(busy, prompts, per, [0] * 4)
    assert busy.stats()["spec_steps_batch_off"] > 0
    strict = Engine(params, cfg, **OPTS, speculative=SpeculativeConfig(k=3, min_accepted=3.5, cooldown=1000,
                                                                        min_ngram=1))
    serve(strict, prompts[:1], per[:1], [0])
    s = strict.stats()
    assert s["spec_sequence_pauses"] == 1 and s["spec_verify_runs"] <= 2


def test_ngram_proposer_on_the_host():
    p = NgramProposer(min_ngram=1, max_ngram=3)
    assert p.propose([[1, 2, 3, 9, 1, 2], [5, 6, 7], [4]], [3, 2, 1]) == [[3, 9, 1], [], []]
    # the matcher run with numpy is the device loops' matcher (infer/generation/ngram.py) run with jnp
    rng = np.random.default_rng(0)
    ctx, lens = rng.integers(0, 3, size=(6, 20)), np.array([1, 2, 5, 9, 17, 20])
    host = ngram_proposals(ctx, lens, 4, 1, 3, xp=np)
    device = ngram_proposals(jax.numpy.asarray(ctx), jax.numpy.asarray(lens), 4, 1, 3)
    for h, d in zip(host, device):
        np.testing.assert_array_equal(h, np.asarray(d))


def _exact_first_tokens(params, cfg, prompt, V, n):
    """P(t_1..t_n | prompt) over all V^n continuations (temperature 1, no filters), by the uncached forward."""
    joint = np.ones((1,))
    prefixes = [[]]
    for _ in range(n):
        logits = infer.forward(params, cfg, np.array([prompt + p for p in prefixes]))[:, -1]
        q = np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1), np.float64)
        joint = (joint[:, None] * q).reshape(-1)
        prefixes = [p + [t] for p in prefixes for t in range(V)]
    return joint


def test_sampled_first_tokens_are_exact_target_samples(small):
    """Three tokens per request: the first from the prompt's step, the next from verify runs (one proposal:
    accepted, or the residual; then the bonus token or another run), against P(t1, t2, t3) enumerated."""
    from scipy.stats import chisquare
    cfg, params = small
    N, n = 512, 3
    prompt = [0, 1, 2, 3, 2, 1]  # every token occurs: the proposer always proposes (1-grams match)
    eng = Engine(params, cfg, **OPTS, speculative=SpeculativeConfig(k=3, max_batch=8, min_accepted=0.0,
                                                                    min_ngram=1))
    outs = {}
    for start in range(0, N, 64):  # 64 at a time: the pool holds their shared prompt page and 8 running
        for i in range(start, start + 64):
            eng.add_request(prompt, infer.SamplingParams(temperature=1.0, seed=i, max_new_tokens=n))
        outs.update(eng.run_to_completion())
    s = eng.stats()
    assert s["spec_verify_runs"] >= N and 0 < s["spec_acceptance_rate"] < 1
    counts = np.zeros((V ** n,))
    for o in outs.values():
        counts[int(np.ravel_multi_index(o.token_ids[:n], (V,) * n))] += 1
    expected = _exact_first_tokens(params, cfg, prompt, V, n)
    # pool the rare cells so every expected count is >= 5 (the chi-square approximation's rule of thumb)
    order = np.argsort(expected)
    e, c = expected[order] * N, counts[order]
    cut = int(np.searchsorted(np.cumsum(e), 5.0)) + 1
    e, c = np.concatenate([[e[:cut].sum()], e[cut:]]), np.concatenate([[c[:cut].sum()], c[cut:]])
    assert c.sum() == N
    e = e * (N / e.sum())  # float64 rounding of the enumeration
    assert chisquare(c, e).pvalue > 1e-4
