"""Sampling filters against an independent numpy implementation of the documented order, by enumeration."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer import sampling
from infer.config import SamplingParams


def _softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def ref_distribution(logits, temperature, top_k, top_p, min_p):
    """The documented order, written as plainly as possible: temperature, top-k, top-p (renormalised), min-p."""
    V = logits.shape[0]
    if temperature == 0:
        out = np.zeros(V)
        out[int(np.argmax(logits))] = 1.0
        return out
    z = logits.astype(np.float64) / temperature
    order = sorted(range(V), key=lambda i: (-z[i], i))
    cand = order[:top_k] if top_k > 0 else order
    pr = _softmax(z[cand])
    kept, mass = [], 0.0
    for idx, pi in zip(cand, pr):
        if mass < top_p:
            kept.append(idx)
        mass += pi
    p_full = _softmax(z)
    kept = [i for i in kept if p_full[i] >= min_p * p_full.max()] or [order[0]]
    out = np.zeros(V)
    out[kept] = _softmax(z[kept])
    return out


CASES = [
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=0.7, top_k=5, top_p=1.0, min_p=0.0),
    dict(temperature=1.3, top_k=0, top_p=0.6, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2),
    dict(temperature=0.9, top_k=8, top_p=0.8, min_p=0.05),
    dict(temperature=2.0, top_k=3, top_p=0.3, min_p=0.5),
    dict(temperature=1.0, top_k=1, top_p=0.01, min_p=0.99),  # everything tight: the top token survives
]


@pytest.mark.parametrize("case", CASES)
def test_filtered_distribution_matches_enumeration(case):
    rng = np.random.RandomState(0)
    logits = rng.randn(4, 24).astype(np.float32) * 2
    sp = SamplingParams(**case)
    got = np.asarray(sampling.probs(jnp.asarray(logits), sp.arrays(4)))
    for b in range(4):
        want = ref_distribution(logits[b], **case)
        np.testing.assert_array_equal(got[b] > 0, want > 0)
        np.testing.assert_allclose(got[b], want, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_samples_never_leave_the_allowed_set(case):
    rng = np.random.RandomState(1)
    logits = rng.randn(3, 24).astype(np.float32) * 2
    sp = SamplingParams(**case)
    allowed = [ref_distribution(logits[b], **case) > 0 for b in range(3)]
    draw = jax.jit(jax.vmap(lambda key: sampling.sample(jnp.asarray(logits), sp.arrays(3), jax.random.split(key, 3))))
    toks = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 2000)))  # [2000, 3]
    for b in range(3):
        assert allowed[b][toks[:, b]].all(), f"row {b} emitted a filtered-out token"
        # and every allowed token with probability >= 5% shows up
        want = ref_distribution(logits[b], **case)
        assert set(np.flatnonzero(want >= 0.05)) <= set(toks[:, b].tolist())


def test_temperature_zero_is_argmax_with_lowest_id_on_ties():
    logits = jnp.asarray([[0.1, 3.0, 3.0, -1.0], [5.0, 1.0, 2.0, 5.0]])
    sp = SamplingParams(temperature=0.0, top_k=2, top_p=0.1)
    toks = sampling.sample(logits, sp.arrays(2), jax.random.split(jax.random.PRNGKey(0), 2))
    np.testing.assert_array_equal(toks, [1, 0])


def test_top_p_uses_the_distribution_renormalised_after_top_k():
    """probs .4/.3/.2/.1: top_k=2 renormalises to .571/.429, so top_p=.5 keeps only the first token.
    (Computing top-p on the un-renormalised distribution would keep two.)"""
    logits = jnp.log(jnp.asarray([[0.4, 0.3, 0.2, 0.1]]))
    p = sampling.probs(logits, SamplingParams(top_k=2, top_p=0.5).arrays(1))
    np.testing.assert_allclose(p[0], [1, 0, 0, 0], atol=1e-6)
    p = sampling.probs(logits, SamplingParams(top_k=0, top_p=0.5).arrays(1))
    np.testing.assert_allclose(p[0], [0.4 / 0.7, 0.3 / 0.7, 0, 0], atol=1e-6)


def test_top_k_keeps_exactly_k_tokens_even_with_ties():
    logits = jnp.asarray([[1.0, 2.0, 2.0, 2.0, 0.0]])
    p = np.asarray(sampling.probs(logits, SamplingParams(top_k=2).arrays(1)))[0]
    np.testing.assert_array_equal(p > 0, [False, True, True, False, False])


def test_min_p_is_measured_on_probabilities_after_temperature():
    """min_p compares probabilities (not logits), after temperature scaling."""
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    p = np.asarray(sampling.probs(logits, SamplingParams(min_p=0.5).arrays(1)))[0]
    np.testing.assert_array_equal(p > 0, [True, True, False, False])  # .3 >= .25, .15 < .25
    # temperature 2 flattens: probs ∝ sqrt(p) -> .15 becomes .548 of the max
    p = np.asarray(sampling.probs(logits, SamplingParams(temperature=2.0, min_p=0.5).arrays(1)))[0]
    np.testing.assert_array_equal(p > 0, [True, True, True, False])


def test_invalid_sampling_params_name_the_field():
    for kw, field in [(dict(temperature=-1), "temperature"), (dict(top_k=-2), "top_k"), (dict(top_p=0), "top_p"),
                      (dict(min_p=1.5), "min_p"), (dict(max_new_tokens=0), "max_new_tokens"),
                      (dict(stop_token_ids=(-3,)), "stop_token_ids")]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**kw)


def test_top_p_one_keeps_every_token_whatever_the_neighbours_use():
    """A row with top_p = 1 in a batch where another row needs the sort: its whole vocabulary survives,
    including tokens whose mass-before rounds to 1.0 in float32 (a flat-ish tail after one huge logit)."""
    V = 4096
    logits = np.zeros((2, V), np.float32)
    logits[:, 0] = 30.0  # token 0 holds almost all the mass: the cumulative sum reaches 1.0 early in float32
    logits[:, 1:] = np.linspace(-5, 5, V - 1)
    samp = {"temperature": jnp.array([1.0, 1.0]), "top_k": jnp.array([0, 0], jnp.int32),
            "top_p": jnp.array([1.0, 0.5]), "min_p": jnp.array([0.0, 0.0])}
    keep = np.isfinite(np.asarray(sampling.filter_logits(jnp.asarray(logits), samp)))
    assert keep[0].all(), f"top_p=1 row lost {int((~keep[0]).sum())} tokens"
    assert keep[1].sum() == 1  # the neighbour really used the sort
