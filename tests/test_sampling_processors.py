"""The logits processors (infer/sampling/processors.py) and top_logprobs against plain numpy references.

Fixed logits and fixed token histories; every case is one call of one jitted program (fixed shapes), so the
enumeration costs one compile. The references count tokens with Python loops, independent of the scatters."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import hypothesis_examples
from infer.config import SamplingParams
from infer.config.sampling_params import batch_arrays
from infer.sampling import sample
from infer.sampling.processors import apply_processors, processing_arrays, top_logprobs

S, V, W = 4, 11, 12


def ref_process(logits, sp: SamplingParams, history, num_prompt):
    """One row, the documented order: repetition, frequency + presence, logit_bias, min_tokens."""
    x = logits.astype(np.float64).copy()
    output = history[num_prompt:]
    for t in set(history):
        x[t] = x[t] / sp.repetition_penalty if x[t] > 0 else x[t] * sp.repetition_penalty
    for t in set(output):
        c = output.count(t)
        x[t] -= sp.frequency_penalty * c + sp.presence_penalty
    for t, b in sp.logit_bias:
        x[t] += b
    if len(output) < sp.min_tokens:
        for t in sp.stop_token_ids:
            x[t] = -np.inf
    return x


_jit_apply = jax.jit(apply_processors)


def run(per, histories, prompts):
    proc = processing_arrays(per, histories, prompts, S, W, V)
    return proc, np.asarray(_jit_apply(jnp.asarray(LOGITS), proc))


RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0, 2, (S, V)).astype(np.float32)
LOGITS[:, 0] = 0.0  # a zero logit: repetition leaves it at 0 either way
HISTORIES = [[1, 2, 2, 3], [3, 3, 3, 4, 5, 1], [0, 7], [i % V for i in range(W)]]  # the last: a full window
PROMPTS = [2, 1, 2, 5]  # row 2 has no output yet: only repetition (prompt) applies

CASES = [SamplingParams(presence_penalty=p, frequency_penalty=f, repetition_penalty=r)
         for p, f, r in itertools.product((0.0, 0.5, -1.5), (0.0, 0.7, -2.0), (1.0, 1.3, 0.8))]


@pytest.mark.parametrize("chunk", range(0, len(CASES), S))
def test_penalties_equal_the_numpy_reference(chunk):
    per = (CASES[chunk:chunk + S] + CASES[:S])[:S]  # four settings per batch, each row its own
    _, got = run(per, HISTORIES, PROMPTS)
    for s in range(S):
        want = ref_process(LOGITS[s], per[s], HISTORIES[s], PROMPTS[s])
        np.testing.assert_allclose(got[s], want, rtol=1e-6, atol=1e-6, err_msg=f"row {s}: {per[s]}")


def test_logit_bias_and_min_tokens_equal_the_reference():
    per = [SamplingParams(logit_bias={4: 5.0, 9: -100.0, 2: 0.25}),
           SamplingParams(min_tokens=6, stop_token_ids=(3, 8)),  # 5 output tokens < 6: 3 and 8 masked
           SamplingParams(min_tokens=1, stop_token_ids=(3,), logit_bias={3: 2.0}),  # 1 output token: not masked
           SamplingParams(logit_bias={i: float(i) - 5 for i in range(V)}, presence_penalty=1.0, min_tokens=99,
                          stop_token_ids=(10,))]
    hist = [[1, 2], [9, 1, 1, 1, 1, 1], [5, 6], [4, 4, 5]]
    prompts = [2, 1, 1, 1]
    _, got = run(per, hist, prompts)
    for s in range(S):
        want = ref_process(LOGITS[s], per[s], hist[s], prompts[s])
        np.testing.assert_allclose(got[s], want, rtol=1e-6, atol=1e-6, err_msg=f"row {s}")
    assert np.isneginf(got[1, [3, 8]]).all() and np.isfinite(got[2]).all()


def test_neutral_rows_are_untouched_and_a_neutral_step_is_the_identity():
    per = [SamplingParams(), SamplingParams(frequency_penalty=1.0), SamplingParams(), SamplingParams()]
    proc, got = run(per, HISTORIES, PROMPTS)
    np.testing.assert_array_equal(got[[0, 2, 3]], LOGITS[[0, 2, 3]])
    assert not np.array_equal(got[1], LOGITS[1])
    _, got = run([SamplingParams()] * S, HISTORIES, PROMPTS)
    np.testing.assert_array_equal(got, LOGITS)
    # a neutral step's history is one cached device array (no host build, no transfer)
    assert isinstance(processing_arrays([SamplingParams()], [[1]], [1], S, W, V)["history"], jax.Array)
    assert isinstance(proc["history"], jax.Array)  # numpy here would be another entry in the step's jit cache


def test_every_position_of_a_verify_row_gets_its_rows_processing():
    per = [CASES[5], CASES[13], SamplingParams(logit_bias={1: 3.0}), CASES[26]]
    proc = processing_arrays(per, HISTORIES, PROMPTS, S, W, V)
    x_SKV = np.stack([LOGITS, LOGITS[::-1], 2 * LOGITS], axis=1)
    got = np.asarray(jax.jit(apply_processors)(jnp.asarray(x_SKV), proc))
    for k in range(3):
        for s in range(S):
            want = ref_process(x_SKV[s, k], per[s], HISTORIES[s], PROMPTS[s])
            np.testing.assert_allclose(got[s, k], want, rtol=1e-6, atol=1e-6)


def test_greedy_sampling_draws_the_argmax_of_the_processed_logits():
    per = [SamplingParams(temperature=0.0, logit_bias={int(np.argmin(LOGITS[0])): 100.0}),
           SamplingParams(temperature=0.0, frequency_penalty=2.0),
           SamplingParams(temperature=0.0, repetition_penalty=5.0),
           SamplingParams(temperature=0.0)]
    _, processed = run(per, HISTORIES, PROMPTS)
    samp = batch_arrays([SamplingParams(temperature=0.0)] * S)
    drawn = np.asarray(sample(jnp.asarray(processed), samp, jnp.zeros((S, 2), jnp.uint32)))
    want = [int(np.argmax(ref_process(LOGITS[s], per[s], HISTORIES[s], PROMPTS[s]))) for s in range(S)]
    assert drawn.tolist() == want
    assert want[0] == int(np.argmin(LOGITS[0]))


@settings(max_examples=hypothesis_examples(25), deadline=None)
@given(st.data())
def test_processors_equal_the_reference_on_random_histories(data):
    per, hist, prompts = [], [], []
    for _ in range(S):
        n = data.draw(st.integers(1, W))
        hist.append(data.draw(st.lists(st.integers(0, V - 1), min_size=n, max_size=n)))
        prompts.append(data.draw(st.integers(0, n)))
        bias = data.draw(st.dictionaries(st.integers(0, V - 1), st.floats(-100, 100, width=32), max_size=4))
        num = lambda lo, hi: data.draw(st.floats(lo, hi, width=32))
        per.append(SamplingParams(presence_penalty=num(-2, 2), frequency_penalty=num(-2, 2),
                                  repetition_penalty=num(0.5, 2), logit_bias=bias,
                                  min_tokens=data.draw(st.integers(0, 3)),
                                  stop_token_ids=tuple(data.draw(st.lists(st.integers(0, V - 1), max_size=2)))))
    _, got = run(per, hist, prompts)
    for s in range(S):
        want = ref_process(LOGITS[s], per[s], hist[s], prompts[s])
        np.testing.assert_allclose(got[s], want, rtol=1e-5, atol=1e-4)


def test_top_logprobs_are_the_log_softmax_in_descending_order():
    lp = jax.nn.log_softmax(jnp.asarray(LOGITS), axis=-1)
    proc = processing_arrays([SamplingParams(top_logprobs=3)], [[1]], [1], S, W, V)
    ids, vals = jax.jit(top_logprobs)(lp, proc)
    z = LOGITS.astype(np.float64)
    ref = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    order = np.argsort(-ref, axis=-1, kind="stable")
    assert ids.shape == (S, V) == vals.shape  # N = min(20, V)
    np.testing.assert_array_equal(np.asarray(ids), order)
    np.testing.assert_allclose(np.asarray(vals), np.take_along_axis(ref, order, -1), rtol=1e-5, atol=1e-6)
    # nobody asks: zeros, no top_k run
    ids, vals = jax.jit(top_logprobs)(lp, processing_arrays([SamplingParams()], [[1]], [1], S, W, V))
    assert not np.asarray(ids).any() and not np.asarray(vals).any()


def test_bad_processor_values_name_the_field():
    for kw, field in [(dict(presence_penalty=2.5), "presence_penalty"), (dict(frequency_penalty=-3), "frequency_penalty"),
                      (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(logit_bias={1: 101.0}), "logit_bias"),
                      (dict(logit_bias={-1: 1.0}), "logit_bias"), (dict(logit_bias={i: 1.0 for i in range(301)}),
                                                                   "logit_bias"),
                      (dict(logit_bias={"a": 1.0}), "logit_bias"), (dict(min_tokens=-1), "min_tokens"),
                      (dict(ignore_eos=1), "ignore_eos"), (dict(top_logprobs=21), "top_logprobs")]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**kw)
    assert SamplingParams(logit_bias={"7": 1, 3: -2.5}).logit_bias == ((3, -2.5), (7, 1.0))


def test_the_static_generate_loop_refuses_processors_by_name():
    for kw, field in [(dict(presence_penalty=0.5), "presence_penalty"), (dict(min_tokens=2), "min_tokens"),
                      (dict(logit_bias={1: 1.0}), "logit_bias"), (dict(top_logprobs=2), "top_logprobs")]:
        with pytest.raises(ValueError, match=f"{field}: not supported by the static generate loop"):
            batch_arrays([SamplingParams(**kw)])
    batch_arrays([SamplingParams(ignore_eos=True, presence_penalty=0.0)])  # neutral values pass


def test_which_samples_may_take_speculative_proposals():
    """One rule (SamplingParams.may_speculate) for every speculation opt-out: the request's own switch, a grammar
    (its matcher never rolls back), a penalty, and min_tokens until it is met; logit_bias keeps speculating."""
    from infer.config.sampling_params import Constraint
    assert SamplingParams().may_speculate(0) and SamplingParams(logit_bias={3: 1.0}).may_speculate(0)
    assert not SamplingParams(speculate=False).may_speculate(5)
    assert not SamplingParams(constraint=Constraint.regex("[0-9]+")).may_speculate(5)
    for penalty in (dict(presence_penalty=0.5), dict(frequency_penalty=-0.5), dict(repetition_penalty=1.2)):
        assert not SamplingParams(**penalty).may_speculate(5)
    assert [SamplingParams(min_tokens=3).may_speculate(n) for n in (0, 2, 3, 9)] == [False, False, True, True]
