"""The serving engine (infer/engine/): continuous batching over the page pools.

Every output is compared with something independent of the engine's batching: the same
request run alone through `infer.generate` (greedy), or alone through a fresh engine
(sampled), under random arrival steps, shared prefixes, chunked prefill, preemption,
prefix-cache hits, parallel samples, poisoned pages and aborts.
"""
import os

import jax
import numpy as np
import pytest
from conftest import make_cfg, serve_requests

import infer
from infer.config.paths import REPO_ROOT
from infer.engine import Engine, RequestError, StepError
from infer.engine.device_step import engine_step
from infer.engine.engine import SAMPLE_SEED_STRIDE

GREEDY = infer.SamplingParams(temperature=0.0, max_new_tokens=10)
Z = 4


def make_engine(tiny, **kw):
    cfg, params = tiny
    opts = dict(num_pages=96, page_size=Z, max_num_seqs=4, max_num_batched_tokens=16)
    opts.update(kw)
    return Engine(params, cfg, **opts)


def workload(cfg, seed, n=8, shared=0, max_len=30):
    """Prompts of random lengths (some sharing a `shared`-token prefix) and random arrival steps."""
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, cfg.vocab_size, size=shared).tolist()
    prompts = []
    for i in range(n):
        body = rng.integers(0, cfg.vocab_size, size=int(rng.integers(1, max_len))).tolist()
        prompts.append((prefix if i % 2 == 0 else []) + body)
    arrivals = sorted(int(a) for a in rng.integers(0, 12, size=n))
    return prompts, arrivals


serve = serve_requests  # (engine, prompts, sampling, arrivals=None, n=1): outputs in prompt order


def alone(tiny, prompt, sampling):
    cfg, params = tiny
    return infer.generate(params, cfg, [prompt], sampling).tokens[0]


def test_random_mix_equals_each_request_alone_through_generate(tiny):
    cfg, _ = tiny
    prompts, arrivals = workload(cfg, seed=0, shared=9)
    outs = serve(make_engine(tiny), prompts, GREEDY, arrivals)
    for p, o in zip(prompts, outs):
        assert o.token_ids == alone(tiny, p, GREEDY)
        assert o.finish_reason == "length" and len(o.token_ids) == GREEDY.max_new_tokens


def test_sampled_mix_equals_each_request_alone_through_the_engine(tiny):
    cfg, _ = tiny
    prompts, arrivals = workload(cfg, seed=1, shared=6)
    per = [infer.SamplingParams(temperature=0.9, top_k=[0, 20][i % 2], top_p=[1.0, 0.8][i % 2], seed=100 + i,
                                max_new_tokens=8 + i) for i in range(len(prompts))]
    outs = serve(make_engine(tiny), prompts, per, arrivals)
    for p, s, o in zip(prompts, per, outs):
        solo = serve(make_engine(tiny), [p], s)[0]
        assert o.token_ids == solo.token_ids
        assert len(o.token_ids) == s.max_new_tokens
    assert len({tuple(o.token_ids) for o in outs}) == len(outs)  # the seeds really drew different tokens


@pytest.mark.parametrize("budget", [4, 8, 64])
def test_chunked_prefill_size_changes_nothing(tiny, budget):
    cfg, _ = tiny
    prompts, arrivals = workload(cfg, seed=2, n=5, max_len=40)
    outs = serve(make_engine(tiny, max_num_batched_tokens=budget), prompts, GREEDY, arrivals)
    assert [o.token_ids for o in outs] == [alone(tiny, p, GREEDY) for p in prompts]


def test_forced_preemption_changes_no_output(tiny):
    cfg, _ = tiny
    prompts, _ = workload(cfg, seed=3, n=6, max_len=24)
    sp = [GREEDY, infer.SamplingParams(temperature=1.0, seed=7, max_new_tokens=10)] * 3
    big = make_engine(tiny)
    want = serve(big, prompts, sp)
    small = make_engine(tiny, num_pages=12)  # 48 token slots: one long request fits, four do not
    got = serve(small, prompts, sp)
    assert small.stats()["preemptions"] > 0
    assert big.stats()["preemptions"] == 0
    assert [o.token_ids for o in got] == [o.token_ids for o in want]


def test_warm_prefix_cache_skips_the_shared_pages_and_changes_no_output(tiny):
    cfg, _ = tiny
    rng = np.random.default_rng(4)
    system = rng.integers(0, cfg.vocab_size, size=5 * Z + 2).tolist()  # 5 full pages + 2 tokens
    prompts = [system + rng.integers(0, cfg.vocab_size, size=k).tolist() for k in (3, 7, 1)]
    cold_engine = make_engine(tiny, enable_prefix_caching=False)
    cold = serve(cold_engine, prompts, GREEDY)
    warm_engine = make_engine(tiny)
    serve(warm_engine, [system + [1, 2, 3]], GREEDY)  # warms the cache with the system prompt's pages
    before = warm_engine.stats()
    warm = serve(warm_engine, prompts, GREEDY)
    after = warm_engine.stats()
    assert [o.token_ids for o in warm] == [o.token_ids for o in cold]
    assert all(o.metrics.num_cached_tokens == 5 * Z for o in warm)
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == 3 * 5 * Z
    # every prompt token not served by the cache was prefilled, and no more
    assert after["prefill_tokens"] - before["prefill_tokens"] == sum(len(p) for p in prompts) - 3 * 5 * Z
    assert cold_engine.stats()["prefill_tokens"] == sum(len(p) for p in prompts)


def test_prompt_entirely_in_the_cache_still_runs_its_last_token(tiny):
    cfg, _ = tiny
    prompt = list(range(3 * Z))  # exactly three full pages
    eng = make_engine(tiny)
    first = serve(eng, [prompt], GREEDY)[0]
    again = serve(eng, [prompt], GREEDY)[0]
    assert again.metrics.num_cached_tokens == 2 * Z  # the last page is recomputed: its last token gives logits
    assert again.token_ids == first.token_ids == alone(tiny, prompt, GREEDY)


@pytest.mark.parametrize("caching", [True, False])
def test_poisoned_reused_pages_change_no_output(tiny, caching):
    """Every page handed out fresh is filled with NaN first: stale data would show up as NaN logits."""
    cfg, _ = tiny
    prompts, arrivals = workload(cfg, seed=5, n=10, shared=6)
    sp = infer.SamplingParams(temperature=0.0, max_new_tokens=9)
    clean = serve(make_engine(tiny, num_pages=20, enable_prefix_caching=caching), prompts, sp, arrivals)
    eng = make_engine(tiny, num_pages=20, enable_prefix_caching=caching, poison_freed_pages=True)
    poisoned = serve(eng, prompts, sp, arrivals)
    assert [o.token_ids for o in poisoned] == [o.token_ids for o in clean]
    assert all(np.isfinite(o.outputs[0].logprobs).all() for o in poisoned)
    total_pages = sum(eng.blocks.pages_for(len(p) + sp.max_new_tokens) for p in prompts)
    assert total_pages > 20  # pages really were reused by later owners


def test_parallel_samples_share_the_prompt_and_equal_separate_requests(tiny):
    cfg, _ = tiny
    prompt = np.random.default_rng(6).integers(0, cfg.vocab_size, size=2 * Z + 3).tolist()  # partial last page
    sp = infer.SamplingParams(temperature=1.0, seed=11, max_new_tokens=8)
    eng = make_engine(tiny)
    rid = eng.add_request(prompt, sp, n=3)
    out = eng.run_to_completion()[rid]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert eng.stats()["prefill_tokens"] == len(prompt)  # the prompt ran once for all three samples
    eng.blocks.check()
    for c in out.outputs:
        seed = (sp.seed + c.index * SAMPLE_SEED_STRIDE) % 2 ** 32
        solo = serve(make_engine(tiny), [prompt], infer.SamplingParams(temperature=1.0, seed=seed, max_new_tokens=8))
        assert c.token_ids == solo[0].token_ids
    assert len({tuple(c.token_ids) for c in out.outputs}) == 3


def test_parallel_samples_copy_the_shared_partial_page_on_write(tiny):
    cfg, _ = tiny
    eng = make_engine(tiny)
    copies = []
    real_drain = eng.blocks.drain

    def spy():
        c, f = real_drain()
        copies.extend(c)
        return c, f
    eng.blocks.drain = spy
    prompt = list(range(1, 2 * Z + 2))  # 2 full pages + 1 token: the partial page is shared by the samples
    rid = eng.add_request(prompt, GREEDY, n=3)
    out = eng.run_to_completion()[rid]
    assert len(copies) == 2  # two of the three samples copy the shared page on their first write
    assert all(c.token_ids == alone(tiny, prompt, GREEDY) for c in out.outputs)


def test_a_fixed_workload_compiles_nothing_after_warmup(tiny):
    cfg, _ = tiny
    # 32 positions: 4 page buckets, 16 step shapes to compile (64 positions and 30-token prompts: 5 buckets, 19
    # shapes, 98 steps where this workload takes 59); prompts <= 19 tokens + 16 sampled / 10 greedy fit 32.
    eng = make_engine(tiny, num_pages=40, max_model_len=32)
    eng.warmup()
    compiled = engine_step._cache_size()
    prompts, arrivals = workload(cfg, seed=7, n=8, shared=5, max_len=14)
    serve(eng, prompts, [GREEDY, infer.SamplingParams(temperature=0.7, seed=3, max_new_tokens=16)] * 4, arrivals, n=2)
    assert engine_step._cache_size() == compiled


def test_bad_requests_are_refused_by_name_and_the_others_keep_running(tiny):
    cfg, _ = tiny
    eng = make_engine(tiny, num_pages=8, max_model_len=64)
    good = [1, 2, 3, 4, 5]
    rid = eng.add_request(good, GREEDY, request_id="good")
    eng.step()
    bad = [
        ("empty", [], GREEDY, "empty prompt"),
        ("big-id", [1, cfg.vocab_size], GREEDY, f"token id {cfg.vocab_size} outside"),
        ("too-long", list(range(60)), GREEDY, "exceeds the context"),
        ("pool", [1] * 30, infer.SamplingParams(max_new_tokens=30), "more than the whole pool"),
        ("good", good, GREEDY, "still running"),
        ("text", "hello", GREEDY, "needs an engine with a tokenizer"),
        ("n", good, GREEDY, "n must be"),
    ]
    for name, prompt, sp, msg in bad:
        with pytest.raises(RequestError, match=f"request '{name}'.*{msg}"):
            eng.add_request(prompt, sp, request_id=name, n=0 if name == "n" else 1)
    outs = eng.run_to_completion()
    assert list(outs) == [rid]
    assert outs[rid].token_ids == alone(tiny, good, GREEDY)


def test_abort_frees_everything_and_the_others_finish(tiny):
    cfg, _ = tiny
    prompts, _ = workload(cfg, seed=8, n=4)
    eng = make_engine(tiny)
    ids = [eng.add_request(p, GREEDY) for p in prompts]
    eng.step()
    eng.step()
    assert eng.abort(ids[1]) and not eng.abort("nope")
    updates = []
    outs = {}
    while eng.has_unfinished_requests():
        for u in eng.step():
            updates.append(u)
            if u.output is not None:
                outs[u.request_id] = u.output
    assert [u.finish_reason for u in updates if u.request_id == ids[1]] == ["abort"]
    assert set(outs) == {ids[0], ids[2], ids[3]}
    for i in (0, 2, 3):
        assert outs[ids[i]].token_ids == alone(tiny, prompts[i], GREEDY)
    assert eng.stats()["pages_in_use"] == 0
    eng.blocks.check()
    # a request with n samples aborted before its prompt forked still ends every sample
    rid = eng.add_request(list(range(1, 40)), GREEDY, n=3)
    eng.step()
    assert eng.abort(rid)
    ended = [u for u in eng.step() if u.request_id == rid]
    assert sorted(u.index for u in ended) == [0, 1, 2] and all(u.finish_reason == "abort" for u in ended)
    assert not eng.has_unfinished_requests() and eng.stats()["pages_in_use"] == 0


def test_sampling_values_the_step_arrays_cannot_hold_are_refused_before_queueing(tiny):
    eng = make_engine(tiny)
    for field, value in (("top_k", 2 ** 31), ("top_k", 2 ** 63), ("temperature", float("inf")),
                         ("temperature", float("nan")), ("max_new_tokens", 2 ** 31), ("seed", 2 ** 32)):
        with pytest.raises(ValueError, match=field):
            infer.SamplingParams(**{field: value})
    sp = infer.SamplingParams(temperature=0.0, max_new_tokens=4)
    object.__setattr__(sp, "top_k", 2 ** 31)  # past the dataclass's own check: the engine still refuses it
    with pytest.raises(RequestError, match="do not fit the step's arrays"):
        eng.add_request([1, 2, 3], sp, request_id="bad")
    assert not eng.has_unfinished_requests()


def test_a_step_failure_is_blamed_on_the_request_that_caused_it_and_the_others_finish(tiny):
    """A request whose sampling row cannot be built (slipped past add_request) fails the step before the device
    call: StepError names it alone; once it is aborted the others go on, token for token as alone."""
    cfg, _ = tiny
    prompts, _ = workload(cfg, seed=5, n=3)
    eng = make_engine(tiny)
    ids = [eng.add_request(p, GREEDY) for p in prompts]
    eng.step()
    bad_sp = infer.SamplingParams(temperature=0.0, max_new_tokens=10)
    bad = eng.add_request([7, 8, 9, 10, 11], bad_sp, n=2)
    object.__setattr__(bad_sp, "top_k", 2 ** 31)
    outs = {}
    with pytest.raises(StepError) as e:
        for _ in range(100):  # it fails the first step that samples for it, once its prompt has run
            outs.update({u.request_id: u.output for u in eng.step() if u.output is not None})
    assert e.value.request_ids == [bad] and not e.value.pools_lost
    assert eng.abort(bad)
    outs.update(eng.run_to_completion())
    assert set(outs) == set(ids)
    for rid, p in zip(ids, prompts):
        assert outs[rid].token_ids == alone(tiny, p, GREEDY)
    assert eng.stats()["pages_in_use"] == 0 and eng.stats()["running"] == 0
    eng.blocks.check()


def test_stream_yields_one_requests_tokens_and_keeps_the_others(tiny):
    cfg, _ = tiny
    eng = make_engine(tiny)
    other = eng.add_request([5, 6, 7], GREEDY)
    streamed = [u for u in eng.stream([1, 2, 3, 4], GREEDY)]
    assert sum((u.new_token_ids for u in streamed), []) == alone(tiny, [1, 2, 3, 4], GREEDY)
    assert streamed[-1].finished and not any(u.finished for u in streamed[:-1])
    rest = eng.run_to_completion()
    assert rest[other].token_ids == alone(tiny, [5, 6, 7], GREEDY)
    # closing a stream early aborts its request
    gen = eng.stream([9, 9, 9], infer.SamplingParams(temperature=0.0, max_new_tokens=50))
    next(gen)
    gen.close()
    assert not eng.has_unfinished_requests() and eng.stats()["pages_in_use"] == 0


@pytest.fixture(scope="module")
def text_model():
    cfg, params = infer.load_model_dir(os.path.join(REPO_ROOT, "models", "target"))
    tok = infer.load_tokenizer(os.path.join(REPO_ROOT, "models", "target"), vocab_size=cfg.vocab_size)
    return cfg, params, tok


def test_text_streams_and_stop_strings(text_model):
    cfg, params, tok = text_model
    eng = Engine(params, cfg, num_pages=64, page_size=8, max_num_seqs=4, max_num_batched_tokens=32, tokenizer=tok)
    sp = infer.SamplingParams(temperature=0.0, max_new_tokens=40)
    ref = infer.generate_text(params, cfg, tok, "def add(a, b):", sp)
    streamed = list(eng.stream("def add(a, b):", sp))
    full = "".join(u.new_text for u in streamed)
    assert full == streamed[-1].output.text == ref.text
    assert sum((u.new_token_ids for u in streamed), []) == ref.token_ids
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = full[:full.index(stop)]
    streamed = list(eng.stream("def add(a, b):", sp, stop=[stop, "\x00never"]))
    assert "".join(u.new_text for u in streamed) == streamed[-1].output.text == cut
    assert streamed[-1].finish_reason == "stop"


def test_request_metrics_are_consistent(tiny):
    cfg, _ = tiny
    prompts, arrivals = workload(cfg, seed=9, n=6)
    outs = serve(make_engine(tiny), prompts, GREEDY, arrivals)
    for o in outs:
        m = o.metrics
        assert 0 <= m.queue_s <= m.ttft_s <= m.e2e_s
        assert m.num_output_tokens == len(o.token_ids) == len(m.token_times)
        assert m.tpot_s > 0 and len(m.itl_s) == len(o.token_ids) - 1
    from infer.engine.metrics import summarize
    s = summarize([o.metrics for o in outs])
    assert s["ttft_s"]["p50"] <= s["ttft_s"]["p90"] <= s["ttft_s"]["p99"]
    assert s["requests"] == len(outs) and s["output_tokens"] == sum(len(o.token_ids) for o in outs)


def test_the_pallas_kernels_serve_the_same_tokens(tiny):
    """The engine runs whatever the step runs: the ragged/decode Pallas kernels (interpret mode here)."""
    cfg = make_cfg(head_dim=16, attention_impl="reference")  # the Triton kernels tile H >= 16
    params = infer.init_params(cfg, jax.random.PRNGKey(1))
    prompts, arrivals = workload(cfg, seed=10, n=2, shared=5, max_len=12)
    sp = infer.SamplingParams(temperature=0.0, max_new_tokens=3)
    ref = serve(make_engine((cfg, params)), prompts, sp, arrivals)
    pallas = serve(make_engine((cfg.replace(attention_impl="pallas"), params)), prompts, sp, arrivals)
    assert [o.token_ids for o in pallas] == [o.token_ids for o in ref]


def test_a_prompts_last_one_token_chunk_draws_all_its_parallel_samples(tiny):
    """A 9-token prompt with 8-token steps finishes its prefill with a 1-token chunk: a decode-shaped step whose one
    sequence (not yet forked) draws n = 2 samples. The step's rows must hold both samples (the decode shape's rows
    bucketed to the samples, not only the sequences: one row failed the step)."""
    cfg, _ = tiny
    prompt = np.random.default_rng(8).integers(0, cfg.vocab_size, size=9).tolist()
    eng = make_engine(tiny, max_num_batched_tokens=8)
    rid = eng.add_request(prompt, GREEDY, n=2)
    out = eng.run_to_completion()[rid]
    assert [c.token_ids for c in out.outputs] == [alone(tiny, prompt, GREEDY)] * 2
