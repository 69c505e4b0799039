"""EAGLE-style speculative generation (infer/generation/eagle.py): the draft reads the target's features.

- Greedy output equals plain greedy output (mixed prompt lengths, several k), whatever the draft.
- The acceptance histogram of the cached device loop equals an independent uncached replay of the
  same rounds (target features from `forward_hidden` over the final text, the draft run uncached on
  (feature, next token) pairs with its own guessed features fed back), so the loop's caches, rollbacks
  and true-feature re-reads are right; a small vocabulary makes chance agreements frequent.
- At temperature 1 the first generated tokens are exact samples of the target (the exact joint by
  enumeration, as for the other proposers).
"""
import dataclasses
import os

import jax
import numpy as np
import pytest
from conftest import make_cfg

import infer
from infer.config import SamplingParams
from infer.config.paths import REPO_ROOT
from infer.generation.batch import generate
from infer.generation.eagle import eagle_speculative_generate
from infer.model.forward import forward_hidden
from test_speculative_generate import NT, PROMPT, V, distribution_statistic, exact_target_joint


@pytest.fixture(scope="module")
def pair():
    cfg = make_cfg(vocab_size=11, n_layers=2)
    dcfg = cfg.replace(n_layers=1, feature_input=True, name="eagle")
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    dparams = infer.init_params(dcfg, jax.random.PRNGKey(1))
    dparams["embed"] = params["embed"]  # the draft shares the target's table and head
    return cfg, params, dcfg, dparams


def replay_greedy_rounds(cfg, params, dcfg, dparams, prompt, max_new, k):
    """accept_hist of greedy EAGLE rounds, computed without any cache from the target's greedy text."""
    greedy = generate(params, cfg, [prompt], SamplingParams(temperature=0.0, max_new_tokens=max_new + k + 1))
    seq = list(prompt) + greedy.tokens[0]
    _, F = forward_hidden(params, cfg, np.asarray([seq]))  # the target's features at every position
    F = np.asarray(F[0])
    hist = np.zeros(k + 1, np.int64)
    L = len(seq) + k
    tlen, n = len(prompt), 1  # `last` = seq[tlen] (the first token); the target cache holds seq[:tlen]
    while n < max_new:
        feats, toks = list(F[:tlen]), seq[1:tlen + 1]  # pairs (f_t, x_t+1), t < tlen: true features
        drafts = []
        for _ in range(k):  # each step feeds the draft's own guessed feature and token
            m = len(toks)  # causal: zero padding to one length (one compile) changes nothing before m
            x = np.zeros((1, L), np.int32)
            x[0, :m] = toks
            f = np.zeros((1, L, F.shape[1]), np.float32)
            f[0, :m] = feats
            logits, H = forward_hidden(dparams, dcfg, x, f)
            drafts.append(int(np.argmax(np.asarray(logits[0, m - 1]))))
            feats.append(np.asarray(H[0, m - 1]))
            toks = toks + [drafts[-1]]
        j = 0
        while j < k and drafts[j] == seq[tlen + 1 + j]:
            j += 1
        hist[j] += 1
        tlen, n = tlen + j + 1, n + j + 1
    return hist


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_eagle_equals_greedy_plain_mixed_batch(pair, k):
    cfg, params, dcfg, dparams = pair
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 1], [2]]
    sp = SamplingParams(temperature=0.0, max_new_tokens=20)
    spec = eagle_speculative_generate(params, cfg, dparams, dcfg, prompts, sp, k)
    assert spec.tokens == generate(params, cfg, prompts, sp).tokens
    assert spec.target_passes > 0


def test_acceptance_equals_an_uncached_replay_of_the_rounds(pair):
    cfg, params, dcfg, dparams = pair
    k, prompt = 3, [3, 1, 4, 1, 5]
    sp = SamplingParams(temperature=0.0, max_new_tokens=24)
    spec = eagle_speculative_generate(params, cfg, dparams, dcfg, [prompt], sp, k)
    want = replay_greedy_rounds(cfg, params, dcfg, dparams, prompt, sp.max_new_tokens, k)
    assert spec.accept_hist == want.tolist()
    assert sum(spec.accept_hist[1:]) > 0  # some drafts were accepted: the comparison is not all zeros


def test_errors_name_the_problem(pair):
    cfg, params, dcfg, dparams = pair
    sp = SamplingParams(temperature=0.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="feature_input"):
        eagle_speculative_generate(params, cfg, params, cfg, [[1]], sp, 2)
    wide = dcfg.replace(d_model=64)
    with pytest.raises(ValueError, match="d_model"):
        eagle_speculative_generate(params, cfg, infer.init_params(wide, jax.random.PRNGKey(0)), wide, [[1]], sp, 2)
    with pytest.raises(ValueError, match="features_BTD"):
        forward_hidden(dparams, dcfg, np.asarray([[1, 2]]))


N, K = 4096, 2
SP1 = SamplingParams(temperature=1.0, max_new_tokens=NT, seed=5)


def test_first_tokens_are_exact_samples_of_the_target():
    cfg = infer.load_config("tiny", vocab_size=V, max_seq_len=64, dtype="float32")
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    dcfg = cfg.replace(n_layers=1, feature_input=True)
    dparams = infer.init_params(dcfg, jax.random.PRNGKey(2))
    dparams["embed"] = params["embed"]
    per_request = [dataclasses.replace(SP1, seed=SP1.seed * N + i) for i in range(N)]
    res = eagle_speculative_generate(params, cfg, dparams, dcfg, [PROMPT] * N, per_request, K)
    assert all(len(t) == NT for t in res.tokens)
    assert res.accept_hist[0] > 0 and res.accept_hist[K] > 0, res.accept_hist
    stat = distribution_statistic(res.tokens, exact_target_joint(cfg, params, SP1))
    assert stat <= 1.0, f"EAGLE speculative samples deviate from the target: Bernstein statistic {stat:.2f} > 1"


def test_eagle_training_pieces_on_a_tiny_target(tmp_path):
    """init_draft copies the named target block and starts fuse at the mean of feature and embedding; eagle_loss
    is the weighted mix of feature regression and top-k KL and falls when trained; the recipe names bad fields."""
    import optax

    from infer.config.model_config import ConfigError
    from infer.train.eagle_draft import EagleConfig, eagle_loss, init_draft, load_recipe, target_features
    cfg = make_cfg(vocab_size=31, n_layers=3, tie_embeddings=True)
    params = infer.init_params(cfg, jax.random.PRNGKey(5))
    dparams, dcfg = init_draft(params, cfg, init_layer=-1)
    with pytest.raises(ValueError, match="eagle.init_layer: 3 is not a block"):
        init_draft(params, cfg, init_layer=3)
    assert dcfg.feature_input and dcfg.n_layers == 1
    np.testing.assert_array_equal(dparams["layers"]["mlp"]["up"]["kernel"][0], params["layers"]["mlp"]["up"]["kernel"][2])
    assert jax.tree_util.tree_structure(dparams) == jax.tree_util.tree_structure(infer.init_params(dcfg, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (4, 17)).astype(np.int32)
    logits = np.asarray(infer.forward(params, cfg, tokens[:, :-1]))
    top_ids = np.argsort(-logits, -1)[..., :8].astype(np.int32)
    batch = {"tokens_BT1": tokens, "weights_BT": np.ones((4, 16), np.float32), "top_ids_BTK": top_ids,
             "top_logits_BTK": np.take_along_axis(logits, top_ids, -1),
             "feats_BTD": target_features(params, cfg, tokens)}
    frozen = {"embed": dparams.pop("embed")}
    ec = EagleConfig(reg_weight=1.0, kl_weight=1.0)
    only_reg = float(eagle_loss(dparams, dcfg, frozen, batch, EagleConfig(reg_weight=1.0, kl_weight=0.0)))
    only_kl = float(eagle_loss(dparams, dcfg, frozen, batch, EagleConfig(reg_weight=0.0, kl_weight=1.0)))
    first = float(eagle_loss(dparams, dcfg, frozen, batch, ec))
    assert np.isclose(first, only_reg + only_kl, rtol=1e-5) and only_reg > 0 and only_kl > 0
    tx = optax.adam(3e-3)
    state, p = tx.init(dparams), dparams
    step = jax.jit(jax.value_and_grad(lambda p: eagle_loss(p, dcfg, frozen, batch, ec)))
    for _ in range(30):
        _, g = step(p)
        upd, state = tx.update(g, state, p)
        p = optax.apply_updates(p, upd)
    assert float(step(p)[0]) < 0.7 * first
    bad = tmp_path / "bad.yaml"
    recipe = os.path.join(REPO_ROOT, "configs", "train", "smollm2_eagle.yaml")
    bad.write_text(open(recipe).read().replace("reg_weight", "reg_wait"))
    with pytest.raises(ConfigError, match="eagle.reg_wait"):
        load_recipe(str(bad))
