"""Penalties, logit_bias, min_tokens and top_logprobs through the engine, against a host reference decode.

The reference runs the uncached forward pass (infer.model.forward) over the whole sequence, padded to one fixed
length (causal: the padding changes no earlier logit; one compile), applies the numpy processors of
tests/test_sampling_processors.py to the last real position's logits and takes the argmax: independent of the
engine's paging, batching, scatters and lax.conds.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import serve_requests
from test_sampling_processors import ref_process

import infer
from infer.engine import Engine, RequestError
from infer.engine.device_step import engine_step
from infer.engine.speculation import SpeculativeConfig
from infer.model.forward import forward

L = 48  # reference sequences padded to this length
# test_engine.py's engine options (the same compiled step programs; the suite's compilation cache shares them)
OPTS = dict(num_pages=96, page_size=4, max_num_seqs=4, max_num_batched_tokens=16)
PROMPTS = [[5, 17, 3, 3, 90, 5, 17], [200, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [7, 7, 7]]


def ref_decode(tiny, prompt, sp):
    """(greedy tokens under the processors, per token the raw logits' log_softmax) by the uncached forward."""
    cfg, params = tiny
    toks, lps = list(prompt), []
    for _ in range(sp.max_new_tokens):
        padded = np.zeros((1, L), np.int32)
        padded[0, :len(toks)] = toks
        raw = np.asarray(forward(params, cfg, jnp.asarray(padded)))[0, len(toks) - 1].astype(np.float64)
        lps.append(raw - raw.max() - np.log(np.exp(raw - raw.max()).sum()))
        t = int(np.argmax(ref_process(raw, sp, toks, len(prompt))))
        toks.append(t)
        if t in sp.stop_token_ids and len(toks) - len(prompt) > sp.min_tokens - 1:
            break
    return toks[len(prompt):], lps


def check_top(out, lps, n):
    for got, lp in zip(out.outputs[0].top_logprobs, lps):
        ids = [t for t, _ in got]
        assert len(got) == n and ids == list(np.argsort(-lp, kind="stable")[:n])
        np.testing.assert_allclose([v for _, v in got], lp[ids], atol=2e-4)
        assert all(a >= b for (_, a), (_, b) in zip(got, got[1:]))
    # the drawn token's logprob: the same raw distribution
    np.testing.assert_allclose(out.outputs[0].logprobs, [lp[t] for t, lp in zip(out.token_ids, lps)], atol=2e-4)


def wave(presence, frequency, repetition, bias):
    G = dict(temperature=0.0, max_new_tokens=10)
    return [infer.SamplingParams(**G, presence_penalty=presence, frequency_penalty=frequency, top_logprobs=5),
            infer.SamplingParams(**G, repetition_penalty=repetition, logit_bias=bias, top_logprobs=20),
            infer.SamplingParams(**G)]


def test_penalized_requests_equal_the_reference_and_new_values_compile_nothing(tiny):
    eng = Engine(tiny[1], tiny[0], **OPTS, enable_prefix_caching=False)  # each wave schedules the same steps
    compiled = None
    for per in (wave(1.5, 0.0, 1.0, {}), wave(-0.5, 1.2, 1.8, {9: 4.0, 10: -100.0})):
        outs = serve_requests(eng, PROMPTS, per, arrivals=[0, 1, 3])
        for p, sp, out in zip(PROMPTS, per, outs):
            want, lps = ref_decode(tiny, p, sp)
            assert out.token_ids == want, sp
            if sp.top_logprobs:
                check_top(out, lps, sp.top_logprobs)
            else:
                assert out.outputs[0].top_logprobs is None
        if compiled is None:
            compiled = engine_step._cache_size()
            plain = [ref_decode(tiny, p, infer.SamplingParams(temperature=0.0, max_new_tokens=10))[0]
                     for p in PROMPTS]
            assert [o.token_ids for o in outs[:2]] != plain[:2], "the penalties changed nothing: a weak test"
    assert engine_step._cache_size() == compiled  # new penalty values, the same programs


def test_min_tokens_holds_back_the_stop_id_and_ignore_eos_has_nothing_to_ignore(tiny):
    eng = Engine(tiny[1], tiny[0], **OPTS)
    prompt = PROMPTS[0]
    first = ref_decode(tiny, prompt, infer.SamplingParams(temperature=0.0, max_new_tokens=1))[0][0]
    stop = infer.SamplingParams(temperature=0.0, max_new_tokens=10, stop_token_ids=(first,))
    held = infer.SamplingParams(temperature=0.0, max_new_tokens=10, stop_token_ids=(first,), min_tokens=4)
    a, b = serve_requests(eng, [prompt, prompt], [stop, held])
    assert a.token_ids == [first] and a.finish_reason == "stop"
    assert first not in b.token_ids[:4] and len(b.token_ids) >= 5
    assert b.token_ids == ref_decode(tiny, prompt, held)[0]
    # infer.LLM hands them to its engine as they are (the same compiled programs)
    llm = infer.LLM.from_params(tiny[1], tiny[0], **OPTS)
    assert llm.generate(prompt, held, use_tqdm=False)[0].token_ids == b.token_ids
    # logit ids outside the vocabulary are refused by name before queueing
    with pytest.raises(RequestError, match="logit_bias"):
        eng.add_request(prompt, infer.SamplingParams(logit_bias={tiny[0].vocab_size: 1.0}))


def test_speculation_is_off_for_penalized_requests_and_exact_for_logit_bias(tiny):
    cfg, params = tiny
    # few step shapes to compile: one row, 32 positions, 8-token chunks
    eng = Engine(params, cfg, num_pages=16, page_size=4, max_num_seqs=1, max_num_batched_tokens=8, max_model_len=32,
                 speculative=SpeculativeConfig(k=3, min_ngram=1, max_ngram=3, min_accepted=0.0))
    prompt = [4, 8, 15, 16, 23, 42] * 2
    pen = infer.SamplingParams(temperature=0.0, max_new_tokens=8, repetition_penalty=1.3, top_logprobs=2)
    out, = serve_requests(eng, [prompt], pen)
    assert eng.stats()["spec_proposed_tokens"] == 0
    assert out.token_ids == ref_decode(tiny, prompt, pen)[0]
    biased = infer.SamplingParams(temperature=0.0, max_new_tokens=8, logit_bias={4: 3.0, 8: 2.0}, top_logprobs=3)
    out, = serve_requests(eng, [prompt], biased)
    assert eng.stats()["spec_proposed_tokens"] > 0  # speculated, and still the reference's tokens
    want, lps = ref_decode(tiny, prompt, biased)
    assert out.token_ids == want
    check_top(out, lps, 3)
