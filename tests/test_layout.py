"""The unrolled parameter layout (ModelConfig.scan_layers=False) runs the same model as the stacked one.

The reference is the stacked layout under nn.scan, the path every other test checks against transformers;
the unrolled one must give the same logits (uncached) and the same greedy tokens (paged step), for plain and
CLA (kv_share_every = 2) models, the same logits for int8 weights, and convert back to the identical stacked tree.
Fused projections (q|k|v and gate|up as one matrix each, what the decode layouts run) are checked the same way
against the unfused model, with biases, q/k norms, CLA and quantized formats.
"""
import jax
import numpy as np
import pytest
from conftest import make_cfg

import infer
from infer.config import SamplingParams
from infer.model.layout import (for_decode, for_engine, fuse_projections, stack_layers, unfuse_projections,
                                unstack_layers)
from pallas_kernels.platform import target_platform

CASES = {
    "plain": dict(),
    "cla": dict(kv_share_every=2),
    "int8": dict(quant="int8"),
}
FUSED_CASES = {**CASES, "bias_qk_norm": dict(qkv_bias=True, qk_norm=True), "int4": dict(quant="int4-g32")}


def _model(case):
    opts = dict(FUSED_CASES[case])
    quant = opts.pop("quant", None)
    cfg = make_cfg(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128, vocab_size=97, n_layers=4, **opts)
    params = infer.init_params(cfg, jax.random.PRNGKey(5))
    if quant:
        params, cfg = infer.quantize(params, cfg, quant)
    return cfg, params


@pytest.mark.parametrize("case", sorted(CASES))
def test_unrolled_layout_is_the_same_model(case):
    cfg, params = _model(case)
    ucfg, uparams = unstack_layers(cfg, params)
    assert not ucfg.scan_layers and "layers" not in uparams
    assert sorted(k for k in uparams if k.startswith("layers_")) == [f"layers_{i}" for i in range(cfg.kv_layers)]
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 11))
    want = np.asarray(infer.forward(params, cfg, tokens))
    np.testing.assert_allclose(np.asarray(infer.forward(uparams, ucfg, tokens)), want, rtol=1e-5, atol=1e-5)
    if case != "int8":  # the paged step (int8 weights there: the same Linear as the uncached pass above)
        prompts = [[1, 2, 3, 4, 5], [7, 8]]
        sp = SamplingParams(temperature=0.0, max_new_tokens=7)
        assert infer.generate(uparams, ucfg, prompts, sp).tokens == infer.generate(params, cfg, prompts, sp).tokens
    scfg, sparams = stack_layers(ucfg, uparams)
    assert scfg == cfg
    assert jax.tree_util.tree_structure(sparams) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(sparams), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_params_in_the_unrolled_layout_has_the_unstacked_shapes():
    cfg, params = _model("plain")
    ucfg, uparams = unstack_layers(cfg, params)
    fresh = jax.eval_shape(lambda: infer.init_params(ucfg, jax.random.PRNGKey(0)))
    assert jax.tree_util.tree_map(np.shape, fresh) == jax.tree_util.tree_map(np.shape, uparams)


def test_conversions_refuse_the_wrong_tree_and_auto_picks_by_target():
    cfg, params = _model("plain")
    with pytest.raises(ValueError, match="no stacked 'layers' subtree"):
        unstack_layers(cfg, {"embed": params["embed"]})
    ucfg, uparams = unstack_layers(cfg, params)
    del uparams["layers_2"]
    with pytest.raises(ValueError, match=r"lacks \['layers_2'\]"):
        stack_layers(ucfg, uparams)
    assert unstack_layers(ucfg, uparams) == (ucfg, uparams)  # already unrolled: as is
    assert not for_decode(cfg, params, platform="cpu")[0].scan_layers
    assert not for_decode(cfg, params, platform="gpu")[0].scan_layers  # GPU: no per-layer weight-slice copies
    assert for_decode(cfg, params, platform="tpu")[0] == cfg.replace(fused_projections=True)  # stacked, fused
    assert not for_engine(cfg, params, platform="cuda")[0].scan_layers
    assert for_engine(cfg, params, platform="cpu") == (cfg, params)  # CPU: the engine keeps the caller's layout
    with target_platform("gpu"):  # the target platform decides when none is named
        assert not for_engine(cfg, params)[0].scan_layers
    with pytest.raises(ValueError, match="platform 'metal'"):
        for_decode(cfg, params, platform="metal")
    assert for_decode(*unstack_layers(cfg, params), layout="stacked", platform="cpu")[0] == cfg.replace(
        fused_projections=True)
    with pytest.raises(ValueError, match="layout 'scan': expected one of auto, stacked, unrolled"):
        for_decode(cfg, params, layout="scan")


def test_a_checkpoint_is_saved_stacked(tmp_path):
    cfg, params = _model("plain")
    infer.save_checkpoint(str(tmp_path / "ck"), *unstack_layers(cfg, params))
    lcfg, lparams = infer.load_model_dir(str(tmp_path / "ck"))
    assert lcfg == cfg and "layers" in lparams
    for a, b in zip(jax.tree_util.tree_leaves(lparams), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tensor_parallel_preparation_stacks_an_unrolled_tree():
    from jax.sharding import Mesh

    from infer.parallel.tensor_parallel import prepare_tensor_parallel
    cfg, params = _model("plain")
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    tcfg, tparams = prepare_tensor_parallel(*reversed(unstack_layers(cfg, params)), mesh)
    assert tcfg.scan_layers and "layers" in tparams and "layers_0" not in tparams


@pytest.mark.parametrize("case", sorted(FUSED_CASES))
def test_fused_projections_are_the_same_model(case):
    cfg, params = _model(case)
    fcfg, fparams = fuse_projections(*unstack_layers(cfg, params))
    assert fcfg.fused_projections and fuse_projections(fcfg, fparams) == (fcfg, fparams)
    first = fparams["layers_0"].get("first", fparams["layers_0"])  # CLA: the group's first block
    assert "qkv" in first["attn"] and not {"q", "k", "v"} & set(first["attn"])
    assert "gate_up" in first["mlp"] and not {"gate", "up"} & set(first["mlp"])
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, 9))
    np.testing.assert_allclose(np.asarray(infer.forward(fparams, fcfg, tokens)),
                               np.asarray(infer.forward(params, cfg, tokens)), rtol=2e-5, atol=2e-5)
    if case in ("plain", "cla"):  # the paged step, CLA followers keeping their lone q
        prompts = [[1, 2, 3, 4, 5], [7, 8]]
        sp = SamplingParams(temperature=0.0, max_new_tokens=6)
        assert infer.generate(fparams, fcfg, prompts, sp).tokens == infer.generate(params, cfg, prompts, sp).tokens
    bcfg, bparams = stack_layers(*unfuse_projections(fcfg, fparams))  # back to the identical tree
    assert bcfg == cfg and jax.tree_util.tree_structure(bparams) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(bparams), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tensor_parallel_preparation_unfuses_the_decode_layout():
    from jax.sharding import Mesh

    from infer.parallel.tensor_parallel import prepare_tensor_parallel
    cfg, params = _model("plain")
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    dcfg, dparams = for_decode(cfg, params, "unrolled")
    assert dcfg.fused_projections
    tcfg, tparams = prepare_tensor_parallel(dparams, dcfg, mesh)
    assert tcfg == cfg and set(tparams["layers"]["attn"]) >= {"q", "k", "v"}
