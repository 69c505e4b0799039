"""A quantized model is the float model of its dequantized weights: the only difference is the quantization."""
import jax
import numpy as np
import pytest
from conftest import make_cfg

import infer
from infer.config import SamplingParams
from pallas_kernels.matmul.formats import FORMATS
from conftest import smollm2_group


@pytest.fixture(scope="module")
def model():
    cfg = make_cfg(d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=256, vocab_size=97)  # groups up to 128
    return cfg, infer.init_params(cfg, jax.random.PRNGKey(3))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_quantized_logits_equal_the_float_model_of_the_dequantized_weights(model, fmt):
    cfg, params = model
    qparams, qcfg = infer.quantize(params, cfg, fmt)
    assert qcfg.weight_format == fmt
    q = qparams["layers"]["attn"]["o"]
    assert set(q) == ({"q", "scale", "min"} if FORMATS[fmt].has_min else {"q", "scale"})
    assert q["q"].shape[0] == cfg.n_layers  # still stacked over layers
    twin = infer.dequantize_params(qparams, qcfg)  # a float model holding exactly the stored values
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 12))
    got = np.asarray(infer.forward(qparams, qcfg, tokens))
    want = np.asarray(infer.forward(twin, cfg, tokens))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ref = np.asarray(infer.forward(params, cfg, tokens))
    assert np.abs(got - ref).max() > 1e-4  # the quantization did change something ...
    # ... and the cached ragged step runs the stored format too
    if fmt not in ("int8", "q4_1"):
        return
    sp = SamplingParams(temperature=0.0, max_new_tokens=6)
    assert infer.generate(qparams, qcfg, [[1, 2, 3]], sp).tokens == infer.generate(twin, cfg, [[1, 2, 3]], sp).tokens


def test_a_ragged_last_group_pads_the_stored_rows_and_changes_nothing_else(fmt="int4-g128"):
    """SmolLM2's D = 576 is 4.5 groups of 128: the stored rows are padded to whole groups, the matmul pads x
    with zeros, and the model is still exactly the float model of its dequantized weights (other formats' ragged
    storage: tests/test_quant_formats.py)."""
    cfg = make_cfg(d_model=96, n_heads=3, n_kv_heads=1, head_dim=32, d_ff=160, vocab_size=97)
    params = infer.init_params(cfg, jax.random.PRNGKey(4))
    qparams, qcfg = infer.quantize(params, cfg, fmt)
    g = FORMATS[fmt].group
    up, down = qparams["layers"]["mlp"]["up"], qparams["layers"]["mlp"]["down"]
    assert up["q"].shape[1] * 2 == -(-96 // g) * g and down["q"].shape[1] * 2 == -(-160 // g) * g
    twin = infer.dequantize_params(qparams, qcfg)
    assert twin["layers"]["mlp"]["down"]["kernel"].shape == params["layers"]["mlp"]["down"]["kernel"].shape
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, 12))
    got = np.asarray(infer.forward(qparams, qcfg, tokens))
    np.testing.assert_allclose(got, np.asarray(infer.forward(twin, cfg, tokens)), rtol=1e-5, atol=1e-5)
    assert np.abs(got - np.asarray(infer.forward(params, cfg, tokens))).max() > 1e-4
    sp = SamplingParams(temperature=0.0, max_new_tokens=6)
    assert infer.generate(qparams, qcfg, [[1, 2, 3]], sp).tokens == infer.generate(twin, cfg, [[1, 2, 3]], sp).tokens


def test_quantize_refuses_what_does_not_fit(model):
    cfg, params = model
    with pytest.raises(ValueError, match="weight format 'int3'"):
        infer.quantize(params, cfg, "int3")
    qparams, qcfg = infer.quantize(params, cfg, "int8")
    with pytest.raises(ValueError, match="already stored as 'int8'"):
        infer.quantize(qparams, qcfg, "int8")
    with pytest.raises(infer.ConfigError, match="weight_format"):
        cfg.replace(weight_format="fp4")


@smollm2_group
def test_smollm2_runs_its_own_q4_1_blocks_holding_the_same_weights_in_a_sixth_of_the_bytes(smollm2):
    """The GGUF's Q4_1 projections kept as stored: the same weights as the dequantized load, to the bit."""
    cfg_n, native = infer.load_model_dir("smollm2-135m-instruct", weight_format="native")
    cfg_f, plain, _ = smollm2
    assert cfg_n.weight_format == "q4_1" and cfg_f.weight_format is None
    q = native["layers"]["mlp"]["down"]
    assert q["q"].dtype == np.uint8 and q["q"].shape == (cfg_n.n_layers, cfg_n.d_ff // 2, cfg_n.d_model)
    twin = infer.dequantize_params(native, cfg_n)
    for a, b in zip(jax.tree_util.tree_leaves(twin), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    proj = lambda t: sum(x.nbytes for k, x in jax.tree_util.tree_leaves_with_path(t["layers"])
                         if k[0].key in ("attn", "mlp") and "norm" not in k[1].key)
    assert proj(native) * 5.9 < proj(plain) < proj(native) * 6.5  # 4 bits + f16 scale and min per 32 vs 32 bits
    tokens = np.array([[1, 504, 3000, 42, 9, 77, 812]])
    # the same weights; the packed matmul sums in another order (two half-group dots): float32 rounding only
    np.testing.assert_allclose(np.asarray(infer.forward(native, cfg_n, tokens)),
                               np.asarray(infer.forward(plain, cfg_f, tokens)), rtol=1e-4, atol=5e-4)
    sp = SamplingParams(temperature=0.0, max_new_tokens=16)
    assert infer.generate(native, cfg_n, [tokens[0].tolist()], sp).tokens == \
        infer.generate(plain, cfg_f, [tokens[0].tolist()], sp).tokens
    with pytest.raises(ValueError, match="only GGUF files store quantized weights natively"):
        infer.load_model_dir(str(infer.config.paths.REPO_ROOT) + "/models/target", weight_format="native")


def test_orbax_round_trip_of_a_quantized_model_is_bit_exact(model, tmp_path):
    cfg, params = model
    qparams, qcfg = infer.quantize(params, cfg, "int4-g64")
    infer.save_checkpoint(str(tmp_path / "q"), qcfg, qparams)
    cfg2, params2 = infer.load_checkpoint(str(tmp_path / "q"))
    assert cfg2 == qcfg and cfg2.weight_format == "int4-g64"
    flat = lambda t: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(t)}
    a, b = flat(qparams), flat(params2)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    cfg3, params3 = infer.load_model_dir(str(tmp_path / "q"))  # the user-facing loader keeps the format
    assert cfg3.weight_format == "int4-g64"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_packed_matmul_never_builds_the_whole_weight(fmt):
    """The XLA path reads the stored bytes: no [I, O] float array (an unpacked copy of the weight) in its HLO."""
    import jax.numpy as jnp
    from pallas_kernels.matmul.formats import dequantize, quantize
    from pallas_kernels.matmul.quant_xla import quant_matmul
    I, O = 256, 384
    w = np.random.default_rng(1).standard_normal((I, O)).astype(np.float32)
    qw = {k: jnp.asarray(v) for k, v in quantize(w, fmt).items()}
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, I)).astype(np.float32))
    y = quant_matmul(x, qw, fmt)
    want = np.asarray(x, np.float64) @ np.asarray(dequantize(qw, fmt), np.float64)  # outputs reach ~30: f32 sums
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-4)
    if FORMATS[fmt].bits == 4:
        hlo = jax.jit(lambda x, qw: quant_matmul(x, qw, fmt)).lower(x, qw).as_text()
        assert f"tensor<{I}x{O}xf32>" not in hlo and f"{I},{O}]" not in hlo  # only half-groups [I/2, O]
