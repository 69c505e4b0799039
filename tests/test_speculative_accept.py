"""Exactness of the speculative acceptance rule (infer/speculative.py).

1. Exact enumeration: with context-dependent draft/target tables on a small
   vocabulary, enumerate every draft sequence, weight it by the draft's
   probability and the rule's acceptance probabilities (from the
   implementation), and recurse into the next round after a short round. The
   distribution of the first emitted tokens must equal the target's product
   distribution q(t_1) q(t_2 | t_1) ... to float32 rounding.
2. Monte Carlo of `accept` itself (its random draws): the joint law of
   (num_accepted, next_token) for fixed drafts against the formula written
   out independently here, with a non-asymptotic bound (`bernstein_radius`).
"""
import itertools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.generation import speculative_accept as SP


# --------------------------------------------------------------------------------------------
# Statistical bound shared with tests/test_speculative_generate.py.
#
# Counts c ~ Binomial(N, p) for each of m cells (p known exactly). Bernstein's inequality for
# the sum of N i.i.d. variables X = 1[cell] - p, |X| <= 1, Var X = p(1-p):
#     P(|c - N p| >= t) <= 2 exp(-(t^2 / 2) / (N p (1-p) + t / 3)).
# Setting the right side to delta / m and solving the quadratic t^2 - (2L/3) t - 2 L N p(1-p) = 0
# with L = ln(2 m / delta) gives the radius
#     t(p) = L / 3 + sqrt(L^2 / 9 + 2 L N p (1-p)).
# By the union bound, a correct sampler has |c - N p| < t(p) in every cell simultaneously except
# with probability <= delta. We use delta = 1e-6 (and fixed seeds), so a correct implementation
# fails with probability below one in a million, while the bound is tight enough (relative
# radius ~ sqrt(2 L / (N p))) to catch biases of a few percent of p in well-populated cells.
# --------------------------------------------------------------------------------------------
FALSE_FAILURE_PROB = 1e-6


def bernstein_radius(p, n, m, delta=FALSE_FAILURE_PROB):
    p = np.asarray(p, np.float64)
    L = math.log(2 * m / delta)
    return L / 3 + np.sqrt(L * L / 9 + 2 * L * n * p * (1 - p))


def bernstein_statistic(counts, p_exact, m=None, delta=FALSE_FAILURE_PROB):
    """max over cells of |count - N p| / t(p): <= 1 for a correct sampler except w.p. delta.

    m is the number of cells the union bound covers: counts.size by default; pass the total when
    several families of cells (e.g. several marginals of the same samples) are tested together.
    """
    counts = np.asarray(counts, np.float64).ravel()
    p_exact = np.asarray(p_exact, np.float64).ravel()
    n = counts.sum()
    radius = bernstein_radius(p_exact, n, m or counts.size, delta)
    return float(np.max(np.abs(counts - n * p_exact) / radius))


# --------------------------------------------------------------------------------------------
# Context-dependent draft and target tables.
# --------------------------------------------------------------------------------------------
V = 4


class Tables:
    """p(. | prefix) and q(. | prefix) over a tiny vocabulary, deterministic per prefix."""

    def __init__(self, kind, seed=0):
        self.kind, self.seed, self._cache = kind, seed, {}

    def _rng(self, prefix, salt):
        # crc32, not hash(): str hashes are salted per process, and the tables must be reproducible.
        return np.random.RandomState(zlib.crc32(repr((self.seed, salt, tuple(prefix))).encode()))

    def _dirichlet(self, prefix, salt, zeros=False):
        rng = self._rng(prefix, salt)
        d = rng.dirichlet(np.full(V, 0.7))
        if zeros:  # zero out a random non-empty proper subset
            mask = rng.rand(V) < 0.5
            mask[rng.randint(V)] = False
            d = np.where(mask, 0.0, d)
            d /= d.sum()
        return d

    def _onehot(self, prefix, salt):
        return np.eye(V)[self._rng(prefix, salt).randint(V)]

    def pq(self, prefix):
        prefix = tuple(prefix)
        if prefix not in self._cache:
            kind = self.kind
            if kind == "random":
                p, q = self._dirichlet(prefix, "p"), self._dirichlet(prefix, "q")
            elif kind == "p_zero_where_q_positive":
                p, q = self._dirichlet(prefix, "p", zeros=True), self._dirichlet(prefix, "q")
            elif kind == "q_zero_where_p_positive":
                p, q = self._dirichlet(prefix, "p"), self._dirichlet(prefix, "q", zeros=True)
            elif kind == "both_have_zeros":
                p, q = self._dirichlet(prefix, "p", zeros=True), self._dirichlet(prefix, "q", zeros=True)
            elif kind == "p_equals_q":
                p = q = self._dirichlet(prefix, "q")
            elif kind == "disjoint_supports":
                q = self._dirichlet(prefix, "q")
                q[:2] = 0.0
                q /= q.sum()
                p = np.zeros(V)
                p[:2] = self._dirichlet(prefix, "p")[:2]
                p /= p.sum()
            elif kind == "one_hot":  # temperature 0: argmaxes agree about half the time
                p, q = self._onehot(prefix, "p"), self._onehot(prefix, "q" if len(prefix) % 2 else "p")
            else:
                raise ValueError(kind)
            self._cache[prefix] = (p.astype(np.float32), q.astype(np.float32))
        return self._cache[prefix]

    def p(self, prefix):
        return self.pq(prefix)[0]

    def q(self, prefix):
        return self.pq(prefix)[1]


KINDS = ["random", "p_zero_where_q_positive", "q_zero_where_p_positive", "both_have_zeros", "p_equals_q",
         "disjoint_supports", "one_hot"]

_acc_probs = jax.jit(jax.vmap(SP.acceptance_probs))
_emit = jax.jit(jax.vmap(jax.vmap(SP.emit_distribution, in_axes=(None, None, 0)), in_axes=(0, 0, None)))


def round_distribution(tables, prefix, k):
    """{emitted tuple: probability} of one speculative round at `prefix`, via the implementation's pieces."""
    drafts = list(itertools.product(range(V), repeat=k))
    dp = np.stack([[tables.p(prefix + x[:i]) for i in range(k)] for x in drafts])  # [X, k, V]
    tp = np.stack([[tables.q(prefix + x[:i]) for i in range(k + 1)] for x in drafts])  # [X, k+1, V]
    x_arr = np.asarray(drafts, np.int32)
    a = np.asarray(_acc_probs(jnp.asarray(x_arr), jnp.asarray(dp), jnp.asarray(tp)), np.float64)  # [X, k]
    emit = np.asarray(_emit(jnp.asarray(dp), jnp.asarray(tp), jnp.arange(k + 1)), np.float64)  # [X, k+1, V]
    out = {}
    for xi, x in enumerate(drafts):
        p_draft = np.prod([dp[xi, i, x[i]] for i in range(k)], dtype=np.float64)
        if p_draft == 0:
            continue
        for j in range(k + 1):
            p_j = np.prod(a[xi, :j]) * ((1 - a[xi, j]) if j < k else 1.0)
            if p_j == 0:
                continue
            for t in range(V):
                w = p_draft * p_j * emit[xi, j, t]
                if w:
                    seq = x[:j] + (t,)
                    out[seq] = out.get(seq, 0.0) + w
    return out


def emitted_distribution(tables, prefix, k, n):
    """{first n emitted tokens: probability}, running further rounds while fewer than n are emitted."""
    out = {}
    for seq, w in round_distribution(tables, prefix, k).items():
        if len(seq) >= n:
            out[seq[:n]] = out.get(seq[:n], 0.0) + w
        else:
            for rest, w2 in emitted_distribution(tables, prefix + seq, k, n - len(seq)).items():
                out[seq + rest] = out.get(seq + rest, 0.0) + w * w2
    return out


def target_distribution(tables, prefix, n):
    out = {}
    for seq in itertools.product(range(V), repeat=n):
        out[seq] = np.prod([float(tables.q(prefix + seq[:i])[seq[i]]) for i in range(n)])
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k,n", [(1, 2), (2, 3), (3, 2)])
def test_emitted_tokens_are_exact_target_samples_by_enumeration(kind, k, n):
    tables = Tables(kind, seed=k)
    got = emitted_distribution(tables, (), k, n)
    want = target_distribution(tables, (), n)
    seqs = sorted(set(got) | set(want))
    g = np.array([got.get(s, 0.0) for s in seqs])
    w = np.array([want.get(s, 0.0) for s in seqs])
    # Float32 probabilities: each product of <= 2k+2 factors carries relative error ~1e-6.
    np.testing.assert_allclose(g, w, atol=2e-6, err_msg=f"kind={kind} k={k}: emitted != target")
    assert abs(g.sum() - 1) < 1e-5
    # The tokens the target forbids are never emitted.
    assert all(got.get(s, 0.0) == 0.0 for s in seqs if want.get(s, 0.0) == 0.0)


def test_p_equals_q_accepts_every_proposable_draft():
    tables = Tables("p_equals_q")
    k = 3
    drafts = [x for x in itertools.product(range(V), repeat=k)
              if all(tables.p(x[:i])[x[i]] > 0 for i in range(k))]
    dp = np.stack([[tables.p(x[:i]) for i in range(k)] for x in drafts])
    tp = np.stack([[tables.q(x[:i]) for i in range(k + 1)] for x in drafts])
    a = np.asarray(_acc_probs(jnp.asarray(drafts, jnp.int32), jnp.asarray(dp), jnp.asarray(tp)))
    assert np.all(a == 1.0)


def test_zero_edge_cases_of_acceptance_probs():
    p = jnp.array([[0.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0]])
    q = jnp.array([[0.5, 0.0, 0.5, 0.0], [0.25, 0.75, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    # draft 0 had p = 0 < q: accepted surely; draft 1 had q = 0 < p: always rejected.
    np.testing.assert_array_equal(SP.acceptance_probs(jnp.array([0, 0]), p, q), [1.0, 0.5])
    np.testing.assert_array_equal(SP.acceptance_probs(jnp.array([1, 1]), p, q), [0.0, 1.0])
    # p = q = 0 at the draft: rejected (q forbids it); the residual max(q - p, 0) still follows q.
    np.testing.assert_array_equal(SP.acceptance_probs(jnp.array([3, 2]), p, q), [0.0, 0.0])
    # Residual with no mass (q <= p everywhere): falls back to q itself.
    same = jnp.array([[0.25, 0.75, 0.0, 0.0]])
    np.testing.assert_allclose(SP.emit_distribution(same, jnp.concatenate([same, q[2:]]), 0), same[0])


def test_shape_errors_name_the_tensor():
    with pytest.raises(ValueError, match=r"target_probs: expected \[k\+1=3, V=4\]"):
        SP.accept(jnp.array([0, 1]), jnp.full((2, 4), 0.25), jnp.full((2, 4), 0.25), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"draft_probs: expected \[k=2, V\]"):
        SP.accept(jnp.array([0, 1]), jnp.full((3, 4), 0.25), jnp.full((3, 4), 0.25), jax.random.PRNGKey(0))


# --------------------------------------------------------------------------------------------
# Monte Carlo of `accept` (its own random draws), vmapped over many keys.
# --------------------------------------------------------------------------------------------
def spec_joint(draft_tokens, p, q):
    """P(num_accepted = j, next = t) [k+1, V], written out from the rule's definition (float64)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    k = len(draft_tokens)
    a = []
    for i, x in enumerate(draft_tokens):
        if p[i, x] > 0:
            a.append(min(1.0, q[i, x] / p[i, x]))
        else:
            a.append(1.0 if q[i, x] > 0 else 0.0)
    out = np.zeros((k + 1, q.shape[1]))
    for j in range(k + 1):
        pj = np.prod(a[:j]) * ((1 - a[j]) if j < k else 1.0)
        if j == k:
            dist = q[k]
        else:
            r = np.maximum(q[j] - p[j], 0)
            dist = r / r.sum() if r.sum() > 0 else q[j]
        out[j] = pj * dist
    return out


MC_CASES = {
    "random": ([1, 2, 0], np.random.RandomState(0).dirichlet(np.ones(V), 3),
               np.random.RandomState(1).dirichlet(np.ones(V), 4)),
    "zeros_both_ways": ([1, 2], [[0.0, 0.6, 0.4, 0.0], [0.3, 0.0, 0.7, 0.0]],
                        [[0.2, 0.3, 0.0, 0.5], [0.0, 0.1, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25]]),
    "p_equals_q": ([3, 0], [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]],
                   [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]]),
    "impossible_draft": ([3], [[0.5, 0.5, 0.0, 0.0]], [[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]]),
}


@pytest.mark.parametrize("case", sorted(MC_CASES))
def test_accept_monte_carlo_matches_rule(case):
    x, p, q = MC_CASES[case]
    x = np.asarray(x, np.int32)
    p, q = np.asarray(p, np.float32), np.asarray(q, np.float32)
    k = len(x)
    N = 200_000
    keys = jax.random.split(jax.random.PRNGKey(1234), N)
    bx = jnp.broadcast_to(jnp.asarray(x), (N, k))
    j, t = jax.jit(SP.accept_batch)(bx, jnp.broadcast_to(jnp.asarray(p), (N,) + p.shape),
                                    jnp.broadcast_to(jnp.asarray(q), (N,) + q.shape), keys)
    counts = np.zeros((k + 1, V))
    np.add.at(counts, (np.asarray(j), np.asarray(t)), 1)
    want = spec_joint(x, p, q)
    stat = bernstein_statistic(counts, want)
    assert stat <= 1.0, f"{case}: accept's (num_accepted, next) law is off: statistic {stat:.2f} > 1"
    assert np.all(counts[want == 0] == 0), f"{case}: an impossible outcome occurred"
