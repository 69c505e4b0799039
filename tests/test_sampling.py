"""Sampling filters against an independent numpy implementation of the documented order, by enumeration."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import hypothesis_examples
from infer import sampling
from infer.sampling import filters
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


# ------------------------------------------------------------- the sort-free filters against their references
def ref_keep(z, top_k, top_p):
    """Top-k then top-p membership of one row by the documented rule in float64 (rank order: logit descending,
    id ascending), and the smallest |mass-before - top_p| over the candidates (how close the row is to a
    boundary that float32 rounding may decide either way)."""
    z = np.asarray(z, np.float64)
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    cand = order[:top_k] if top_k > 0 else order
    pr = _softmax(z[cand])
    keep, mass, margin = np.zeros(len(z), bool), 0.0, np.inf
    for idx, pi in zip(cand, pr):
        keep[idx] = mass < top_p or top_p >= 1.0
        margin = min(margin, abs(mass - top_p))
        mass += pi
    keep[order[0]] = True
    return keep, margin


PB, PV = 4, 64  # one padded shape, so the property test compiles each filter once
_threshold_keep, _sorted_keep = jax.jit(filters.threshold_keep), jax.jit(filters.sorted_keep)


@settings(max_examples=hypothesis_examples(80), deadline=None)
@given(st.data())
def test_threshold_filters_keep_what_the_documented_rule_keeps(data):
    """`threshold_keep` (what `filter_logits` runs) against the float64 rule by enumeration, on rows with ties
    (logits rounded to a coarse grid, signed zeros included), -inf entries (a row of n < 64 real tokens is
    padded with -inf) and per-row top_k / top_p. Rows whose nucleus boundary sits within 1e-5 of top_p are
    float32 rounding's call and are skipped."""
    n = data.draw(st.integers(2, PV))
    grid = data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    z = np.full((PB, PV), -np.inf)
    z[:, :n] = rng.standard_normal((PB, n)) * data.draw(st.sampled_from([0.3, 2.0, 6.0]))
    if grid:
        z = np.round(z / grid) * grid  # ties, and -0.0 beside +0.0
    z[rng.random((PB, PV)) < 0.1] = -np.inf
    z[:, rng.integers(n)] = 1.0  # at least one finite logit per row
    k = [data.draw(st.sampled_from([0, 1, 2, n - 1, n, PV, PV + 5, int(rng.integers(1, n + 1))])) for _ in range(PB)]
    p = [data.draw(st.sampled_from([1.0, 0.999, 0.9, 0.5, 0.1, float(rng.uniform(0.01, 1))])) for _ in range(PB)]
    samp = {"top_k": jnp.asarray(k, jnp.int32), "top_p": jnp.asarray(p, jnp.float32)}
    z32 = np.asarray(z, np.float32)
    got = np.asarray(_threshold_keep(jnp.asarray(z32), samp))
    ref = np.asarray(_sorted_keep(jnp.asarray(z32), samp))
    for b in range(PB):
        want, margin = ref_keep(z32[b], k[b], np.float32(p[b]))
        if margin < 1e-5:
            continue
        np.testing.assert_array_equal(got[b], want, err_msg=f"row {b}: top_k={k[b]} top_p={p[b]}")
        np.testing.assert_array_equal(ref[b], want, err_msg=f"reference row {b}")


def test_threshold_filters_equal_the_sort_at_a_real_vocabulary():
    """At V = 49152 with random logits (no exact ties or boundaries): the same kept sets as the two-sort
    reference, top-k alone, top-p alone and both, rows mixing them."""
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.standard_normal((6, 49152)) * 3, jnp.float32)
    for k, p in [([40] * 6, [1.0] * 6), ([0] * 6, [0.95] * 6), ([0, 1, 40, 1000, 49152, 7], [0.9, 1.0, 0.5, 0.95, 0.3, 1.0])]:
        samp = {"top_k": jnp.asarray(k, jnp.int32), "top_p": jnp.asarray(p, jnp.float32)}
        np.testing.assert_array_equal(np.asarray(filters.threshold_keep(z, samp)),
                                      np.asarray(filters.sorted_keep(z, samp)), err_msg=f"top_k={k} top_p={p}")
