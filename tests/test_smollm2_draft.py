"""The SmolLM2 draft: pruning units on a tiny random model, the recipe's config, and the shipped draft
(loads, acceptance at k = 4 and T = 0 on held-out chat prompts as the card states, exact greedy output)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.config.model_config import ConfigError
from infer.io.checkpoint import CONFIG_FILE
from infer.model.forward import forward
from infer.model.params import init_params
from infer.train import prune as P
from conftest import make_cfg, smollm2_group

# Acceptance at k = 4, T = 0 over the 16 held-out chat prompts, as models/SMOLLM2_CARD.md states it
# (models/smollm2-draft/speculative_metrics.json). Below the 0.5 goal: see the card.
CARD_ACCEPTANCE = 0.059


@pytest.fixture(scope="module")
def model():
    cfg = make_cfg(n_heads=6, n_kv_heads=2, n_layers=3, d_ff=32, tie_embeddings=True)
    params = init_params(cfg, jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    tokens_BT = rng.integers(0, cfg.vocab_size, (3, 17)).astype(np.int32)
    return cfg, params, tokens_BT, np.ones((3, 16), np.float32)


def _all(cfg):
    L = cfg.n_layers
    return (np.arange(L), np.tile(np.arange(cfg.n_kv_heads), (L, 1)),
            np.tile(np.arange(cfg.q_per_kv), (L, cfg.n_kv_heads, 1)), np.tile(np.arange(cfg.d_ff), (L, 1)))


def test_pruning_nothing_reproduces_the_logits_exactly(model):
    cfg, params, tokens_BT, _ = model
    p2, c2 = P.prune(params, cfg, *_all(cfg))
    assert (c2.n_layers, c2.n_heads, c2.n_kv_heads, c2.d_ff) == (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff)
    np.testing.assert_array_equal(np.asarray(forward(p2, c2, tokens_BT)), np.asarray(forward(params, cfg, tokens_BT)))


def test_pruned_shapes_match_the_config(model):
    cfg, params, tokens_BT, weights_BT = model
    kv = np.array([[1], [0]])
    q = np.array([[[0, 2]], [[1, 2]]])
    ch = np.array([[0, 5, 7, 31]] * 2)
    p2, c2 = P.prune(params, cfg, [0, 2], kv, q, ch)
    assert (c2.n_layers, c2.n_heads, c2.n_kv_heads, c2.d_ff) == (2, 2, 1, 4)
    want = jax.eval_shape(lambda: init_params(c2, jax.random.PRNGKey(0)))
    assert jax.tree_util.tree_map(lambda x: x.shape, p2) == jax.tree_util.tree_map(lambda x: x.shape, want)
    # layer 1 of the draft is the original layer 2, KV head 0, query heads 0*3 + 1 and 0*3 + 2
    np.testing.assert_array_equal(p2["layers"]["attn"]["q"]["kernel"][1],
                                  np.asarray(params["layers"]["attn"]["q"]["kernel"][2])[:, [1, 2]])
    np.testing.assert_array_equal(p2["layers"]["mlp"]["down"]["kernel"][0],
                                  np.asarray(params["layers"]["mlp"]["down"]["kernel"][0])[[0, 5, 7, 31]])
    assert np.isfinite(np.asarray(forward(p2, c2, tokens_BT))).all()
    with pytest.raises(ValueError, match="keep_layers"):
        P.prune(params, cfg, [0, 0], kv, q, ch)
    with pytest.raises(ValueError, match=r"keep_q_LKG\[0, 0\]"):
        P.prune(params, cfg, [0, 2], kv, np.array([[[0, 3]], [[1, 2]]]), ch)
    with pytest.raises(ConfigError, match="n_heads"):
        cfg.replace(n_heads=5, n_kv_heads=2)  # what prune's output config must satisfy, checked by ModelConfig


def _zeroed(params, layer=None, head=None, channel=None, whole_layer=None):
    layers = jax.tree_util.tree_map(lambda x: x, params["layers"])
    o, down = np.array(layers["attn"]["o"]["kernel"]), np.array(layers["mlp"]["down"]["kernel"])
    if head is not None:
        o[layer, head] = 0
    if channel is not None:
        down[layer, channel] = 0
    if whole_layer is not None:
        o[whole_layer] = 0
        down[whole_layer] = 0
    layers["attn"]["o"]["kernel"], layers["mlp"]["down"]["kernel"] = jnp.asarray(o), jnp.asarray(down)
    return {**params, "layers": layers}


def test_importance_ranks_a_zeroed_unit_least(model):
    cfg, params, tokens_BT, weights_BT = model
    s = P.taylor_importance(_zeroed(params, layer=1, head=4, channel=9), cfg, tokens_BT, weights_BT)
    assert s["heads"].shape == (3, 6) and s["channels"].shape == (3, 32) and s["layers"].shape == (3,)
    assert int(np.argmin(s["heads"][1])) == 4 and s["heads"][1, 4] == 0
    assert int(np.argmin(s["channels"][1])) == 9 and s["channels"][1, 9] == 0
    kv, q, ch = P.select_units(s, cfg, n_kv_heads=2, q_per_kv=2, d_ff=31)
    assert q[1, 1].tolist() == [0, 2] and 9 not in ch[1]  # head 4 = KV head 1, query 1 within the group
    dead = _zeroed(params, whole_layer=1)
    skip = P.layer_skip_scores(dead, cfg, tokens_BT, weights_BT)
    assert int(np.argmin(np.abs(skip))) == 1 and abs(skip[1]) < 1e-6
    kept, history = P.select_layers(dead, cfg, tokens_BT, weights_BT, n_layers=2, rounds=1)
    assert kept.tolist() == [0, 2] and len(history) == 1


def test_prune_to_size_gives_a_valid_smaller_model(model):
    cfg, params, tokens_BT, weights_BT = model
    p2, c2, report = P.prune_to_size(params, cfg, tokens_BT, weights_BT, n_layers=2, n_kv_heads=1, q_per_kv=2,
                                     d_ff=8, layer_rounds=2)
    assert (c2.n_layers, c2.n_heads, c2.n_kv_heads, c2.d_ff) == (2, 2, 1, 8)
    assert len(report["kept_layers"]) == 2 and len(report["layer_skip_scores_by_round"]) == 1
    assert np.isfinite(np.asarray(forward(p2, c2, tokens_BT))).all()
    np.testing.assert_array_equal(p2["embed"]["embedding"], params["embed"]["embedding"])  # shareable


def test_recipe_config_validates_and_names_fields(tmp_path):
    from infer.train.smollm2_draft import HELD_OUT_QUESTIONS, PruneConfig, load_recipe, train_questions
    r = load_recipe("smollm2_draft")
    assert r.distill.teacher == r.target and r.train.export_dir == "models/smollm2-draft"
    assert not set(train_questions(r.data.chat_prompts)) & set(HELD_OUT_QUESTIONS)  # held out
    with pytest.raises(ConfigError, match="prune.d_ff"):
        PruneConfig(n_layers=2, n_kv_heads=1, q_per_kv=1, d_ff=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(os.path.join(os.path.dirname(__file__), "..", "configs", "train", "smollm2_draft.yaml")).read()
                   .replace("layer_rounds:", "layer_round:"))
    with pytest.raises(ConfigError, match="prune.layer_round"):
        load_recipe(str(bad))


@pytest.fixture(scope="module")
def shipped(smollm2):
    from infer.train.smollm2_draft import DRAFT_DIR, load_smollm2_draft
    tcfg, tparams, tok = smollm2  # float32, the load's default
    assert tcfg.dtype == "float32"
    dcfg, dparams = load_smollm2_draft(DRAFT_DIR, tparams)
    with open(os.path.join(DRAFT_DIR, "speculative_metrics.json")) as f:
        metrics = json.load(f)
    return tcfg, tparams, dcfg, dparams, tok, metrics


@smollm2_group
def test_shipped_draft_is_small_and_shares_the_embedding(shipped):
    from infer.train.smollm2_draft import DRAFT_DIR
    tcfg, tparams, dcfg, dparams, _, _ = shipped
    assert dcfg.vocab_size == tcfg.vocab_size and dcfg.tie_embeddings and dcfg.n_layers < tcfg.n_layers
    assert dparams["embed"]["embedding"] is tparams["embed"]["embedding"] or np.array_equal(
        dparams["embed"]["embedding"], tparams["embed"]["embedding"])
    with open(os.path.join(DRAFT_DIR, CONFIG_FILE)) as f:
        assert json.load(f)["model_config"]["dtype"] == "bfloat16"
    stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(DRAFT_DIR) for f in fs)
    assert stored < 40e6  # the embedding table alone would be 57 MB in bfloat16


@smollm2_group
def test_shipped_draft_acceptance_and_exact_greedy_output(shipped):
    from infer.config import SamplingParams
    from infer.generation.batch import generate
    from infer.generation.speculative import speculative_generate
    from infer.train.measure_smollm2_speculative import TEST_MAX_NEW, TEST_PROMPTS, acceptance, held_out_prompts
    from infer.train.smollm2_draft import DRAFT_DIR, stop_ids
    tcfg, tparams, dcfg, dparams, tok, metrics = shipped
    prompts = held_out_prompts(tok, TEST_PROMPTS)
    sp = SamplingParams(temperature=0.0, max_new_tokens=TEST_MAX_NEW, stop_token_ids=stop_ids(tok))
    spec = speculative_generate(tparams, tcfg, dparams, dcfg, prompts, sp, k=4)
    assert spec.tokens == generate(tparams, tcfg, prompts, sp).tokens  # speculative decoding is exact
    card = metrics["drafts"][os.path.relpath(DRAFT_DIR, os.path.join(os.path.dirname(__file__), ".."))]
    got = acceptance(spec.accept_hist, 4)
    assert abs(got - card["test_subset"]["acceptance"]) < 0.05
    assert abs(card["acceptance"] - CARD_ACCEPTANCE) < 0.005  # the number models/SMOLLM2_CARD.md states
    assert got > 0.02  # distillation did something: the pruned-only draft accepts ~0% (card)


@smollm2_group
def test_self_questions_are_finished_new_and_reproducible(shipped):
    """The target writes user questions: each one ended at its end-of-turn token, none repeats or is excluded,
    and the same seed gives the same questions."""
    from infer.train.self_questions import STARTERS, sample_questions, user_turn_prefix
    tcfg, tparams, _, _, tok, _ = shipped
    prefix = user_turn_prefix(tok)
    assert prefix.endswith("user\n") and tok.chat_template.render([{"role": "user", "content": "x"}]).startswith(prefix)
    first = sample_questions(tparams, tcfg, tok, 4, seed=3, batch=8, max_tokens=40, max_rounds=2)
    assert 1 <= len(first) <= 4 and all(len(q.split()) >= 3 for q in first)
    assert all(q.startswith(STARTERS) for q in first) and len({q.lower() for q in first}) == len(first)
    again = sample_questions(tparams, tcfg, tok, 4, seed=3, batch=8, max_tokens=40, max_rounds=2, exclude=first[:1])
    assert first[0] not in again and again[:len(first) - 1] == first[1:]  # same draws, the excluded one dropped


def test_distillation_data_cache_is_rebuilt_for_other_recipe_fields(tmp_path, monkeypatch):
    import dataclasses
    from infer.train import smollm2_draft as SD
    built = []

    def fake_rows(tparams, tcfg, tok, recipe):
        built.append(recipe.data.self_questions)
        return np.full((2, recipe.train.seq_len + 1), len(built), np.int32), np.ones((2, recipe.train.seq_len), np.float32)

    monkeypatch.setattr(SD, "build_rows", fake_rows)
    monkeypatch.setattr(SD, "teacher_topk", lambda tp, tc, tokens, k: (np.zeros(tokens.shape[:1] + (tokens.shape[1] - 1, k),
                                                                                np.float32),) * 2)
    r = SD.load_recipe("smollm2_draft")
    path = str(tmp_path / "data.npz")
    a = SD.build_data(None, None, None, r, path)
    assert SD.build_data(None, None, None, r, path)["tokens_BT1"][0, 0] == a["tokens_BT1"][0, 0] and built == [0]
    r2 = dataclasses.replace(r, data=dataclasses.replace(r.data, self_questions=8))
    assert SD.build_data(None, None, None, r2, path)["tokens_BT1"][0, 0] == 2 and built == [0, 8]
    assert "recipe_key" not in SD.build_data(None, None, None, r2, path) and built == [0, 8]
