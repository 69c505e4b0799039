"""Prompt-lookup (n-gram) speculative decoding (infer/generation/ngram.py).

- The vectorised matcher equals a brute-force Python implementation on random histories.
- Greedy n-gram speculative == greedy plain `generate`, token for token (mixed batch, stop token,
  max_new_tokens cutting a round).
- Proposals really come from the context: on a model whose greedy output cycles, a prompt that
  contains the cycle is accepted in full almost every round.
- Distribution: the first generated tokens at temperature 1 are exact samples of the target
  (Bernstein test of tests/test_speculative_generate.py); the same test rejects a biased rule.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infer
from infer.config import SamplingParams
from infer.generation import speculative_accept as SP
from infer.generation.batch import generate
from infer.generation.ngram import ngram_proposals, ngram_speculative_generate
from test_speculative_generate import NT, PROMPT, V, distribution_statistic, exact_target_joint


def brute_force_proposals(h, k, min_ngram, max_ngram):
    """The documented rule, written out with Python loops: (proposals, matched n)."""
    L = len(h)
    for n in range(max_ngram, min_ngram - 1, -1):
        for i in range(L - 2, n - 2, -1):
            if h[i - n + 1:i + 1] == h[L - n:]:
                return [h[i + 1 + j % (L - 1 - i)] for j in range(k)], n
    return [h[-1]] * k, 0


@pytest.mark.parametrize("vocab,min_ngram,max_ngram", [(3, 1, 3), (5, 2, 4), (40, 1, 3), (4, 1, 1)])
def test_matcher_equals_brute_force(vocab, min_ngram, max_ngram):
    rng = np.random.RandomState(vocab + 10 * min_ngram)
    B, S, k = 96, 24, 5
    ctx = rng.randint(0, vocab, (B, S)).astype(np.int32)
    lengths = rng.randint(1, S + 1, B).astype(np.int32)
    props, n = jax.jit(ngram_proposals, static_argnums=(2, 3, 4))(ctx, lengths, k, min_ngram, max_ngram)
    found = []
    for b in range(B):
        want, want_n = brute_force_proposals(ctx[b, :lengths[b]].tolist(), k, min_ngram, max_ngram)
        assert props[b].tolist() == want and int(n[b]) == want_n, \
            f"row {b}, history {ctx[b, :lengths[b]].tolist()}: got {props[b].tolist()} (n={int(n[b])}), " \
            f"want {want} (n={want_n})"
        found.append(want_n)
    if vocab <= 5:  # small vocabularies: every n length and the no-match case occur
        assert set(found) == {0} | set(range(min_ngram, max_ngram + 1)), sorted(set(found))


def test_matcher_examples():
    ctx = jnp.asarray([[1, 2, 3, 9, 1, 2, 3, 0, 0], [5, 6, 7, 8, 0, 0, 0, 0, 0], [4, 4, 4, 4, 4, 0, 0, 0, 0]])
    props, n = ngram_proposals(ctx, jnp.asarray([7, 4, 5]), 5)
    # [1 2 3] occurred ending at 2, followed by 9 1 2 3 (d = 4), then periodically; no match: repeat 8;
    # [4 4 4] last occurred ending at 3: period 1.
    assert props.tolist() == [[9, 1, 2, 3, 9], [8] * 5, [4] * 5] and n.tolist() == [3, 0, 3]


@pytest.fixture(scope="module")
def tiny32():
    cfg = infer.load_config("tiny", dtype="float32")
    return cfg, infer.init_params(cfg, jax.random.PRNGKey(0))


MIXED_PROMPTS = ([np.random.RandomState(0).randint(0, 256, n).tolist() for n in (1, 5, 17, 30)]
                 + [[11, 200, 37] * 6])


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_ngram_equals_greedy_plain_mixed_batch(tiny32, k):
    cfg, params = tiny32
    # max_new 23 is not a multiple of k+1, so a round is cut; a stop token taken from row 1's plain
    # output (its 7th token) makes rows stop at different points.
    sp = SamplingParams(temperature=0.0, max_new_tokens=23)
    stop = generate(params, cfg, MIXED_PROMPTS, sp).tokens[1][6]
    sp = SamplingParams(temperature=0.0, max_new_tokens=23, stop_token_ids=(stop,))
    plain = generate(params, cfg, MIXED_PROMPTS, sp)
    spec = ngram_speculative_generate(params, cfg, MIXED_PROMPTS, sp, k)
    for i, (p, s) in enumerate(zip(plain.tokens, spec.tokens)):
        assert s == p, f"row {i} (prompt length {len(MIXED_PROMPTS[i])}): n-gram speculative {s} != plain {p}"
    assert min(len(t) for t in plain.tokens) < 23 and max(len(t) for t in plain.tokens) == 23
    hist = spec.accept_hist  # rejections (rollback) and full acceptances both happened
    assert hist[0] > 0 and hist[k] > 0, f"accept_hist {hist}: not every path exercised"
    assert spec.verify_tokens == spec.num_generated - len(MIXED_PROMPTS)


def test_context_copy_is_accepted(tiny32):
    """A first-order model (every block's output projection zeroed: the next token is a function f of
    the current one) has a greedy output that enters a cycle of f. A prompt that already holds the
    cycle is continued by copying it: the proposals come from the prompt and are accepted in full."""
    cfg, params = tiny32
    layers = dict(params["layers"])
    layers["attn"] = dict(layers["attn"], o={"kernel": jnp.zeros_like(layers["attn"]["o"]["kernel"])})
    layers["mlp"] = dict(layers["mlp"], down={"kernel": jnp.zeros_like(layers["mlp"]["down"]["kernel"])})
    markov = dict(params, layers=layers)
    sp = SamplingParams(temperature=0.0, max_new_tokens=40)
    warm = generate(markov, cfg, [[5]], SamplingParams(temperature=0.0, max_new_tokens=64)).tokens[0]
    period = next((d for d in range(1, 17) if warm[-16:] == warm[-16 - d:len(warm) - d]), None)
    assert period is not None, f"the first-order model's greedy output does not cycle: {warm}"
    prompt = [5] + warm
    k = 4
    plain = generate(markov, cfg, [prompt], sp)
    spec = ngram_speculative_generate(markov, cfg, [prompt], sp, k)
    assert spec.tokens == plain.tokens
    assert spec.accept_hist[k] >= spec.target_passes - 1, (period, spec.accept_hist)
    assert spec.tokens_per_target_pass > 3 and spec.acceptance_rate_by_position[k - 1] > 0.9


# --------------------------------------------------------------------------------------------
# Distribution of the first generated tokens (small random model, vocabulary 16).
# --------------------------------------------------------------------------------------------
N, K = 16384, 2  # N: the biased rule below scores ~2.3 at this N (the bound is 1), the exact one ~0.4
SP1 = SamplingParams(temperature=1.0, max_new_tokens=NT, seed=3)


@pytest.fixture(scope="module")
def v16():
    cfg = infer.load_config("tiny", vocab_size=V, max_seq_len=64, dtype="float32")
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    return cfg, params, exact_target_joint(cfg, params, SP1)


def _sample_first_tokens(v16, accept_rule=None):
    cfg, params, _ = v16
    # N independent requests of the same prompt: each its own seed.
    per_request = [dataclasses.replace(SP1, seed=SP1.seed * N + i) for i in range(N)]
    res = ngram_speculative_generate(params, cfg, [PROMPT] * N, per_request, K, accept_rule=accept_rule)
    assert all(len(t) == NT for t in res.tokens)
    return res


def test_first_tokens_are_exact_samples_of_the_target(v16):
    res = _sample_first_tokens(v16)
    assert res.accept_hist[0] > 0 and res.accept_hist[K] > 0, res.accept_hist
    stat = distribution_statistic(res.tokens, v16[2])
    assert stat <= 1.0, f"n-gram speculative samples deviate from the target: Bernstein statistic {stat:.2f} > 1"


def resample_on_reject(draft_tokens, draft_probs, target_probs, key):
    """A known-wrong rule: on rejection draw from q_j itself instead of the residual max(q_j - p_j, 0)
    (with one-hot p this over-weights the proposed token: q(x) + (1 - q(x)) q(x))."""
    k = draft_tokens.shape[0]
    key_u, key_next = jax.random.split(key)
    a = SP.acceptance_probs(draft_tokens, draft_probs, target_probs)
    j = SP.num_accepted_from_uniforms(a, jax.random.uniform(key_u, (k,)))
    nxt = jax.random.categorical(key_next, jnp.log(jnp.take(target_probs, j, axis=0)))
    return j, nxt.astype(jnp.int32)


def test_statistical_test_rejects_a_biased_rule(v16):
    res = _sample_first_tokens(v16, resample_on_reject)
    stat = distribution_statistic(res.tokens, v16[2])
    assert stat > 1.0, f"the test did not detect the biased rule (statistic {stat:.2f} <= 1)"


def test_errors_name_the_problem(tiny32):
    cfg, params = tiny32
    with pytest.raises(ValueError, match="k: number of proposed tokens"):
        ngram_speculative_generate(params, cfg, [[1, 2]], SamplingParams(), 0)
    with pytest.raises(ValueError, match="min_ngram, max_ngram"):
        ngram_speculative_generate(params, cfg, [[1, 2]], SamplingParams(), 2, min_ngram=3, max_ngram=2)
    with pytest.raises(ValueError, match=r"prompts\[0\].*\+ k 4"):
        ngram_speculative_generate(params, cfg, [[1] * (cfg.max_seq_len - 10)], SamplingParams(max_new_tokens=8), 4)
