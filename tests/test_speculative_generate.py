"""speculative_generate end to end (infer/generation/speculative.py).

- Cache mechanics: per-row verify windows and rollback by moving lengths equal the uncached forward.
- Greedy speculative == greedy plain, token for token, for a mixed-length batch with stop tokens.
- Draft == target accepts every draft token.
- Distribution: the first generated tokens are exact samples of the (filtered) target, by a
  Bernstein test against probabilities computed with the uncached forward; the same test
  rejects a deliberately biased acceptance rule.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infer
from infer.sampling import filters as S_
import dataclasses
from infer.generation import speculative_accept as SP
from infer.generation.batch import generate
from infer.config import SamplingParams
from infer.generation.speculative import speculative_generate, truncated_draft
from test_speculative_accept import bernstein_statistic


def test_verify_windows_and_rollback_equal_forward_per_row(tiny):
    """prefill(L_b) + a k-token verify whose tail is junk + rollback to L_b + a_b + a real k-token
    verify == forward, at every position, with different L_b and a_b per row (stale entries past a
    row's length are overwritten before they are read)."""
    cfg, params = tiny
    k, Ttot = 4, 24
    L = np.array([3, 9, 14])  # per-row prefill lengths
    a = np.array([0, 2, 4])  # per-row accepted counts to roll back to
    B = len(L)
    rng = np.random.RandomState(3)
    real = rng.randint(0, cfg.vocab_size, (B, Ttot)).astype(np.int32)
    full = np.asarray(infer.forward(params, cfg, jnp.asarray(real)))  # [B, Ttot, V]
    cache = infer.init_cache(cfg, B, 32)
    prompt = np.where(np.arange(Ttot)[None, :] < L[:, None], real, 0)[:, :L.max()]
    _, cache = infer.prefill(params, cfg, prompt, L, cache)
    window = np.stack([real[b, L[b]:L[b] + k] for b in range(B)])
    junk = np.where(np.arange(k)[None, :] < a[:, None], window, (window + 1 + rng.randint(0, 50, window.shape))
                    % cfg.vocab_size)
    logits, cache = infer.extend(params, cfg, jnp.asarray(junk), jnp.full((B,), k), cache)
    np.testing.assert_array_equal(cache["lengths"], L + k)
    for b in range(B):
        np.testing.assert_allclose(logits[b, :a[b]], full[b, L[b]:L[b] + a[b]], atol=1e-5, rtol=0,
                                   err_msg=f"row {b}: verify window before the junk")
    cache = dict(cache, lengths=jnp.asarray(L + a, jnp.int32))  # the rollback: lengths only
    start = L + a
    window = np.stack([real[b, start[b]:start[b] + k] for b in range(B)])
    logits, cache = infer.extend(params, cfg, jnp.asarray(window), jnp.full((B,), k), cache)
    for b in range(B):
        np.testing.assert_allclose(logits[b], full[b, start[b]:start[b] + k], atol=1e-5, rtol=0,
                                   err_msg=f"row {b}: verify after rolling back to {start[b]}")
    np.testing.assert_array_equal(cache["lengths"], start + k)


def _noisy(params, scale, seed):
    """A draft that agrees with the target often but not always: the target's weights plus noise."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + scale * jnp.std(x) * jax.random.normal(kk, x.shape, x.dtype) for x, kk in zip(leaves, keys)])


MIXED_PROMPTS = [np.random.RandomState(0).randint(0, 256, n).tolist() for n in (1, 5, 17, 9, 30)]


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_speculative_equals_greedy_plain_mixed_batch(tiny, k):
    cfg, params = tiny
    draft = _noisy(params, 0.1, seed=1)
    # max_new 23 is not a multiple of k+1, so the last round is truncated; a stop token taken from
    # row 1's plain output (its 7th token) makes rows stop at different points.
    sp = SamplingParams(temperature=0.0, max_new_tokens=23)
    stop = generate(params, cfg, MIXED_PROMPTS, sp).tokens[1][6]
    sp = SamplingParams(temperature=0.0, max_new_tokens=23, stop_token_ids=(stop,))
    plain = generate(params, cfg, MIXED_PROMPTS, sp)
    spec = speculative_generate(params, cfg, draft, cfg, MIXED_PROMPTS, sp, k)
    for i, (p, s) in enumerate(zip(plain.tokens, spec.tokens)):
        assert s == p, f"row {i} (prompt length {len(MIXED_PROMPTS[i])}): speculative {s} != plain {p}"
    assert min(len(t) for t in plain.tokens) < 23 and max(len(t) for t in plain.tokens) == 23
    # Every acceptance count happened, so rollback (j < k) and the draft's lag (j == k) paths ran.
    hist = spec.accept_hist
    assert hist[0] > 0 and hist[k] > 0, f"accept_hist {hist}: not every path exercised"
    assert spec.verify_tokens == spec.num_generated - len(MIXED_PROMPTS)


def test_draft_equal_to_target_accepts_every_token(tiny):
    cfg, params = tiny
    k = 3
    sp = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=23, seed=5)
    spec = speculative_generate(params, cfg, params, cfg, MIXED_PROMPTS, sp, k)
    assert spec.accept_hist[:k] == [0] * k and spec.accept_hist[k] > 0, spec.accept_hist
    assert spec.acceptance_rate_by_position == [1.0] * k
    assert all(len(t) == 23 for t in spec.tokens)
    # 22 tokens after the first per row, k+1 = 4 per pass: 5 full passes and one of 2.
    assert spec.target_passes == 6 * len(MIXED_PROMPTS)
    assert spec.tokens_per_target_pass == pytest.approx(22 / 6)


def test_truncated_draft_is_the_target_prefix(tiny):
    cfg, params = tiny
    dparams, dcfg = truncated_draft(params, cfg, 1)
    assert dcfg.n_layers == 1 and dcfg.vocab_size == cfg.vocab_size
    assert dparams["layers"]["mlp"]["up"]["kernel"].shape[0] == 1
    np.testing.assert_array_equal(dparams["layers"]["mlp"]["up"]["kernel"][0], params["layers"]["mlp"]["up"]["kernel"][0])
    with pytest.raises(ValueError, match="n_layers"):
        truncated_draft(params, cfg, cfg.n_layers + 1)


def test_errors_name_the_problem(tiny):
    cfg, params = tiny
    other = cfg.replace(vocab_size=cfg.vocab_size + 1)
    with pytest.raises(ValueError, match=r"draft_cfg.vocab_size.*257.*256"):
        speculative_generate(params, cfg, params, other, [[1, 2]], SamplingParams(), 2)
    with pytest.raises(ValueError, match="k: number of draft tokens"):
        speculative_generate(params, cfg, params, cfg, [[1, 2]], SamplingParams(), 0)
    with pytest.raises(ValueError, match=r"prompts\[0\].*\+ k 4"):
        speculative_generate(params, cfg, params, cfg, [[1] * (cfg.max_seq_len - 10)],
                             SamplingParams(max_new_tokens=8), 4)


# --------------------------------------------------------------------------------------------
# Distribution of the first generated tokens (two different small random models, vocabulary 16).
# --------------------------------------------------------------------------------------------
V, NT, N, K = 16, 4, 8192, 2
PROMPT = [3, 1, 4, 1, 5]


@pytest.fixture(scope="module")
def pair():
    tcfg = infer.load_config("tiny", vocab_size=V, max_seq_len=64)
    dcfg = tcfg.replace(n_layers=1, d_model=32, d_ff=64, n_heads=4, n_kv_heads=2, name="tiny-draft")
    return tcfg, infer.init_params(tcfg, jax.random.PRNGKey(0)), dcfg, infer.init_params(dcfg, jax.random.PRNGKey(1))


def exact_target_joint(tcfg, tparams, sp):
    """P(t_1..t_NT) [V]*NT of plain sampling from the filtered target, from the uncached forward."""
    seqs = np.array(list(itertools.product(range(V), repeat=NT - 1)), np.int32)  # every (t_1..t_{NT-1})
    toks = np.concatenate([np.tile(PROMPT, (len(seqs), 1)), seqs], axis=1)
    logits = infer.forward(tparams, tcfg, jnp.asarray(toks))  # [V^(NT-1), P+NT-1, V]
    samp = sp.arrays(len(seqs))
    joint = np.ones((V,) * NT)
    for m in range(NT):  # q(t_{m+1} | prompt, t_1..t_m) from the row whose later tokens are 0
        q = np.asarray(S_.probs(logits[:, len(PROMPT) - 1 + m], samp), np.float64).reshape((V,) * NT)
        q = q[(slice(None),) * m + (0,) * (NT - 1 - m)]  # [V]*(m+1)
        joint = joint * q.reshape((V,) * (m + 1) + (1,) * (NT - 1 - m))
    return joint


# The cells tested together (one union bound over all of them): pairs of consecutive tokens and the
# single tokens that come from speculative rounds (t_1 comes from the prefill).
PAIRS, SINGLES = [(0, 1), (1, 2), (2, 3)], [1, 2, 3]


def distribution_statistic(tokens, joint):
    tokens = np.asarray(tokens)
    fams = []
    for a, b in PAIRS:
        c = np.zeros((V, V))
        np.add.at(c, (tokens[:, a], tokens[:, b]), 1)
        fams.append((c, joint.sum(axis=tuple(i for i in range(NT) if i not in (a, b)))))
    for a in SINGLES:
        c = np.zeros(V)
        np.add.at(c, tokens[:, a], 1)
        fams.append((c, joint.sum(axis=tuple(i for i in range(NT) if i != a))))
    m = sum(c.size for c, _ in fams)
    return max(bernstein_statistic(c, p, m=m) for c, p in fams)


def _sample_first_tokens(pair, sp, accept_rule=None):
    tcfg, tparams, dcfg, dparams = pair
    # N independent requests of the same prompt: each its own seed (a request's draws depend on its seed only).
    per_request = [dataclasses.replace(sp, seed=sp.seed * N + i) for i in range(N)]
    res = speculative_generate(tparams, tcfg, dparams, dcfg, [PROMPT] * N, per_request, K, accept_rule=accept_rule)
    assert all(len(t) == NT for t in res.tokens)
    return res


SETTINGS = {
    "temperature_1": SamplingParams(temperature=1.0, max_new_tokens=NT, seed=1),
    "filtered": SamplingParams(temperature=0.7, top_k=6, top_p=0.9, min_p=0.05, max_new_tokens=NT, seed=2),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_first_tokens_are_exact_samples_of_the_target(pair, setting):
    sp = SETTINGS[setting]
    res = _sample_first_tokens(pair, sp)
    # Not a trivial pass: the draft was rejected often and accepted fully sometimes.
    assert res.accept_hist[0] > 0 and res.accept_hist[K] > 0, res.accept_hist
    stat = distribution_statistic(res.tokens, exact_target_joint(pair[0], pair[1], sp))
    assert stat <= 1.0, f"{setting}: speculative samples deviate from the target: Bernstein statistic {stat:.2f} > 1"


def biased_accept(draft_tokens, draft_probs, target_probs, key):
    """A known-wrong rule: accept x_i iff it equals a fresh sample of q_i, else draw from the residual.

    (Emitting that fresh sample on rejection instead of the residual would be exact; mixing the two
    rules is the bug.) Same signature and randomness budget as infer.generation.speculative_accept.accept.
    """
    k = draft_tokens.shape[0]
    keys = jax.random.split(key, k + 1)
    y = jax.vmap(jax.random.categorical)(keys[:k], jnp.log(target_probs[:k]))
    rejected = draft_tokens != y
    j = jnp.where(jnp.any(rejected), jnp.argmax(rejected), k).astype(jnp.int32)
    nxt = jax.random.categorical(keys[k], jnp.log(SP.emit_distribution(draft_probs, target_probs, j)))
    return j, nxt.astype(jnp.int32)


def test_statistical_test_rejects_a_biased_rule(pair):
    sp = SETTINGS["temperature_1"]
    res = _sample_first_tokens(pair, sp, accept_rule=biased_accept)
    stat = distribution_statistic(res.tokens, exact_target_joint(pair[0], pair[1], sp))
    assert stat > 1.0, f"the test did not detect the biased rule (statistic {stat:.2f} <= 1)"


def test_cli_speculative_options(capsys):
    from infer.cli.main import main
    assert main(["generate", "--config", "tiny", "--checkpoint", "/nonexistent", "--draft-layers", "1"]) == 2
    assert "random weights only" in capsys.readouterr().err
    assert main(["generate", "--config", "tiny", "--draft-config", "small"]) == 2
    assert "draft_cfg.vocab_size" in capsys.readouterr().err
